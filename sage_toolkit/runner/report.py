"""What a comparison shows: the Markdown table of results.md and the learning curves (also the study's)."""

from __future__ import annotations

from pathlib import Path

from sage_toolkit.atomic import savefig_atomic
from sage_toolkit.evaluation import result
from sage_toolkit.stats import format_mean_std

# (key in a run's summary, column label, digits) of the training's columns in results.md's summary and per-run rows
TRAINING_METRICS = [
    ("best_valid_loss", "best valid loss", 3),
    ("train_wall_s", "train time (s)", 0),
    ("words_per_s", "words/s", 0),
]
RUN_COLUMNS = TRAINING_METRICS[:1]


def metrics() -> list[tuple[str, str, int]]:
    """The comparison's columns, (key in a run's summary, label, digits): the test scores, then the training's."""
    return [*result.columns("comparison"), *TRAINING_METRICS]


def _learning_rates(runs: list[dict]) -> str:
    rates = sorted({r["lr"] for r in runs if r.get("lr") is not None})
    return ", ".join(f"{lr:g}" for lr in rates) or "n/a"


def comparison_markdown(
    configs: list[str], runs: list[dict], data: Path, beam: int, lenpen: float, note: str = ""
) -> str:
    """results.md: one row per config (its learning rate, mean ± std over its seeds of every :func:`metrics`
    column), the ``note`` (what the reader must know to read the table, e.g. how the learning rates were chosen), the
    sacreBLEU signatures, then one row per run."""
    configs = list(dict.fromkeys(configs))  # a config named twice is one row (as in the results table)
    columns = metrics()
    head = "| config | seeds | lr | " + " | ".join(label for _, label, _ in columns) + " |"
    lines = [f"# {' vs '.join(configs)} on {data}", "", head, "|" + "---|" * (len(columns) + 3)]
    for config in configs:
        mine = [r for r in runs if r["config"] == config]
        cells = [format_mean_std([r.get(key) for r in mine], digits) for key, _, digits in columns]
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
    columns = [*result.columns("comparison_runs"), *RUN_COLUMNS]
    lines += ["", "| config | seed | " + " | ".join(label for _, label, _ in columns) + " | updates |"]
    lines.append("|" + "---|" * (len(columns) + 3))
    for r in runs:
        cells = [format(float("nan") if r.get(key) is None else r[key], f".{digits}f") for key, _, digits in columns]
        lines.append(f"| {r['config']} | {r['seed']} | " + " | ".join(cells) + f" | {r['updates']} |")
    return "\n".join(lines) + "\n"


def curve_bands(runs: list[dict], configs: list[str], key: str) -> dict[str, dict]:
    """Per config with any value of ``key`` in its runs' curves: ``update`` (every update at which a seed measured
    it), the ``mean`` over the seeds that did, their ``low``/``high`` (min and max) and ``seeds`` (how many runs)."""
    bands = {}
    for config in dict.fromkeys(configs):
        mine = [r for r in runs if r["config"] == config]
        by_update: dict[int, list[float]] = {}
        for r in mine:
            for point in r["curve"]:
                value = point.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    by_update.setdefault(point["update"], []).append(float(value))
        if by_update:
            updates = sorted(by_update)
            values = [by_update[u] for u in updates]
            bands[config] = {
                "update": updates, "mean": [sum(v) / len(v) for v in values], "low": [min(v) for v in values],
                "high": [max(v) for v in values], "seeds": len(mine),
            }  # fmt: skip
    return bands


# the panels of learning_curves.png: (key in a curve point, axis label, title); a panel is drawn only where measured
CURVE_PANELS = [
    ("valid_loss", "validation loss (label-smoothed, base 2)", "validation loss"),
    ("valid_bleu", "validation BLEU (greedy, sacreBLEU)", "validation BLEU"),
]


def learning_curves_figure(runs: list[dict], configs: list[str]):
    """The figure of :func:`plot_learning_curves` (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, *labels, curve_bands(runs, configs, key)) for key, *labels in CURVE_PANELS]
    panels = [panel for panel in panels if panel[-1]] or panels[:1]  # nothing measured yet: an empty loss panel
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    colors = dict(zip(dict.fromkeys(configs), plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    several = any(band["seeds"] > 1 for *_, bands in panels for band in bands.values())
    for ax, (_, ylabel, title, bands) in zip(axes[0], panels, strict=True):
        for config, band in bands.items():
            seeds = f"{band['seeds']} seeds" if band["seeds"] > 1 else "1 seed"
            ax.plot(band["update"], band["mean"], marker="o", ms=3, color=colors[config], label=f"{config} ({seeds})")
            if band["seeds"] > 1:
                ax.fill_between(band["update"], band["low"], band["high"], color=colors[config], alpha=0.2, lw=0)
        ax.set(xlabel="update", ylabel=ylabel, title=title + (": mean over seeds, band min–max" if several else ""))
        ax.grid(alpha=0.3)
        if bands:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_learning_curves(path: Path, runs: list[dict], configs: list[str]) -> None:
    """Validation loss and validation BLEU against updates: one line per config, the mean over its seeds, with the
    seeds' min–max band; the BLEU panel only where BLEU was measured (not with ``--no-valid-bleu``)."""
    import matplotlib.pyplot as plt

    fig = learning_curves_figure(runs, configs)
    savefig_atomic(fig, path, dpi=120)
    plt.close(fig)
