"""The study's analyses of its finished runs: the significance tests between the optimizers (protocol step 5,
:mod:`sage_toolkit.significance`), the redundancy and token-loss analyses of the seed runs merged into one each, and
the check that a recomputed test is the stored one (``--retest``). What they measure: docs/experiments.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from sage_toolkit.atomic import write_atomic
from sage_toolkit.errors import ToolkitError
from sage_toolkit.study.store import StudyRuns

TWO_LEVEL_TEST = (
    "two-level paired bootstrap (1000 resamples, seed 12345): the seed pairs with replacement, then the test "
    "sentences with replacement within each drawn pair; statistic: the mean over the drawn pairs of the pair's corpus "
    "score difference; p: sacreBLEU's convention"
)


def significance(study: StudyRuns, results: dict) -> dict:
    """Step 5: every optimizer after the first against the first (the baseline), each at its chosen length
    penalty: {"baseline", "model", "comparisons": {name: {"seeds", "subsets": {subset: {"pairs": [per common
    seed], "pooled"}}}}} ({} for a single optimizer)."""
    names = list(results)
    if len(names) < 2:
        return {}
    references, lowercase = test_references(study)
    baseline = names[0]
    comparisons = {}
    for system in names[1:]:
        pair = {baseline: results[baseline], system: results[system]}
        seeds = [s["seed"] for s in pair[baseline]["seeds"] if s["seed"] in {t["seed"] for t in pair[system]["seeds"]}]
        subsets = {}
        for subset in study.spec.test_subsets:
            hyps = {
                name: [
                    study.hypotheses(study.run(name, r["best_setting"], seed), subset, r["lenpen"], study.primary)
                    for seed in seeds
                ]
                for name, r in pair.items()
            }
            subsets[subset] = paired_tests(baseline, system, hyps, references[subset], lowercase[subset], seeds)
        comparisons[system] = {"seeds": seeds, "subsets": subsets}
    return {
        "test": "sacreBLEU paired bootstrap (1000 resamples, seed 12345), each optimizer against "
        f"{baseline}, each at its chosen length penalty",
        "two_level_test": TWO_LEVEL_TEST,
        "baseline": baseline,
        "model": study.primary,
        "comparisons": comparisons,
    }


def test_references(study: StudyRuns) -> tuple[dict[str, list[str]], dict[str, bool]]:
    """Per test subset, the detokenised reference's lines and whether the preparation is lowercased (sacreBLEU's
    lowercase option). ToolkitError for a subset without a detokenised reference."""
    from sage_toolkit.evaluation.dataset import resolve_setup

    references, lowercase = {}, {}
    for subset in study.spec.test_subsets:
        setup = resolve_setup(study.data, subset)
        if setup.ref is None:
            raise ToolkitError(f"data {study.data}: no detokenised reference of {subset} for the paired bootstrap")
        references[subset] = Path(setup.ref).read_text(encoding="utf-8").splitlines()
        lowercase[subset] = setup.lowercase
    return references, lowercase


def paired_tests(
    baseline: str, system: str, hyps: dict[str, list[list[str]]], references: list[str], lowercase: bool, seeds: list
) -> dict:
    """The paired bootstrap of ``system`` against ``baseline`` for each seed pair (``hyps[name][i]``: seed
    ``seeds[i]``'s hypotheses) and for the pooled seeds, and the two-level bootstrap over the seed pairs:
    {"pairs": [...], "pooled": {...}, "two_level": {...}}, each {metric: scores}."""
    from sage_toolkit.significance import paired_bootstrap, pooled, two_level_bootstrap

    def scores(results: dict) -> dict:
        return {m: {baseline: r.baseline, system: r.system, "difference": r.difference, "p_value": r.p_value,
                    "signature": r.signature} for m, r in results.items()}  # fmt: skip

    def test(base_hyps: list[str], sys_hyps: list[str], refs: list[str]) -> dict:
        return scores(paired_bootstrap(base_hyps, sys_hyps, refs, lowercase=lowercase))

    pairs = [{"seed": seed, **test(hyps[baseline][i], hyps[system][i], references)} for i, seed in enumerate(seeds)]
    pooled_base, pooled_refs = pooled(hyps[baseline], references)
    pooled_sys, _ = pooled(hyps[system], references)
    two_level = two_level_bootstrap(hyps[baseline], hyps[system], references, lowercase=lowercase)
    return {"pairs": pairs, "pooled": test(pooled_base, pooled_sys, pooled_refs), "two_level": scores(two_level)}


def merged_redundancy(study: StudyRuns, results: dict) -> dict | None:
    """The per-run analyses of every optimizer's seed runs merged into one analysis (models named
    OPTIMIZER/SETTING/seedN, grouped by optimizer), or None without the spec's ``redundancy``."""
    from sage_toolkit.redundancy.analysis import summaries

    if study.spec.redundancy is None:
        return None
    merged, models = None, {}
    for name, r in results.items():
        for s in r["seeds"]:
            analysis = study.analyze_redundancy(study.run(name, r["best_setting"], s["seed"]))
            merged = merged or {k: v for k, v in analysis.items() if k not in ("models", "groups", "date")}
            models.update(analysis["models"])
    return {**merged, "models": models, **summaries(models)}


def merged_token_loss(study: StudyRuns, results: dict) -> dict | None:
    """The per-run token-loss analyses of every optimizer's seed runs merged (models OPTIMIZER/SETTING/seedN,
    each the final model's, with the multipliers measured on its last checkpoint), or None without the spec's
    ``token_loss``."""
    if study.spec.token_loss is None:
        return None
    merged, models = None, {}
    for name, r in results.items():
        for s in r["seeds"]:
            run = study.run(name, r["best_setting"], s["seed"])
            analysis = study.analyze_token_loss(run)
            merged = merged or {k: v for k, v in analysis.items() if k not in ("models", "date")}
            model = dict(analysis["models"][run.name])
            last = analysis["models"].get(f"{run.name}@last")
            if last is not None and "multipliers" in last:
                model["multipliers"] = {**last["multipliers"], "checkpoint": last["checkpoint"]}
            models[run.name] = model
    return {**merged, "models": models}


def write_redundancy(out: Path, analysis: dict) -> None:
    """The merged redundancy analysis: the analysis' outputs (:func:`sage_toolkit.redundancy.analysis.write_outputs`;
    no sensitivity histograms: they need the raw sensitivities, which the per-run records do not keep) and
    table.txt, the analysis' printed table."""
    from sage_toolkit.redundancy.analysis import write_outputs
    from sage_toolkit.redundancy.summary import table

    out.mkdir(parents=True, exist_ok=True)
    write_outputs(out, analysis, None)
    write_atomic(out / "table.txt", table(analysis["models"]) + "\n")


def write_token_loss(out: Path, analysis: dict) -> None:
    """The merged token-loss analysis: token_loss.json and token_loss.md (the per-optimizer summary, then every
    model's table)."""
    from sage_toolkit.token_loss.analysis import OUTPUT, group_table, table

    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / OUTPUT, json.dumps(analysis, indent=2) + "\n")
    write_atomic(out / "token_loss.md", group_table(analysis) + "\n" + table(analysis) + "\n")


def check_same_tests(path: Path, stored: dict, recomputed: dict) -> None:
    """ToolkitError unless every test ``stored`` holds (study.json's) has the value ``recomputed`` gives it."""

    def compare(where: str, old, new) -> None:
        if isinstance(old, dict) and isinstance(new, dict) and old.keys() <= new.keys():
            for key in old:
                compare(f"{where}.{key}", old[key], new[key])
        elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
            for i, (a, b) in enumerate(zip(old, new, strict=True)):
                compare(f"{where}[{i}]", a, b)
        elif isinstance(old, float) and isinstance(new, float):
            if not math.isclose(old, new, rel_tol=0, abs_tol=1e-6):
                raise ToolkitError(
                    f"--retest: {path}: {where} is {old!r} there but {new!r} from the record's hypotheses; study.json "
                    "was made from other hypotheses or another sacreBLEU: nothing written"
                )
        elif old != new:
            raise ToolkitError(
                f"--retest: {path}: {where} is {old!r} there but {new!r} from the record's hypotheses: nothing written"
            )

    compare("significance", stored, recomputed)
