"""The committed fine-tuning study (issue 35, results/finetune_de_en/): its study.md and the attn_ffn study's
regenerate from their study.json, both come from the committed base model, and RESULTS.md states the verdict that
the spec's decision rule gives on the recorded numbers."""

from __future__ import annotations

import json

from sage_toolkit.study.base_model import sha256_of
from tests.fairseq_utils import ROOT
from tests.test_study import regenerated_study_md, two_level_is_the_seeds_mean

RECORD = ROOT / "results" / "finetune_de_en"
BASE_SHA256 = sha256_of(RECORD / "base" / "checkpoint_base.pt")
VERDICTS = {
    "helps": "by the declared rule, SAGE helps in this regime",
    "hurts": "by the declared rule, SAGE hurts in this regime",
    "none": "by the declared rule, the study finds no difference at 5 seeds",
}


def declared_verdict(summary: dict) -> str:
    """studies/finetune_de_en.yaml's decision rule on study.json: SAGE helps (hurts) if its 5-seed mean test sacreBLEU
    is above (below) Adam's on both test sets and the two-level bootstrap gives p < 0.05 on both; else none."""
    tests = summary["significance"]["comparisons"]["sage"]["subsets"]
    assert sorted(tests) == ["test", "test1"]  # test2016 and test2017, both
    differences = [tests[subset]["two_level"]["BLEU"]["difference"] for subset in ("test", "test1")]
    significant = all(tests[subset]["two_level"]["BLEU"]["p_value"] < 0.05 for subset in ("test", "test1"))
    if significant and all(d > 0 for d in differences):
        return "helps"
    if significant and all(d < 0 for d in differences):
        return "hurts"
    return "none"


def test_the_committed_finetuning_study_md_regenerates_from_study_json():
    """results/finetune_de_en/study.md is report() of the study.json beside it: 5 seeds of each winner, every run from
    the committed base, the two-level test computed on the seeds' hypotheses, the forgetting test and the compute."""
    summary, text = regenerated_study_md(RECORD)
    assert summary["spec_file"] == "studies/finetune_de_en.yaml"
    assert summary["base"]["sha256"] == BASE_SHA256 and f"sha256 `{BASE_SHA256}`" in text
    for optimizer, setting in (("adam", "lr6e-3"), ("sage", "lr8e-3_b0.75")):
        result = summary["results"][optimizer]
        assert result["best_setting"] == setting and [s["seed"] for s in result["seeds"]] == [1, 2, 3, 4, 5]
    two_level_is_the_seeds_mean(summary)
    assert "| tatoeba sacreBLEU | tatoeba chrF | tatoeba BP |" in text and "## Compute" in text


def test_the_committed_attn_ffn_study_md_regenerates_from_study_json():
    """results/finetune_de_en/study_attn_ffn/study.md: SAGE on attn_ffn against SAGE on every tensor (the main study's
    seeds 1-2 of its winner, the same base), 2 seeds each."""
    summary, text = regenerated_study_md(RECORD / "study_attn_ffn")
    assert summary["spec_file"] == "studies/finetune_de_en_attn_ffn.yaml"
    assert summary["base"]["sha256"] == BASE_SHA256
    assert list(summary["results"]) == ["sage", "sage_attn_ffn"]
    assert all([s["seed"] for s in r["seeds"]] == [1, 2] for r in summary["results"].values())
    # its baseline is the main study's SAGE seeds 1-2, reused: the same scores on every test set
    main = json.loads((RECORD / "study.json").read_text())["results"]["sage"]["seeds"][:2]
    reused = summary["results"]["sage"]["seeds"]
    assert [s["test"] for s in reused] == [s["test"] for s in main]
    two_level_is_the_seeds_mean(summary)


def test_results_md_states_the_verdict_of_the_declared_rule():
    """RESULTS.md's fine-tuning section says what the decision rule gives on study.json, and none of the other
    verdicts."""
    verdict = declared_verdict(json.loads((RECORD / "study.json").read_text()))
    results = (ROOT / "RESULTS.md").read_text()
    section = results.split("## Fine-tuning a pretrained model", 1)[1].split("\n## ", 1)[0]
    flat = " ".join(section.split())
    assert VERDICTS[verdict] in flat
    assert not [phrase for name, phrase in VERDICTS.items() if name != verdict and phrase in flat]
