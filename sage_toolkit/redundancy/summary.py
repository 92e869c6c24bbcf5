"""Summaries of an analysis' per-model results: the mean ± spread over a group's models, and the table on stdout.

Models named ``GROUP/NAME`` (``adam/seed1=... adam/seed2=... sage/seed1=...``) form a group; for each group of two or
more, the JSON (``groups``) and the table add the mean ± standard deviation over its models of the loss increase and
BLEU drop at every sparsity.
"""

from __future__ import annotations

from sage_toolkit.stats import finite, mean_std

SUMMARISED = ("loss", "loss_increase", "bleu", "bleu_drop")


def group_of(name: str) -> str:
    """Models named GROUP/ANYTHING (e.g. adam/seed1, adam/seed2) form a group: one colour, one summary."""
    return name.split("/", 1)[0]


def group_summary(models: dict) -> dict:
    """Per group (of two or more models), method and sparsity: mean and standard deviation over the group's models of
    the loss increase and, where measured, the BLEU drop and BLEU. A quantity that is not a finite number for every
    model of the group (not measured, or a diverged model's NaN) is left out."""
    groups: dict[str, list[str]] = {}
    for name in models:
        groups.setdefault(group_of(name), []).append(name)
    out = {}
    for group, names in groups.items():
        if len(names) < 2:
            continue
        out[group] = {"models": names}
        for method in models[names[0]]["results"]:
            rows = []
            for i, first in enumerate(models[names[0]]["results"][method]):
                row = {"sparsity": first["sparsity"]}
                for key in SUMMARISED:
                    values = [models[n]["results"][method][i].get(key) for n in names]
                    if len(finite(values)) == len(values):
                        mean, std = mean_std(values)
                        row[key] = {"mean": mean, "std": std}
                rows.append(row)
            out[group][method] = rows
    return out


def table(models: dict) -> str:
    """One line per model, method and sparsity (loss, its increase, BLEU, fraction of zeros), then the groups; where
    the models were also pruned within layer types (``results_by_layer_type``), the groups of each layer type after
    them (a model's own rows per layer type are in the JSON)."""
    lines = [f"{'model':<16} {'method':<12} {'sparsity':>8} {'loss':>9} {'d_loss':>9} {'BLEU':>7} {'zeros':>7}"]
    for name, rec in models.items():
        for method, rows in rec["results"].items():
            for r in rows:
                bleu = f"{r['bleu']:7.2f}" if "bleu" in r else f"{'-':>7}"
                lines.append(f"{name:<16} {method:<12} {r['sparsity']:8.2f} {r['loss']:9.4f} {r['loss_increase']:9.4f} "
                             f"{bleu} {r['zero_fraction']:7.3f}")  # fmt: skip
    lines += _group_lines(group_summary(models), "")
    for kind, groups in layer_type_summaries(models).items():
        lines += _group_lines(groups, f"{kind} pruned alone, ")
    return "\n".join(lines)


def layer_type_summaries(models: dict) -> dict:
    """:func:`group_summary` of each layer type the models were pruned within (``results_by_layer_type``), in the
    order the models name them; {} when none was."""
    kinds = dict.fromkeys(kind for rec in models.values() for kind in rec.get("results_by_layer_type", {}))
    return {
        kind: group_summary(
            {
                name: {"results": rec["results_by_layer_type"][kind]}
                for name, rec in models.items()
                if kind in rec.get("results_by_layer_type", {})
            }
        )
        for kind in kinds
    }


def _group_lines(groups: dict, what: str) -> list[str]:
    lines = []
    for group, rec in groups.items():
        lines.append(f"\n{what}{group}: mean ± std over {len(rec['models'])} models ({', '.join(rec['models'])})")
        for method in (m for m in rec if m != "models"):
            for r in rec[method]:
                cells = [f"{key} {r[key]['mean']:.4f} ± {r[key]['std']:.4f}" for key in ("loss_increase", "bleu_drop")
                         if key in r]  # fmt: skip
                lines.append(f"  {method:<12} {r['sparsity']:4.2f}: " + ", ".join(cells))
    return lines
