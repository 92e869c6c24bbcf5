"""A study's plots, drawn from study.json's results: learning_curves.png, grid_curves.png, lenpen.png, and where
measured sage_multipliers.png and generalization.png (what they show: docs/toolkit.md)."""

from __future__ import annotations

from pathlib import Path

from sage_toolkit.atomic import savefig_atomic
from sage_toolkit.runner.report import plot_learning_curves
from sage_toolkit.study.generalization import converging_points
from sage_toolkit.study.report import generalization, layer_kinds
from sage_toolkit.study.spec import StudySpec


def plots(out: Path, spec: StudySpec, results: dict) -> None:
    """learning_curves.png (the final runs), grid_curves.png (the grid's validation loss), lenpen.png (the sweep),
    sage_multipliers.png (:func:`plot_multipliers`, when the final SAGE runs logged the statistics)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the final runs' validation curves, drawn as a comparison draws them: one colour per optimizer
    labels = {name: f"{name} {r['best_setting']}" for name, r in results.items()}
    finals = [{"config": labels[name], **s} for name, r in results.items() for s in r["seeds"]]
    plot_learning_curves(out / "learning_curves.png", finals, list(labels.values()))

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items(), strict=True):
        for setting, curve in r["grid_curves"].items():
            ax.plot([c["update"] for c in curve], [c["valid_loss"] for c in curve], marker=".", label=setting)
        ax.set(xlabel="update", ylabel="validation loss", title=f"{name} grid (seed {spec.tune_seed})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    savefig_atomic(fig, out / "grid_curves.png", dpi=110)
    plt.close(fig)

    colors = dict(zip(results, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, r in results.items():
        lps = [float(k) for k in r["valid_sacrebleu_by_lenpen"]]
        for s in r["seeds"]:
            ax.plot(lps, [s["valid"][f"{lp:g}"]["sacrebleu"] for lp in lps], color=colors[name], alpha=0.4)
        ax.plot(lps, list(r["valid_sacrebleu_by_lenpen"].values()), color=colors[name], lw=2.5, label=f"{name} mean")
    ax.set(xlabel="length penalty", ylabel=f"validation sacreBLEU (beam {spec.beam})", title="length penalty")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    savefig_atomic(fig, out / "lenpen.png", dpi=110)
    plt.close(fig)
    plot_multipliers(out / "sage_multipliers.png", results)
    plot_generalization(out / "generalization.png", results)


def plot_generalization(path: Path, results: dict) -> bool:
    """generalization.png: validation loss against training loss, every seed run of every optimizer (over the last
    half of its updates, :mod:`sage_toolkit.study.generalization`'s range). False (and no file) when no curve has
    training losses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not generalization(results):
        return False
    fig, ax = plt.subplots(figsize=(7, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, r) in enumerate(results.items()):
        for j, s in enumerate(r["seeds"]):
            points = sorted(converging_points(s.get("curve") or []), key=lambda p: p[2])
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], "o-", ms=3, alpha=0.8,
                        color=colors[i % len(colors)], **({"label": name} if j == 0 else {}))  # fmt: skip
    ax.set(xlabel="training loss (mean since the previous validation)", ylabel="validation loss",
           title="validation against training loss, last half of training")  # fmt: skip
    ax.invert_xaxis()  # training proceeds to the right
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=110)
    plt.close(fig)
    return True


def plot_multipliers(path: Path, results: dict) -> bool:
    """sage_multipliers.png: per optimizer whose final runs logged the SAGE statistics, the applied multiplier's mean
    (top) and r's median with its 10-90 % band (bottom) per layer type over training, one line per seed. False (and
    no file) when no run logged them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logged = {name: [s["sage_stats"] for s in r["seeds"] if s.get("sage_stats")] for name, r in results.items()}
    logged = {name: runs for name, runs in logged.items() if runs}
    if not logged:
        return False
    fig, axes = plt.subplots(2, len(logged), figsize=(6 * len(logged), 7), squeeze=False, sharex="col")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for column, (name, runs) in enumerate(logged.items()):
        top, bottom = axes[0][column], axes[1][column]
        for i, (label, prefix) in enumerate(layer_kinds(runs[0])):
            for j, stats in enumerate(runs):
                update, shown = stats["update"], {"label": label} if j == 0 else {}
                top.plot(update, stats[prefix + "mult_mean"], color=colors[i % len(colors)], alpha=0.8, **shown)
                bottom.plot(update, stats[prefix + "r_q50"], color=colors[i % len(colors)], alpha=0.8, **shown)
                bottom.fill_between(update, stats[prefix + "r_q10"], stats[prefix + "r_q90"],
                                    color=colors[i % len(colors)], alpha=0.08)  # fmt: skip
        top.set(ylabel="applied multiplier, mean", title=f"{name}: SAGE multiplier by layer type")
        bottom.set(xlabel="update", ylabel="r: median, 10-90 % band")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=110)
    plt.close(fig)
    return True
