"""What a comparison shows: the Markdown table of results.md and the learning curves (also the study's)."""

from __future__ import annotations

from pathlib import Path

from sage_toolkit.atomic import savefig_atomic
from sage_toolkit.stats import format_mean_std

# (key in a run's summary, column label, digits): the comparison's columns, mean ± std over seeds
METRICS = [
    ("bleu_tok", "tok. BLEU", 2),
    ("sacrebleu", "sacreBLEU", 2),
    ("chrf", "chrF", 2),
    ("bp", "BP", 3),
    ("best_valid_loss", "best valid loss", 3),
    ("train_wall_s", "train time (s)", 0),
    ("words_per_s", "words/s", 0),
]


def _learning_rates(runs: list[dict]) -> str:
    rates = sorted({r["lr"] for r in runs if r.get("lr") is not None})
    return ", ".join(f"{lr:g}" for lr in rates) or "n/a"


def comparison_markdown(
    configs: list[str], runs: list[dict], data: Path, beam: int, lenpen: float, note: str = ""
) -> str:
    """results.md: one row per config (its learning rate, mean ± std over its seeds of every METRICS column), the
    ``note`` (what the reader must know to read the table, e.g. how the learning rates were chosen), the sacreBLEU
    signatures, then one row per run."""
    configs = list(dict.fromkeys(configs))  # a config named twice is one row (as in the results table)
    head = "| config | seeds | lr | " + " | ".join(label for _, label, _ in METRICS) + " |"
    lines = [f"# {' vs '.join(configs)} on {data}", "", head, "|" + "---|" * (len(METRICS) + 3)]
    for config in configs:
        mine = [r for r in runs if r["config"] == config]
        cells = [format_mean_std([r[key] for r in mine], digits) for key, _, digits in METRICS]
        lines.append(f"| {config} | {len(mine)} | {_learning_rates(mine)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean ± standard deviation over seeds (no ± with one seed). Test set, beam "
        f"{beam}, length penalty {lenpen}; BP is sacreBLEU's brevity penalty; lr: the peak learning rate.",
        "",
    ]
    if note:
        lines += [note, ""]
    signatures = sorted({r["sacrebleu_signature"] for r in runs if r.get("sacrebleu_signature")})
    lines += [f"sacreBLEU signature: `{s}`" for s in signatures]
    lines += [
        "",
        "| config | seed | tok. BLEU | sacreBLEU | BP | best valid loss | updates |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['config']} | {r['seed']} | {r['bleu_tok']:.2f} | {r['sacrebleu']:.2f} | "
            f"{(r['bp'] or float('nan')):.3f} | {(r['best_valid_loss'] or float('nan')):.3f} | {r['updates']} |"
        )
    return "\n".join(lines) + "\n"


def plot_learning_curves(path: Path, runs: list[dict], configs: list[str]) -> None:
    """Validation loss and validation BLEU against updates, one line per run, one colour per config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_bleu) = plt.subplots(1, 2, figsize=(11, 4))
    colors = dict(zip(configs, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for r in runs:
        curve = [c for c in r["curve"] if c["valid_loss"] is not None]
        bleu = [c for c in curve if isinstance(c.get("valid_bleu"), float)]
        for ax, points, key in ((ax_loss, curve, "valid_loss"), (ax_bleu, bleu, "valid_bleu")):
            ax.plot(
                [c["update"] for c in points],
                [c[key] for c in points],
                marker="o",
                color=colors[r["config"]],
                label=f"{r['config']} (seed {r['seed']})",
            )
    ax_loss.set(xlabel="update", ylabel="validation loss (label-smoothed, base 2)", title="validation loss")
    ax_bleu.set(xlabel="update", ylabel="validation BLEU (greedy, sacreBLEU)", title="validation BLEU")
    for ax in (ax_loss, ax_bleu):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=120)
    plt.close(fig)
