"""The Adam-versus-SAGE runner end to end on a tiny prepared corpus, and its resumption."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.fairseq_utils import ROOT

spec = importlib.util.spec_from_file_location("compare", ROOT / "scripts" / "compare.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def _run(demo_bin, out, capsys):
    overrides = ["optimization.max_update=4", "dataset.max_tokens=1024", "common.log_interval=2"]
    results = compare.main(["--data", str(demo_bin), "--out", str(out), "--jobs", "2", "--cpu",
                            "--validate-every", "2", *overrides])  # fmt: skip
    return results, capsys.readouterr().out


@pytest.mark.slow
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


def test_log_reader_keeps_one_copy_of_the_lines_fairseq_repeats(tmp_path):
    """fairseq 0.12 adds a log-file handler per progress bar, so epoch k writes each record k times."""
    inner = '[2026-01-01 00:00:0{i}][train_inner][INFO] - {{"epoch": 2, "loss": "5.1", "num_updates": "{u}"}}'
    valid = '[2026-01-01 00:00:09][valid][INFO] - {"epoch": 2, "valid_loss": "4.9", "valid_num_updates": "20"}'
    lines = [inner.format(i=1, u=10), inner.format(i=2, u=20), inner.format(i=2, u=20), valid, valid]
    (tmp_path / "train.log").write_text("\n".join(lines) + "\n")
    log = compare.read_log(tmp_path / "train.log")
    assert [r["num_updates"] for r in log["train_inner"]] == [10.0, 20.0]
    assert [r["valid_num_updates"] for r in log["valid"]] == [20.0]
