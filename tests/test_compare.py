"""The Adam-versus-SAGE runner end to end on a tiny prepared corpus, and its resumption."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from sage_toolkit.fairseq_log import read_log
from sage_toolkit.paths import CONFIG_DIR
from sage_toolkit.runner import (
    commands as compare,  # the command: its main(argv) as `python scripts/compare.py` runs it
)
from sage_toolkit.runner.training import Run, RunSettings


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
    # each config's row names the learning rate it ran with: the one its config file sets (no override here)
    for config in ("demo_adam", "demo_sage"):
        lr = yaml.safe_load((CONFIG_DIR / f"{config}.yaml").read_text())["optimization"]["lr"][0]
        assert [r["lr"] for r in results["runs"] if r["config"] == config] == [lr]
        assert f"| {config} | 1 | {lr:g} |" in table
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


@pytest.mark.parametrize(
    "args, message",
    [
        (["--configs", "no_such_config"], "--configs: no config"),
        ([], "is not a fairseq data-bin"),
        (["--jobs", "0"], "--jobs must be >= 1, got 0"),
        (["--beam", "0"], "--beam must be >= 1, got 0"),
        (["--validate-every", "-200"], "--validate-every must be >= 0, got -200"),
        (["--seeds", "1", "2", "1"], "--seeds: each value once, got 1 2 1"),
        (["--configs", "demo_adam", "demo_adam"], "--configs: each value once"),
        (["PREP"], "--data: cannot read"),  # a prep.json that is not JSON: named before any run starts
    ],
)
def test_runner_refuses_bad_options_before_anything_runs(tmp_path, capsys, args, message):
    data = tmp_path / "bin"
    data.mkdir()
    if "data-bin" not in message:
        (data / "dict.de.txt").write_text("")
    if "PREP" in args:
        args = [a for a in args if a != "PREP"]
        (data / "prep.json").write_text('{"source_lang": ')
    with pytest.raises(SystemExit) as exit_:
        compare.main(["--data", str(data), "--out", str(tmp_path / "o"), *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_log_reader_keeps_one_copy_of_the_lines_fairseq_repeats(tmp_path):
    """fairseq 0.12 adds a log-file handler per progress bar, so epoch k writes each record k times."""
    inner = '[2026-01-01 00:00:0{i}][train_inner][INFO] - {{"epoch": 2, "loss": "5.1", "num_updates": "{u}"}}'
    valid = '[2026-01-01 00:00:09][valid][INFO] - {"epoch": 2, "valid_loss": "4.9", "valid_num_updates": "20"}'
    lines = [inner.format(i=1, u=10), inner.format(i=2, u=20), inner.format(i=2, u=20), valid, valid]
    (tmp_path / "train.log").write_text("\n".join(lines) + "\n")
    log = read_log(tmp_path / "train.log")
    assert [r["num_updates"] for r in log["train_inner"]] == [10.0, 20.0]
    assert [r["valid_num_updates"] for r in log["valid"]] == [20.0]


def _curves(configs, seeds, bleu):
    """Runs as a comparison records them: validation every 100 updates; seed s of config c has loss 10 - c - s at
    every point (so a config's mean, min and max are known exactly), and BLEU 10 * s if measured."""
    return [
        {"config": config, "seed": seed,
         "curve": [{"update": u, "valid_loss": float(10 - c - seed), "valid_bleu": float(10 * seed) if bleu else None}
                   for u in (100, 200, 300)]}
        for c, config in enumerate(configs) for seed in seeds
    ]  # fmt: skip


def test_learning_curves_show_each_config_once_with_its_seeds_band():
    """learning_curves.png: one line and one legend entry per config (the mean over its seeds) with the min-max band,
    not one line per seed (2 configs x 5 seeds made 10 legend rows)."""
    import matplotlib.pyplot as plt

    from sage_toolkit.runner.report import curve_bands, learning_curves_figure

    configs = ["demo_adam", "demo_sage"]
    runs = _curves(configs, [1, 2, 3, 4, 5], bleu=True)
    band = curve_bands(runs, configs, "valid_loss")["demo_sage"]
    assert band == {"update": [100, 200, 300], "mean": [6.0] * 3, "low": [4.0] * 3, "high": [8.0] * 3, "seeds": 5}
    fig = learning_curves_figure(runs, configs)
    try:
        assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["validation loss", "validation BLEU"]
        for ax in fig.axes:
            labels = [text.get_text() for text in ax.get_legend().get_texts()]
            assert labels == ["demo_adam (5 seeds)", "demo_sage (5 seeds)"]
            assert len(ax.lines) == 2 and len(ax.collections) == 2  # a mean line and a band per config
    finally:
        plt.close(fig)


def test_learning_curves_draw_only_what_was_measured():
    """sage-compare --no-valid-bleu: no validation BLEU, so no BLEU panel (it was drawn empty, axes -0.04..0.04)."""
    import matplotlib.pyplot as plt

    from sage_toolkit.runner.report import learning_curves_figure

    fig = learning_curves_figure(_curves(["demo_adam", "demo_sage"], [1], bleu=False), ["demo_adam", "demo_sage"])
    try:
        assert [ax.get_title() for ax in fig.axes] == ["validation loss"]
        assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
            "demo_adam (1 seed)",
            "demo_sage (1 seed)",
        ]
        assert not fig.axes[0].collections  # one seed: no band
    finally:
        plt.close(fig)


def _tiny(demo_bin, out, *extra):
    """One run (demo_adam, seed 1) of 2 updates, greedy test translation: the cheapest full pass of the runner.
    --jobs 2: one thread for the one run (two threads on a busy 2-core machine made generation 6 times slower)."""
    return ["--configs", "demo_adam", "--jobs", "2", "--data", str(demo_bin), "--out", str(out), "--cpu", "--beam", "1",
            "--no-valid-bleu", "optimization.max_update=2", "dataset.max_tokens=1024", "common.log_interval=1",
            *extra]  # fmt: skip


@pytest.mark.slow
def test_a_failing_run_is_reported_with_its_name_log_and_error(demo_bin, tmp_path, capsys):
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as exit_:
        compare.main(_tiny(demo_bin, out, "optimization.lrr=1"))  # a typo in a Hydra override
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    log = out / "demo_adam" / "seed1" / "train.out"
    assert err.startswith(f"sage-compare: error: [demo_adam/seed1] training failed (exit status 1); log: {log}"), err
    assert "Could not override 'optimization.lrr'" in err and "Key 'lrr' not in 'OptimizationConfig'" in err
    assert "Traceback" not in err, "a message, not the runner's traceback"
    assert "UserWarning" not in err, "the end of the error, not the warnings printed at every start"
    assert "Could not override 'optimization.lrr'" in log.read_text()


@pytest.mark.slow
def test_a_finished_training_is_never_trained_further(demo_bin, tmp_path, capsys):
    out = tmp_path / "cmp"
    run = out / "demo_adam" / "seed1"
    # lock files left by a runner that died (its PID is free): taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(dead.stdout)
    run.mkdir(parents=True)
    (run / ".lock").write_text(f"runner {dead}\nchild {dead}\n")
    (out / ".runner.lock").write_text(f"runner {dead}\n")
    first = compare.main(_tiny(demo_bin, out))
    printed = capsys.readouterr().out
    assert f"{run}: took over the lock left by PID {dead} (no longer running)" in printed
    assert first["runs"][0]["updates"] == 2
    checkpoint, log = run / "checkpoint_last.pt", run / "train.log"
    trained = (checkpoint.stat().st_mtime_ns, log.read_text())
    with pytest.raises(SystemExit) as exit_:  # a finished run's test result is not reused for another beam
        compare.main(_tiny(demo_bin, out, "--beam", "2"))
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and f"{run / 'eval.test.json'} was made with beam 1 and length penalty 1.0" in err

    def runner_died_after_the_training():  # fairseq finished, but the runner could neither record it nor evaluate
        (run / "timing.json").write_text(json.dumps({"train_seconds": 1.0}))
        (run / "eval.test.json").unlink(missing_ok=True)

    runner_died_after_the_training()
    again = compare.main(_tiny(demo_bin, out))
    printed = capsys.readouterr().out
    # the old runner resumed from checkpoint_last.pt here, and fairseq ran a third update (updates == 3)
    assert "[demo_adam/seed1] training already complete (fairseq logged the end of its training" in printed
    assert "] training with" not in printed and "(resuming)" not in printed
    assert (checkpoint.stat().st_mtime_ns, log.read_text()) == trained
    assert again["runs"][0]["updates"] == 2 and json.loads((run / "timing.json").read_text())["complete"]

    # killed between its last checkpoint and its last log line: the checkpoint says that the budget is spent
    log.write_text("".join(line for line in trained[1].splitlines(True) if "done training" not in line))
    (run / "timing.json").write_text(json.dumps({"train_seconds": 1.0}))
    Run(_settings(demo_bin, out), "demo_adam", 1).train(1)
    printed = capsys.readouterr().out
    assert "training already complete (checkpoint_last.pt is at update 2 of optimization.max_update=2)" in printed
    assert checkpoint.stat().st_mtime_ns == trained[0]

    # a checkpoint_last.pt cut short (an unpatched fairseq's interrupted copy) beside an intact checkpoint: said, and
    # the intact one, which fairseq resumes from (docs/checkpoints.md), decides; nothing is trained or deleted
    runner_died_after_the_training()
    log.write_text("")
    intact = run / "checkpoint_best.pt"  # the end of the training validated and saved it
    checkpoint.write_bytes(checkpoint.read_bytes()[:4096])
    Run(_settings(demo_bin, out), "demo_adam", 1).train(1)
    printed = capsys.readouterr().out
    assert f"cannot read checkpoint {checkpoint.absolute()} (4,096 bytes): cut short or corrupt" in printed, printed
    assert "training resumes from checkpoint_best.pt (update 2), the newest intact checkpoint" in printed
    assert "training already complete (checkpoint_best.pt is at update 2 of optimization.max_update=2)" in printed
    assert log.read_text() == "" and checkpoint.stat().st_size == 4096 and intact.exists()

    # ... and with no intact one: a clear error that names it and the remedy, no training
    intact.unlink()
    (run / "timing.json").write_text(json.dumps({"train_seconds": 1.0}))
    with pytest.raises(SystemExit) as exit_:
        compare.main(_tiny(demo_bin, out))
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and f"cannot read checkpoint {checkpoint.absolute()}" in err, err
    assert "holds no other intact checkpoint to resume from: move the folder aside" in err and "delete" not in err
    assert log.read_text() == ""


def _settings(demo_bin, out):
    """The run settings that compare.main makes of _tiny's arguments (what Run reads)."""
    return RunSettings(data=demo_bin.absolute(), out=out.absolute(), valid_bleu=False, validate_every=0,
                       overrides=["optimization.max_update=2", "dataset.max_tokens=1024", "common.log_interval=1"],
                       verbose=False, beam=1, lenpen=1.0, cpu=True)  # fmt: skip
