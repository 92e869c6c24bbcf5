"""The analysis' two figures: ``pruning_curves.png`` (loss, loss increase and BLEU against sparsity: one colour per
model group, one line style per method) and ``sensitivity_by_layer_type.png`` (histograms of log10 sensitivity per
layer type: embeddings, attention, feed-forward; one colour per model group)."""

from __future__ import annotations

from pathlib import Path

from sage_toolkit.atomic import savefig_atomic
from sage_toolkit.redundancy.pruning import LAYER_TYPES
from sage_toolkit.redundancy.summary import group_of

LINESTYLES = {"sensitivity": "-", "magnitude": "--"}
DPI = 120


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _group_colors(plt, names) -> dict[str, str]:
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = list(dict.fromkeys(group_of(name) for name in names))
    return {g: colors[i % len(colors)] for i, g in enumerate(groups)}


def plot_curves(models: dict, path: Path, bleu: bool) -> None:
    plt = _pyplot()
    panels = [("loss", "validation loss (base 2)"), ("loss_increase", "loss increase over unpruned")]
    if bleu:
        panels.append(("bleu", "BLEU (sacreBLEU)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    color = _group_colors(plt, models)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        labelled = set()
        for name, rec in models.items():
            group = group_of(name)
            for method, rows in rec["results"].items():
                xs = [100 * r["sparsity"] for r in rows]
                ys = [r.get(key) for r in rows]
                shown = group if group != name else name  # a group's models share one legend entry per method
                ax.plot(xs, ys, LINESTYLES.get(method, ":"), marker="o", ms=3, color=color[group], alpha=0.8,
                        label=None if (shown, method) in labelled else f"{shown}, {method}")  # fmt: skip
                labelled.add((shown, method))
        ax.set_xlabel("sparsity (% of entries in scope zeroed)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Pruning the lowest-ranked weights (global ranking): sensitivity |theta*grad| vs magnitude |theta|")
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=DPI)
    plt.close(fig)


def plot_curves_by_layer_type(models: dict, path: Path, bleu: bool) -> None:
    """The loss increase (and BLEU drop) against sparsity when one layer type alone is pruned: a column per type."""
    plt = _pyplot()
    kinds = [k for k in LAYER_TYPES if any(k in rec.get("results_by_layer_type", {}) for rec in models.values())]
    panels = [("loss_increase", "loss increase over unpruned")] + ([("bleu_drop", "BLEU drop")] if bleu else [])
    fig, axes = plt.subplots(
        len(panels), max(1, len(kinds)), figsize=(4.5 * max(1, len(kinds)), 3.6 * len(panels)), squeeze=False
    )
    color = _group_colors(plt, models)
    for col, kind in enumerate(kinds):
        for row, (key, label) in enumerate(panels):
            ax, labelled = axes[row][col], set()
            for name, rec in models.items():
                group = group_of(name)
                for method, rows in rec["results_by_layer_type"].get(kind, {}).items():
                    shown = group if group != name else name
                    ax.plot([100 * r["sparsity"] for r in rows], [r.get(key) for r in rows],
                            LINESTYLES.get(method, ":"), marker="o", ms=3, color=color[group], alpha=0.8,
                            label=None if (shown, method) in labelled else f"{shown}, {method}")  # fmt: skip
                    labelled.add((shown, method))
            ax.set_title(f"{kind} pruned alone")
            ax.set_xlabel(f"sparsity (% of the {kind} entries zeroed)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=DPI)
    plt.close(fig)


def plot_sensitivities(values: dict, path: Path) -> None:
    import numpy as np

    plt = _pyplot()
    kinds = [k for k in LAYER_TYPES if any(k in v and len(v[k]) for v in values.values())]
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(4.5 * max(1, len(kinds)), 3.8), squeeze=False)
    color = _group_colors(plt, values)
    finite = [v for model in values.values() for v in model.values() if len(v)]
    lo = min(float(np.min(v)) for v in finite) if finite else -12
    hi = max(float(np.max(v)) for v in finite) if finite else 0
    bins = np.linspace(lo, hi + 1e-9, 60)
    for ax, kind in zip(axes[0], kinds, strict=False):
        for name, model in values.items():
            v = model.get(kind)
            if v is None or not len(v):
                continue
            ax.hist(v, bins=bins, density=True, histtype="step", lw=1.5, color=color[group_of(name)], alpha=0.8,
                    label=f"{name} (median {np.median(v):.2f})")  # fmt: skip
        ax.set_title(kind)
        ax.set_xlabel("log10 sensitivity |theta*grad| (non-zero entries)")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=DPI)
    plt.close(fig)
