"""The Adam-versus-SAGE runner end to end on a tiny prepared corpus, and its resumption."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.fairseq_utils import ROOT

pytestmark = pytest.mark.slow

spec = importlib.util.spec_from_file_location("compare", ROOT / "scripts" / "compare.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def _run(demo_bin, out, capsys):
    overrides = ["optimization.max_update=4", "dataset.max_tokens=1024", "common.log_interval=2"]
    results = compare.main(["--data", str(demo_bin), "--out", str(out), "--jobs", "2", "--cpu",
                            "--validate-every", "2", *overrides])  # fmt: skip
    return results, capsys.readouterr().out


def test_runner_trains_evaluates_tabulates_and_resumes(demo_bin, tmp_path, capsys):
    out = tmp_path / "cmp"
    results, printed = _run(demo_bin, out, capsys)
    assert set(results["table"]) == {"demo_adam", "demo_sage"}
    for run in results["runs"]:
        assert run["updates"] == 4 and run["train_wall_s"] > 0 and run["words_per_s"] > 0
        assert 0 <= run["bleu_tok"] <= 100 and run["sacrebleu_signature"].startswith("nrefs:1")
        assert [c["update"] for c in run["curve"]] == [2, 4]  # validated every 2 updates: the learning curve
    assert "update 2: valid loss" in printed and "SAGE alpha" in printed  # progress while it runs
    table = (out / "results.md").read_text()
    assert "| demo_adam | 1 |" in table and "| demo_sage | 1 |" in table and "sacreBLEU signature" in table
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]
    assert (out / "learning_curves.png").stat().st_size > 10_000

    logs = {p: p.stat().st_mtime_ns for p in out.glob("*/seed1/train.log")}
    again, printed = _run(demo_bin, out, capsys)
    assert printed.count("finished earlier: skipped") == 2 and "training" not in printed
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed1/train.log")} == logs, "nothing may retrain"
    assert again["runs"] == results["runs"]

    (out / "demo_sage/seed1/eval.test.json").unlink()  # a run interrupted after training: only evaluate it again
    third, printed = _run(demo_bin, out, capsys)
    assert "[demo_sage/seed1] training" not in printed and "[demo_sage/seed1] test BLEU" in printed
    assert third["runs"][1]["updates"] == 4


def test_runner_refuses_unknown_config_and_data(tmp_path):
    with pytest.raises(SystemExit):
        compare.main(["--configs", "no_such_config", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        compare.main(["--data", str(tmp_path), "--out", str(tmp_path / "o")])  # not a data-bin
