"""A fine-tuning study (a spec with ``base`` and ``extra_tests``): every run starts from the declared base model, the
base is evaluated like a run, every final model translates the extra test sets, a changed base or a record of another
base is refused, and the spec's new keys are checked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from sage_toolkit.errors import ToolkitError
from sage_toolkit.study import command as study
from sage_toolkit.study.base_model import export_base
from sage_toolkit.study.compute import compute_table
from sage_toolkit.study.protocol import Study, check_configs
from sage_toolkit.study.report import report
from sage_toolkit.study.spec import load_spec, parse_spec
from tests.fairseq_utils import ROOT, cpu_env
from tests.test_study import TINY, write_spec

SHA = "0" * 64


@pytest.mark.parametrize(
    "change, message",
    [
        ({"base": "base.pt"}, "base must be a mapping with exactly 'checkpoint' and 'sha256'"),
        ({"base": {"checkpoint": "b.pt"}}, "base must be a mapping with exactly 'checkpoint' and 'sha256'"),
        ({"base": {"checkpoint": "", "sha256": SHA}}, "base.checkpoint must be a file name"),
        ({"base": {"checkpoint": "b.pt", "sha256": "ABC"}}, "base.sha256 must be 64 lowercase hexadecimal digits"),
        ({"extra_tests": ["x"]}, "extra_tests must be a mapping"),
        ({"extra_tests": {"test": {"data": "d", "subset": "test"}}}, "extra_tests: 'test' must be a name"),
        ({"extra_tests": {"a b": {"data": "d", "subset": "test"}}}, "extra_tests: 'a b' must be a name"),
        ({"extra_tests": {"other": {"data": "d"}}}, "extra_tests.other must be {data: DATA_BIN, subset: SUBSET}"),
        ({"extra_tests": {"other": {"data": 3, "subset": "test"}}}, "extra_tests.other.data must be a string"),
    ],
)
def test_spec_errors_name_the_key(tmp_path, change, message):
    spec_file = write_spec(tmp_path / "spec.yaml", tmp_path, **change)
    with pytest.raises(ToolkitError) as err:
        load_spec(spec_file)
    assert message in str(err.value) and str(spec_file) in str(err.value)


@pytest.fixture(scope="module")
def base(demo_bin, tmp_path_factory):
    """A base model of the demo config's architecture (4 updates on the demo data), exported as a study's base."""
    folder = tmp_path_factory.mktemp("base")
    cmd = [sys.executable, "-m", "fairseq_cli.hydra_train", "--config-dir", str(ROOT / "configs"),
           "--config-name", "demo_adam", f"task.data={demo_bin}", f"checkpoint.save_dir={folder / 'run'}",
           "common.seed=7", "dataset.disable_validation=true", "checkpoint.no_epoch_checkpoints=true",
           *TINY]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=cpu_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = folder / "checkpoint_base.pt"
    return path, export_base(folder / "run" / "checkpoint_last.pt", path)


def finetune_spec(tmp_path, demo_bin, base_file, sha256):
    optimizers = {"adam": {"config": "demo_adam", "grid": {"lr1": ["optimization.lr=[0.001]"]}},
                  "sage": {"config": "demo_sage", "grid": {"lr2": ["optimization.lr=[0.002]"]}}}  # fmt: skip
    return write_spec(
        tmp_path / "spec.yaml", demo_bin, seeds=[1], lenpens=[1.0], optimizers=optimizers,
        record=str(tmp_path / "record"), base={"checkpoint": str(base_file), "sha256": sha256},
        extra_tests={"other": {"data": str(demo_bin), "subset": "valid"}},
    )  # fmt: skip


@pytest.mark.slow
def test_every_run_starts_from_the_base_and_translates_the_extra_tests(demo_bin, base, tmp_path, capsys):
    base_file, sha256 = base
    spec_file = finetune_spec(tmp_path, demo_bin, base_file, sha256)
    out = tmp_path / "study"
    summary = study.main([str(spec_file), "--out", str(out)])
    capsys.readouterr()
    # every run was fine-tuned from the base: fairseq loaded it as a pretrained model
    for run in ("adam/lr1/seed1", "sage/lr2/seed1"):
        log = (out / run / "train.out").read_text()
        assert f"loading pretrained model from {base_file}" in log, log[-2000:]
        recorded = json.loads((tmp_path / "record" / run / "run.json").read_text())
        assert recorded["base_sha256"] == sha256
        extra = json.loads((out / run / "eval.other.valid.lp1.json").read_text())
        seed = summary["results"][run.split("/")[0]]["seeds"][0]
        assert seed["extra_tests"]["other"]["sacrebleu"] == extra["sacrebleu"] and extra["subset"] == "valid"
        assert (tmp_path / "record" / run / "eval.other.valid.lp1.hyp.en.gz").is_file()
    # the base itself, evaluated as a run (its valid set and the extra test are the same text here: same scores)
    assert summary["base"]["sha256"] == sha256
    own = json.loads((out / "base" / "eval.valid.lp1.json").read_text())
    assert own["checkpoint"] == str(base_file) and summary["base"]["valid"]["sacrebleu"] == own["sacrebleu"]
    assert summary["base"]["extra_tests"]["other"]["sacrebleu"] == own["sacrebleu"]
    assert json.loads((tmp_path / "record" / "base" / "run.json").read_text())["base_sha256"] == sha256
    text = (out / "study.md").read_text()
    assert "## The base model before fine-tuning" in text and f"sha256 `{sha256}`" in text
    assert "## Extra tests" in text and "| other sacreBLEU |" in text
    spec = parse_spec(summary["spec"], spec_file)
    assert report(spec, summary["results"], summary.get("significance"), summary["base"], summary["compute"]) == text
    # the job time: every run's training and every evaluation in its folder (the record kept them all)
    assert set(summary["compute"]["runs"]) == {"adam/lr1/seed1", "sage/lr2/seed1"}
    for run, entry in summary["compute"]["runs"].items():
        evaluations = [json.loads(p.read_text()) for p in (out / run).glob("eval.*.json")]
        assert entry["evaluations"] == len(evaluations) > 0
        assert entry["evaluation_s"] == pytest.approx(sum(e["elapsed_s"] for e in evaluations))
        timing = json.loads((out / run / "timing.json").read_text())
        assert entry["train_s"] == timing["train_seconds"] > 0 and entry["train_threads"] == timing["threads"] >= 1
        assert entry["evaluation_threads"] == sorted({e["threads"] for e in evaluations})
        assert entry["evaluation_threads"][0] >= 1
    assert "## Compute" in text and "| all | 2 |" in text

    # the study resumes from the record alone (the run folders gone), the base's evaluations included
    import shutil

    shutil.rmtree(out)
    again = study.main([str(spec_file), "--out", str(out)])
    capsys.readouterr()
    assert again["base"] == summary["base"] and again["results"] == summary["results"]
    assert again["compute"] == summary["compute"]

    # a record of a run fine-tuned from another base is refused, naming the record
    record = tmp_path / "record" / "sage" / "lr2" / "seed1" / "run.json"
    changed = {**json.loads(record.read_text()), "base_sha256": "f" * 64}
    record.write_text(json.dumps(changed))
    with pytest.raises(SystemExit):
        study.main([str(spec_file), "--out", str(out)])
    err = capsys.readouterr().err
    assert f"record {record.parent}: the run was fine-tuned from the base with sha256 {'f' * 64}" in err


def test_a_base_whose_hash_is_not_the_declared_one_is_refused(demo_bin, tmp_path):
    """The spec declares the base's sha256: a changed (or re-exported) file stops the study before any run."""
    base_file = tmp_path / "base.pt"
    torch.save({"model": {}}, base_file)
    spec = load_spec(finetune_spec(tmp_path, demo_bin, base_file, SHA))
    with pytest.raises(ToolkitError) as err:
        Study(spec, tmp_path / "out", 1, True)
    assert f"base.checkpoint {base_file} has sha256" in str(err.value) and f"the spec declares {SHA}" in str(err.value)
    spec = load_spec(finetune_spec(tmp_path, demo_bin, tmp_path / "missing.pt", SHA))
    with pytest.raises(ToolkitError, match="missing.pt: no such file"):
        Study(spec, tmp_path / "out", 1, True)
    assert not (tmp_path / "out").exists()


def test_the_compute_table_sums_by_optimizer_and_says_what_it_did_not_measure():
    """study.md's job-time table from study.json's "compute": hours per optimizer and in all; an evaluation that
    did not time itself makes its sums "n/a", never a smaller number."""
    threads = {"train_threads": 1, "evaluation_threads": [1]}
    runs = {
        "adam/lr1/seed1": {"optimizer": "adam", "train_s": 3600.0, "evaluation_s": 1800.0, "evaluations": 4, **threads},
        "adam/lr1/seed2": {"optimizer": "adam", "train_s": 7200.0, "evaluation_s": 1800.0, "evaluations": 4, **threads},
        "sage/lr2/seed1": {"optimizer": "sage", "train_s": 5400.0, "evaluation_s": None, "evaluations": 3, **threads},
    }
    lines = compute_table({"runs": runs})
    assert lines[:2] == ["", "## Compute"] and lines[-1]  # a section like study.md's others: a blank line, then it
    assert "| adam | 2 | 3.00 | 8 | 1.00 | 4.00 |" in lines
    assert "| sage | 1 | 1.50 | 3 | n/a | n/a |" in lines
    assert "| all | 3 | 4.50 | 11 | n/a | n/a |" in lines
    note = "(trainings with 1 thread each, evaluations with 1 thread each; jobs side by side"
    assert any(note in line and "analyses are not timed" in line for line in lines)


def test_the_compute_table_states_the_thread_counts_the_jobs_recorded():
    """The thread counts come from the runs (timing.json, each evaluation's JSON), not from the machine that writes
    the report: every count seen is named, and runs that did not record theirs are counted, not guessed."""

    def entry(train_threads, evaluation_threads):
        return {"optimizer": "adam", "train_s": 1.0, "evaluation_s": 1.0, "evaluations": 1,
                "train_threads": train_threads, "evaluation_threads": evaluation_threads}  # fmt: skip

    mixed = compute_table({"runs": {"a": entry(1, [1, 8]), "b": entry(8, [8]), "c": entry(None, None)}})
    assert any(
        "(trainings with 1 or 8 threads each (1 of 3 runs did not record it), evaluations with 1 or 8 threads each "
        "(1 of 3 runs did not record it);" in line
        for line in mixed
    ), mixed
    untimed = {"optimizer": "adam", "train_s": 1.0, "evaluation_s": 1.0, "evaluations": 1}  # recorded before threads
    unknown = compute_table({"runs": {"a": untimed}})
    assert any("(trainings' thread counts not recorded, evaluations' thread counts not recorded;" in line
               for line in unknown)  # fmt: skip


@pytest.mark.parametrize("name", ["finetune_de_en_pilot", "finetune_de_en", "finetune_de_en_attn_ffn"])
def test_the_finetuning_specs_compose(name):
    """Every setting of the fine-tuning specs composes as fairseq-hydra-train will compose it."""
    check_configs(load_spec(ROOT / "studies" / f"{name}.yaml"))


def test_the_attn_ffn_spec_reuses_the_main_studys_sage_winner():
    """The attn_ffn spec shares the main spec's out and record, and its baseline is the main study's SAGE winner at
    seeds 1-2: that reuse (not a retraining) needs the same base, data, spec overrides, config and setting overrides;
    sage_attn_ffn differs from it by sage_params=attn_ffn alone."""
    main = load_spec(ROOT / "studies" / "finetune_de_en.yaml")
    attn_ffn = load_spec(ROOT / "studies" / "finetune_de_en_attn_ffn.yaml")
    shared = ["data", "out", "record", "overrides", "base", "jobs", "beam", "tune_seed", "lenpens", "test_subsets",
              "validate_every", "average_last", "extra_tests", "redundancy"]  # fmt: skip
    assert {key: getattr(attn_ffn, key) for key in shared} == {key: getattr(main, key) for key in shared}
    assert attn_ffn.seeds == [1, 2] and set(attn_ffn.seeds) <= set(main.seeds)
    (setting,) = attn_ffn.optimizers["sage"].grid
    assert attn_ffn.optimizers["sage"].config == main.optimizers["sage"].config
    assert attn_ffn.optimizers["sage"].grid[setting] == main.optimizers["sage"].grid[setting]
    ablation = attn_ffn.optimizers["sage_attn_ffn"]
    assert ablation.config == main.optimizers["sage"].config
    assert ablation.grid == {setting: [*main.optimizers["sage"].grid[setting], "optimizer.sage_params=attn_ffn"]}
