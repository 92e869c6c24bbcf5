"""What a study shows: study.md's tables (from study.json alone, so that a committed study.md regenerates byte for byte)
and the final checkpoints of a finished study; the plots: :mod:`.plots`. The protocol behind the tables:
:mod:`.protocol`, docs/experiments.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

from sage_toolkit.errors import ToolkitError
from sage_toolkit.evaluation import result
from sage_toolkit.stats import format_difference, format_mean_std
from sage_toolkit.study.compute import compute_table
from sage_toolkit.study.generalization import excess
from sage_toolkit.study.grid import describe_edges, edges
from sage_toolkit.study.spec import StudySpec


def _has_nan(values: list) -> bool:
    return any(isinstance(v, float) and math.isnan(v) for v in values)


def _mean_std(values: list, digits: int) -> str:
    """A table cell over seeds; a NaN (a seed that diverged) makes it "nan" rather than being left out of the mean
    (format_mean_std drops NaN, which would hide the seed)."""
    return "nan" if _has_nan(values) else format_mean_std(values, digits)


def _difference(a: list, b: list, digits: int) -> str:
    """The difference row's cell, "nan" where a column holds a NaN (as :func:`_mean_std`)."""
    return "nan" if _has_nan(a) or _has_nan(b) else format_difference(a, b, digits)


def _score_heads(spec: StudySpec) -> str:
    """The test tables' column heads: every test subset's scores (:func:`sage_toolkit.evaluation.result.columns`)."""
    columns = result.columns("study")
    return "".join(f" {spec.shown(subset)} {label} |" for subset in spec.test_subsets for _, label, _ in columns)


def _score_cells(scores: dict, table: str = "other_data") -> str:
    """One evaluation's cells of ``table``'s score columns (without the outer bars)."""
    return " | ".join(f"{scores[key]:.{digits}f}" for key, _, digits in result.columns(table))


def _model(spec: StudySpec) -> str:
    return f"average of the last {spec.average_last} checkpoints" if spec.average_last else "last checkpoint"


def report(
    spec: StudySpec,
    results: dict,
    significance: dict | None = None,
    base: dict | None = None,
    compute: dict | None = None,
) -> str:
    """study.md: the grid, the length-penalty sweep, the test tables (tuned length penalty and 1.0, with the difference
    of the two optimizers' means; with averaging, the last checkpoint's table too), the per-seed table, the paired
    bootstrap (``significance``, study.json's), a fine-tuning study's base model and extra tests (``base``,
    study.json's), the generalisation and multiplier tables, the job time (``compute``, study.json's; studies
    written before it was recorded have none) and the sacreBLEU signatures."""
    lines = [f"# {spec.description}", ""]
    if spec.average_last:
        lines += [f"Model evaluated: the {_model(spec)} of each run (the last checkpoint beside it, below).", ""]
    lines += _grid(spec, results)
    lines += _lenpen_sweep(spec, results)
    tables = [("tuned length penalty", "tuned", "test"), ("length penalty 1.0", "1", "test")]
    if spec.average_last:
        tables += [("last checkpoint, tuned length penalty", "tuned", "test_last")]
    for label, which, key in tables:
        lines += _test_table(spec, results, label, which, key)
    lines += _per_seed(spec, results)
    if significance:
        lines += _significance(spec, significance)
    lines += _fine_tuning(spec, results, base)
    lines += _generalization(results)
    lines += _multipliers(results)
    if compute:
        lines += compute_table(compute)
    lines += _signatures(results)
    return "\n".join(lines) + "\n"


def _grid(spec: StudySpec, results: dict) -> list[str]:
    """The grid table (validation, tune seed, lenpen 1) and the winners at an edge of their grid."""
    lines = [f"## Grid (seed {spec.tune_seed}, validation, beam {spec.beam}, lenpen 1)", ""]
    lines += ["| optimizer | setting | overrides | valid sacreBLEU | valid tok. BLEU | BP | final valid loss |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for setting, g in r["grid"].items():
            if g["failed"]:
                lines.append(f"| {name} | {setting} | `{' '.join(g['overrides'])}` | failed | | | |")
                continue
            mark = " **(best)**" if setting == r["best_setting"] else ""
            lines.append(
                f"| {name} | {setting}{mark} | `{' '.join(g['overrides'])}` | {g['valid_sacrebleu']:.2f} | "
                f"{g['valid_bleu_tok']:.2f} | {g['valid_bp']:.3f} | {g['final_valid_loss']:.3f} |"
            )
    at_edge = []  # the protocol extends such a grid before the seeds (issue 14); a study that did not says so here
    for name, r in results.items():
        grid = {setting: g["overrides"] for setting, g in r["grid"].items()}
        if edges(grid, r["best_setting"]):
            at_edge.append(f"{name}'s winner {r['best_setting']} ({describe_edges(grid, r['best_setting'])})")
    if at_edge:
        lines += ["", "At an edge of its grid (a better setting may lie beyond it): " + "; ".join(at_edge) + "."]
    return lines


def _lenpen_sweep(spec: StudySpec, results: dict) -> list[str]:
    """The length-penalty table (mean validation sacreBLEU over the seeds) and the choices at an end of the sweep."""
    lines = ["", "## Length penalty (mean validation sacreBLEU over the seeds)", ""]
    lenpens = [f"{lp:g}" for lp in spec.lenpens]
    lines += ["| optimizer | " + " | ".join(f"lenpen {lp}" for lp in lenpens) + " | chosen |"]
    lines += ["|---|" + "---|" * (len(lenpens) + 1)]
    for name, r in results.items():
        by = r["valid_sacrebleu_by_lenpen"]
        lines.append(f"| {name} | " + " | ".join(f"{by[lp]:.2f}" for lp in lenpens) + f" | {r['lenpen']:g} |")
    at_edge = lenpen_edges(spec.lenpens, {name: r["lenpen"] for name, r in results.items()})
    if at_edge:  # as with the grid: the sweep did not bracket the best penalty
        lines += [
            "",
            "Chosen at an edge of the sweep (a better length penalty may lie beyond it): " + "; ".join(at_edge) + ".",
        ]
    return lines


def _test_table(spec: StudySpec, results: dict, label: str, which: str, key: str) -> list[str]:
    """One test table: per optimizer the mean ± std over its seeds of the final validation loss and every test
    subset's scores (``key``: the seeds' "test" or "test_last"; ``which``: "tuned" or "1", the length penalty), and
    the difference of each optimizer's means from the first's."""
    names, scores = list(results), result.columns("study")
    lines = ["", f"## Test, {label} (mean ± std over {len(spec.seeds)} seeds)", ""]
    head = "| optimizer | lenpen | final valid loss |" + _score_heads(spec)
    lines += [head, "|" + "---|" * (3 + len(scores) * len(spec.test_subsets))]
    columns = {}  # name -> the per-seed values of every column, for the difference row
    for name in names:
        lp = f"{results[name]['lenpen']:g}" if which == "tuned" else "1"
        seeds = results[name]["seeds"]
        values = [([s["final_valid_loss"] for s in seeds], 3)]
        for subset in spec.test_subsets:
            cells = [s[key][subset][lp] for s in seeds]
            values += [([c[score] for c in cells], digits) for score, _, digits in scores]
        columns[name] = values
        lines.append(f"| {name} | {lp} | " + " | ".join(_mean_std(v, d) for v, d in values) + " |")
    first, others = names[0], [n for n in names[1:] if len(results[n]["seeds"]) > 1]
    if len(results[first]["seeds"]) > 1 and others:
        for other in others:
            cells = [_difference(a, b, d) for (a, d), (b, _) in zip(columns[first], columns[other], strict=True)]
            lines.append(f"| {other} − {first} | | " + " | ".join(cells) + " |")
        lines += [
            "",
            ("Last row" if len(others) == 1 else "Rows X − " + first)
            + ": difference of the means ± its standard error, sqrt(s1²/n1 + s2²/n2) (seeds unpaired).",
        ]
    return lines


def _per_seed(spec: StudySpec, results: dict) -> list[str]:
    """Every seed run at its optimizer's tuned length penalty: validation and test scores, training time."""
    scores = result.columns("study")
    lines = ["", "## Per seed (tuned length penalty)", ""]
    head = "| optimizer | seed | final valid loss | valid sacreBLEU |" + _score_heads(spec)
    lines += [head + " train time (s) |", "|" + "---|" * (5 + len(scores) * len(spec.test_subsets))]
    for name, r in results.items():
        lp = f"{r['lenpen']:g}"
        for s in r["seeds"]:
            row = f"| {name} | {s['seed']} | {s['final_valid_loss']:.3f} | {s['valid'][lp]['sacrebleu']:.2f} |"
            for subset in spec.test_subsets:
                row += "".join(f" {s['test'][subset][lp][score]:.{digits}f} |" for score, _, digits in scores)
            lines.append(row + f" {s['train_wall_s'] or float('nan'):.0f} |")
    return lines


def _signatures(results: dict) -> list[str]:
    """The closing notes: how the scores were computed, and every sacreBLEU signature of the test tables."""
    signatures = sorted(
        {c["sacrebleu_signature"] for r in results.values() for s in r["seeds"] for t in s["test"].values()
         for c in t.values() if c.get("sacrebleu_signature")}
    )  # fmt: skip
    lines = [
        "",
        "Tokenized BLEU: fairseq's scorer on the lowercased Moses-tokenised text (the Multi30k/IWSLT'14 way);",
        "sacreBLEU on detokenised output. BP: sacreBLEU's brevity penalty. Validation loss: label-smoothed, base 2.",
    ]
    return lines + [f"sacreBLEU signature: `{s}`" for s in signatures]


END_SHARE = 0.1  # the multiplier table's "end of training": the sampled updates of the last 10 % of the updates


def _fine_tuning(spec: StudySpec, results: dict, base: dict | None) -> list[str]:
    """A fine-tuning study's base model before fine-tuning (the study's own validation and test sets, lenpen 1.0) and
    every model on the extra tests (lenpen 1.0; the base's own domain measures forgetting)."""
    lines = []
    if base is not None:
        lines += ["", f"## The base model before fine-tuning (beam {spec.beam}, lenpen 1)", ""]
        lines += [f"`{base['checkpoint']}`, sha256 `{base['sha256']}`.", ""]
        subsets = [("valid", base["valid"])] + [(spec.shown(s), base["test"][s]) for s in spec.test_subsets]
        subsets += [(name, base["extra_tests"][name]) for name in spec.extra_tests]
        labels = [label for _, label, _ in result.columns("other_data")]
        lines += ["| set | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        lines += [f"| {name} | {_score_cells(c)} |" for name, c in subsets]
    if not spec.extra_tests:
        return lines
    tests = list(spec.extra_tests)
    lines += ["", f"## Extra tests (lenpen 1, mean ± std over the seeds; {_model(spec)})", ""]
    scores = result.columns("other_data")
    lines += ["| model | " + " | ".join(f"{t} {label}" for t in tests for _, label, _ in scores) + " |"]
    lines += ["|---|" + "---|" * len(scores) * len(tests)]
    if base is not None:
        lines.append("| base | " + " | ".join(_score_cells(base["extra_tests"][t]) for t in tests) + " |")
    columns = {}
    for name, r in results.items():
        columns[name] = [
            ([s["extra_tests"][t][score] for s in r["seeds"]], digits) for t in tests for score, _, digits in scores
        ]
        lines.append(f"| {name} | " + " | ".join(_mean_std(v, d) for v, d in columns[name]) + " |")
    first = next(iter(results))
    for other in list(results)[1:]:
        if len(results[first]["seeds"]) > 1 and len(results[other]["seeds"]) > 1:
            cells = [_difference(a, b, d) for (a, d), (b, _) in zip(columns[first], columns[other], strict=True)]
            lines.append(f"| {other} − {first} | " + " | ".join(cells) + " |")
    return lines


def lenpen_edges(lenpens: list[float], chosen: dict[str, float]) -> list[str]:
    """``NAME LP (the highest|lowest)`` for each optimizer whose chosen length penalty is an end of the sweep
    ``lenpens`` (of two or more values): the sweep may not bracket its best penalty."""
    low, high = min(lenpens), max(lenpens)
    return [
        f"{name} {lp:g} (the {'highest' if lp == high else 'lowest'})"
        for name, lp in chosen.items()
        if low < high and lp in (low, high)
    ]


def layer_kinds(stats: dict) -> list[tuple[str, str]]:
    """(label, key prefix) of the layer types a run's ``sage_stats`` has: all SAGE entries, then each type."""
    kinds = [("all", "")]
    return kinds + [(k, f"{k}_") for k in ("embed", "attn", "ffn", "norm", "other") if f"{k}_mult_mean" in stats]


def _end_mean(stats: dict, key: str) -> float | None:
    """The mean of ``stats[key]`` over the sampled updates of the last END_SHARE of training."""
    last = max(stats["update"])
    values = [v for u, v in zip(stats["update"], stats[key], strict=True)
              if u >= (1 - END_SHARE) * last and isinstance(v, (int, float))]  # fmt: skip
    return sum(values) / len(values) if values else None


def _multipliers(results: dict) -> list[str]:
    """The SAGE multiplier at the end of training per layer type, for the optimizers whose final runs logged its
    statistics (mean ± std over those seeds); nothing when none did."""
    rows = []
    for name, r in results.items():
        runs = [s["sage_stats"] for s in r["seeds"] if s.get("sage_stats")]
        if not runs:
            continue
        for label, prefix in layer_kinds(runs[0]):
            cells = [[_end_mean(stats, prefix + key) for stats in runs if prefix + key in stats]
                     for key in ("mult_mean", "r_q10", "r_q50", "r_q90", "r_gt1")]  # fmt: skip
            rows.append(f"| {name} | {label} | {len(runs)} | " + " | ".join(_mean_std(c, 3) for c in cells) + " |")
    if not rows:
        return []
    return [
        "",
        "## SAGE multiplier by layer type, end of training",
        "",
        "| optimizer | layer type | seeds | applied multiplier (mean) | r q10 | r q50 | r q90 | share r > 1 |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Each run's sampled statistics (sage_toolkit diagnostics) averaged over the last {END_SHARE:.0%} of its "
        "updates, then mean ± std over the seeds. r: the multiplier before the strength alpha; applied: 1 + alpha "
        "(r − 1), the factor on the base optimizer's step. Over training: sage_multipliers.png.",
    ]


def generalization(results: dict) -> dict:
    """Per optimizer, per seed run: the mean excess of its validation loss over the first optimizer's (the baseline's)
    seed runs at the same training loss (:mod:`sage_toolkit.study.generalization`); a baseline run is compared with
    the baseline's other seeds. {} when no run's curve has training losses (studies recorded before they did)."""
    names = list(results)
    curves = {name: {s["seed"]: s.get("curve") or [] for s in r["seeds"]} for name, r in results.items()}
    if not any(c.get("train_loss") is not None for runs in curves.values() for curve in runs.values() for c in curve):
        return {}
    baseline = curves[names[0]]
    table = {}
    for name in names:
        table[name] = {
            seed: excess(curve, [ref for other, ref in baseline.items() if name != names[0] or other != seed])["mean"]
            for seed, curve in curves[name].items()
        }
    return table


def _generalization(results: dict) -> list[str]:
    """study.md's table of :func:`generalization`; nothing when it is empty."""
    table = generalization(results)
    if not table:
        return []
    base = next(iter(table))
    lines = ["", f"## Validation loss at matched training loss (against {base}'s seed runs)", ""]
    lines += ["| optimizer | seeds | excess validation loss (mean ± std over seeds) | per seed |", "|---|---|---|---|"]
    for name, by_seed in table.items():
        values = [v for v in by_seed.values() if v is not None]
        per_seed = ", ".join(f"{seed}: {'n/a' if v is None else format(v, '+.3f')}" for seed, v in by_seed.items())
        lines.append(f"| {name} | {len(values)} | {_mean_std(values, 3) if values else 'n/a'} | {per_seed} |")
    lines += [
        "",
        f"Each run's validation loss minus {base}'s at the same training loss (fairseq's, dropout on), over the last "
        f"half of its updates (sage_toolkit/study/generalization.py; {base}'s own runs against its other seeds): above "
        f"0, the run generalises worse than {base} at the same fit of the training data, whatever its speed. "
        "Plotted: generalization.png.",
    ]
    return lines


def _significance(spec: StudySpec, significance: dict) -> list[str]:
    """The paired bootstrap tables: per optimizer against the baseline, per test subset, every seed pair, the pooled
    seeds and (in a study.json that has it) the two-level bootstrap over the seed pairs."""
    base = significance["baseline"]
    lines = []
    two_level = None  # a two-level test's scores, for its signature below
    for system, comparison in significance["comparisons"].items():
        lines += [
            "",
            f"## Paired bootstrap ({system} against {base}, {_model(spec)}, each at its tuned length penalty)",
        ]
        lines += ["", f"| test set | seeds | {base} BLEU | {system} BLEU | difference | p | {base} chrF | "
                  f"{system} chrF | difference | p |", "|" + "---|" * 10]  # fmt: skip
        for subset, tested in comparison["subsets"].items():
            rows = [(str(pair["seed"]), pair) for pair in tested["pairs"]]
            seeds = ",".join(str(s) for s in comparison["seeds"])
            rows.append(("pooled " + seeds, tested["pooled"]))
            if "two_level" in tested:
                rows.append(("two-level " + seeds, tested["two_level"]))
                two_level = tested["two_level"]
            for label, scores in rows:
                cells = []
                for metric in ("BLEU", "chrF"):
                    m = scores[metric]
                    cells += [f"{m[base]:.2f}", f"{m[system]:.2f}", f"{m['difference']:+.2f}", f"{m['p_value']:.3f}"]
                lines.append(f"| {spec.shown(subset)} | {label} | " + " | ".join(cells) + " |")
    pooled = next(iter(next(iter(significance["comparisons"].values()))["subsets"].values()))["pooled"]
    lines += [
        "",
        "sacreBLEU's paired bootstrap (Koehn 2004), 1,000 resamples of the test sentences (pooled: of the (seed, "
        "sentence) items, every seed's output against the references); p: the fraction of resamples whose absolute "
        "difference, minus the mean of those, is greater than the observed absolute difference (+1 correction).",
    ]
    if two_level is not None:
        lines += [
            "Two-level: the seed is resampled too (the pooled test treats the seeds' copies of a sentence as "
            "independent, so the variation between training runs never enters it): 1,000 resamples, each drawing "
            "the seed pairs with replacement, then the test sentences with replacement within each drawn pair; its "
            "scores: the mean over the seed pairs of each run's corpus score; p as above, on the mean over the drawn "
            "pairs of each pair's difference (sage_toolkit/significance.py)."
        ]
    lines += [f"{metric} test signature: `{pooled[metric]['signature']}`" for metric in ("BLEU", "chrF")]
    if two_level is not None:
        lines += [f"{metric} two-level signature: `{two_level[metric]['signature']}`" for metric in ("BLEU", "chrF")]
    return lines


def list_checkpoints(out: Path) -> dict[str, str]:
    """The final models of a finished study in ``out``, OPTIMIZER/seedN -> checkpoint path (analyze_redundancy.py's
    NAME=PATH arguments). ToolkitError if there is no study.json."""
    summary_file = out / "study.json"
    if not summary_file.exists():
        raise ToolkitError(f"{summary_file}: no finished study there (run scripts/study.py SPEC first)")
    results = json.loads(summary_file.read_text())["results"]
    return {
        f"{name}/seed{s['seed']}": str(Path(s["dir"]) / "checkpoint_last.pt") for name, r in results.items()
        for s in r["seeds"]
    }  # fmt: skip
