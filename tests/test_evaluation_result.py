"""The typed result of an evaluation (sage_toolkit.evaluation.result.Scores): its JSON keys are sage-evaluate's, the
records keep today's keys in today's order, and a metric added to the dataclass reaches every table and record without
another edit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sage_toolkit.evaluation import result
from sage_toolkit.runner.report import comparison_markdown
from sage_toolkit.study.report import report
from sage_toolkit.study.spec import parse_spec
from tests.fairseq_utils import ROOT

# the metric keys of an eval.*.json as sage-evaluate wrote them before the typed result
EVAL_KEYS = [
    "bleu_tok", "bleu_tok_kind", "bleu_tok_string", "bleu_tok_bp", "bleu_tok_sys_len", "bleu_tok_ref_len",
    "bleu_tok_reference", "sacrebleu", "sacrebleu_signature", "sacrebleu_string", "bp", "sys_len", "ref_len",
    "precisions", "chrf", "chrf_signature", "sacrebleu_lowercase", "sacrebleu_reference",
]  # fmt: skip
FINETUNED = ROOT / "results" / "multi30k_de_en" / "study.json"


def test_the_json_keys_and_the_records_are_todays():
    evaluation = {key: i for i, key in enumerate(EVAL_KEYS)} | {"subset": "test", "options": {}}
    scores = result.Scores.from_json(evaluation)
    assert sorted(scores.to_json()) == sorted(EVAL_KEYS)
    assert result.Scores.from_json(scores.to_json()) == scores
    # study.json's scores and results.json's runs: the keys (and their order) they had
    assert list(result.recorded(evaluation, "study")) == [
        "bleu_tok", "sacrebleu", "chrf", "bp", "sys_len", "ref_len", "sacrebleu_signature"
    ]  # fmt: skip
    assert list(result.recorded(evaluation, "runs")) == ["bleu_tok", "sacrebleu", "chrf", "bp", "sacrebleu_signature"]
    # a record of a failed grid run has some scores, None: the others are None too
    assert result.Scores.from_json({"failed": "x", "sacrebleu": None}).recorded("runs")["chrf"] is None


@pytest.fixture
def with_ter(monkeypatch):
    """Scores with one more metric, TER, declared as a new metric is: a field of the dataclass, nothing else."""
    extended = dataclasses.make_dataclass(
        "Scores", [("ter", float | None, result.metric("TER", 1))], bases=(result.Scores,), frozen=True
    )
    monkeypatch.setattr(result, "Scores", extended)


def test_a_metric_added_to_the_dataclass_reaches_the_records_and_the_comparison(with_ter):
    evaluation = {"bleu_tok": 30.0, "sacrebleu": 31.0, "chrf": 55.0, "bp": 1.0, "ter": 52.25}
    assert result.recorded(evaluation, "study")["ter"] == 52.25 and result.recorded(evaluation, "runs")["ter"] == 52.25
    runs = [
        {"config": "adam", "seed": seed, "lr": 1e-3, "best_valid_loss": 3.0, "train_wall_s": 10.0, "words_per_s": 5.0,
         "updates": 100, "sacrebleu_signature": None, **result.recorded({**evaluation, "ter": ter}, "runs")}
        for seed, ter in ((1, 52.25), (2, 53.75))
    ]  # fmt: skip
    text = comparison_markdown(["adam"], runs, Path("data"), beam=5, lenpen=1.0)
    assert "| BP | TER | best valid loss |" in text and "| 53.0 ± 1.1 |" in text  # the summary's mean ± std
    assert "| config | seed | tok. BLEU | sacreBLEU | BP | TER | best valid loss | updates |" in text
    assert "| adam | 2 | 30.00 | 31.00 | 1.000 | 53.8 | 3.000 | 100 |" in text


def test_a_metric_added_to_the_dataclass_reaches_the_study_tables(with_ter):
    summary = json.loads(FINETUNED.read_text())
    spec = parse_spec(summary["spec"], Path(summary["spec_file"]))
    for r in summary["results"].values():
        for s in r["seeds"]:
            for by_lenpen in s["test"].values():
                for scores in by_lenpen.values():
                    scores["ter"] = 50.0
    text = report(spec, summary["results"], summary.get("significance"))
    subset = spec.shown(spec.test_subsets[0])
    assert f"| {subset} BP | {subset} TER |" in text  # the test tables and the per-seed table
    assert text.count(f"{subset} TER") == 3 and "| 50.0 |" in text  # (tuned lenpen, lenpen 1, per seed)
