"""Loading checkpoints safely, through the commands (docs/checkpoints.md, "Loading checkpoints safely").

A checkpoint whose pickle would run code (os.system, writing a marker file) runs nothing and is refused with one line
naming the file, the global and the opt-in, in every command that loads one: the toolkit's and fairseq's own
(``fairseq-train --restore-file``, ``fairseq-generate --path``, without ``--user-dir``). A cut-short checkpoint gives
one line that names it where fairseq loads it. The checkpoints this project's commands write, of every kind, still load
(and load the same as in full); a file the user trusts loads with ``SAGE_TRUST_CHECKPOINTS=1``.
"""

from __future__ import annotations

import argparse
import fractions
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sage_toolkit.checkpoint_io import load_checkpoint_file
from sage_toolkit.evaluation import commands as evaluation_commands
from sage_toolkit.paths import CONFIG_DIR
from sage_toolkit.redundancy import command as redundancy_command
from sage_toolkit.token_loss import command as token_loss_command
from tests.fairseq_utils import ROOT, TINY_MODEL, cpu_env, run_cli, train_args
from tests.test_checkpoint_io import malicious

pytestmark = pytest.mark.slow

EVAL_BLEU = ["--eval-bleu", "--eval-bleu-args", '{"beam": 1, "max_len_a": 1.2, "max_len_b": 10}',
             "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric"]  # fmt: skip
# --fp16 needs CUDA in fairseq 0.12.2; --memory-efficient-fp16 and --amp run on the CPU (their checkpoints add a
# float loss scale to the optimizer state, as --fp16's do)
CLI_RUNS = {
    "adam_sage-sage_linear-amp-eval_bleu": (
        ["--optimizer", "adam_sage"],
        ["--lr-scheduler", "sage_linear", "--amp", *EVAL_BLEU],
    ),  # fmt: skip
    "adamax_sage-sage_cosine-memory_efficient_fp16": (
        ["--optimizer", "adamax_sage"],
        ["--lr-scheduler", "sage_cosine", "--memory-efficient-fp16"],
    ),
    "adam-inverse_sqrt": (["--optimizer", "adam"], []),
}


def _train(data_bin, save, optimizer, extra):
    """Three updates, validated and saved at the third (numbered, best, kept best and last checkpoints)."""
    saves = ["--save-interval-updates", "3", "--validate-interval-updates", "3", "--keep-best-checkpoints", "1"]
    args = train_args(data_bin, save, optimizer, 3, [*saves, "--warmup-updates", "2", *extra])
    run_cli("train", [a for a in args if a != "--disable-validation"])


def _hydra_train(data_bin, save):
    """fairseq-hydra-train with the project's demo_sage config (sage_inverse_sqrt) and the runner's --valid-bleu."""
    overrides = [f"task.data={data_bin}", f"checkpoint.save_dir={save}", "optimization.max_update=3",
                 "dataset.max_tokens=400", "dataset.validate_interval_updates=3", "dataset.num_workers=0",
                 "lr_scheduler.warmup_updates=2", "checkpoint.save_interval_updates=3",
                 "checkpoint.keep_best_checkpoints=1",
                 "model.encoder.layers=1", "model.decoder.layers=1", "model.encoder.embed_dim=32",
                 "model.decoder.embed_dim=32", "++task.eval_bleu=true", "++task.eval_bleu_detok=space",
                 "++task.eval_bleu_args='{\"beam\": 1, \"max_len_a\": 1.2, \"max_len_b\": 10}'"]  # fmt: skip
    cmd = [sys.executable, "-m", "fairseq_cli.hydra_train", "--config-dir", CONFIG_DIR, "--config-name", "demo_sage"]
    proc = subprocess.run([*map(str, cmd), *overrides], capture_output=True, text=True, env=cpu_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _args_style(from_checkpoint: Path, data_bin, out: Path) -> None:
    """A fairseq < 0.10 style checkpoint: its configuration is the training's argparse.Namespace (``args``), no
    ``cfg``; in torch's zip format and in its format before 1.6."""
    from fairseq import options

    argv = [str(data_bin), "--task", "translation", *TINY_MODEL, "--optimizer", "adam", "--criterion",
            "label_smoothed_cross_entropy"]  # fmt: skip
    state = torch.load(from_checkpoint, map_location="cpu", weights_only=False)  # the test's own file
    state["args"], state["cfg"] = options.parse_args_and_arch(options.get_training_parser(), argv), None
    torch.save(state, out / "args_style.pt")
    torch.save(state, out / "args_style_torch1.5_format.pt", _use_new_zipfile_serialization=False)


@pytest.fixture(scope="module")
def kinds(tiny_data_bin, tmp_path_factory) -> dict[str, Path]:
    """{kind: save dir or folder}: real checkpoints written by this project's commands."""
    root = tmp_path_factory.mktemp("kinds")
    made = {}
    for name, (optimizer, extra) in CLI_RUNS.items():
        _train(tiny_data_bin, root / name, optimizer, extra)
        made[name] = root / name
    _hydra_train(tiny_data_bin, root / "hydra-demo_sage-eval_bleu")
    made["hydra-demo_sage-eval_bleu"] = root / "hydra-demo_sage-eval_bleu"
    made["averaged"] = root / "averaged"
    for source in ("adam_sage-sage_linear-amp-eval_bleu", "hydra-demo_sage-eval_bleu"):
        inputs = [made[source] / "checkpoint_1_3.pt", made[source] / "checkpoint_last.pt"]
        for drop in ([], ["--drop-optimizer-state"]):
            output = made["averaged"] / f"{source}{''.join(drop)}.pt"
            assert evaluation_commands.average_checkpoints_main(["--inputs", *map(str, inputs), "--output",
                                                                 str(output), *drop]) == 0  # fmt: skip
    made["args_style"] = root / "args_style"
    made["args_style"].mkdir()
    _args_style(made["adam-inverse_sqrt"] / "checkpoint_last.pt", tiny_data_bin, made["args_style"])
    return made


def _same(a, b, where="") -> None:
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, argparse.Namespace):
        _same(vars(a), vars(b), where)
    elif torch.is_tensor(a):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=where)  # exactly (NaN buffers too)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    else:
        assert a == b or (a != a and b != b), where  # NaN == NaN here


def _holds(obj, cls) -> bool:
    if isinstance(obj, cls):
        return True
    if isinstance(obj, dict):
        return any(_holds(v, cls) for v in obj.values())
    return isinstance(obj, list | tuple) and any(_holds(v, cls) for v in obj)


def test_every_kind_of_checkpoint_written_here_loads_as_it_does_in_full(kinds):
    from fairseq import checkpoint_utils

    files = sorted(p for folder in kinds.values() for p in folder.glob("*.pt"))
    # per training: checkpoint_1_3, _best, .best_*, _last; 2 x 2 averages; an args-style checkpoint in 2 formats
    assert len(files) == 4 * (len(CLI_RUNS) + 1) + 4 + 2
    with_numpy = 0
    for path in files:
        safe = load_checkpoint_file(path)
        _same(safe, torch.load(path, map_location="cpu", weights_only=False), str(path))
        with_numpy += _holds(safe, np.ndarray)
        checkpoint_utils.load_checkpoint_to_cpu(str(path))  # fairseq's own load (generation, training, analyses)
    # the --eval-bleu trainings' 4 + 4 and their 4 averages: the allow-list's numpy part is exercised
    assert with_numpy == 12, with_numpy
    assert sum(_holds(load_checkpoint_file(p), argparse.Namespace) for p in files) >= 12  # fairseq-train's cfg.model


def _command_lines(data_bin, checkpoint, out) -> dict:
    """The commands that load a checkpoint: the toolkit's (in-process: their main(argv), as their console scripts
    run it) and fairseq's own, plain (no --user-dir), each a process."""
    train = [data_bin, "--task", "translation", *TINY_MODEL, "--optimizer", "adam", "--lr", "1e-3", "--max-tokens",
             "400", "--max-update", "2", "--cpu", "--save-dir", out / "save", "--restore-file", checkpoint,
             "--no-progress-bar"]  # fmt: skip
    return {
        "sage-average-checkpoints": (evaluation_commands.average_checkpoints_main,
                                     ["--inputs", checkpoint, "--output", out / "avg.pt"]),
        "sage-evaluate": (evaluation_commands.evaluate_main,
                          ["--data-bin", data_bin, "--checkpoint", checkpoint, "--cpu", "--out", out / "eval.json"]),
        "sage-analyze-redundancy": (redundancy_command.main,
                                    ["--data-bin", data_bin, "--checkpoints", f"x={checkpoint}",
                                     "--out", out / "redundancy", "--cpu", "--no-bleu"]),
        "sage-analyze-token-loss": (token_loss_command.main,
                                    ["--data-bin", data_bin, "--checkpoints", f"x={checkpoint}",
                                     "--out", out / "token_loss", "--cpu"]),
        "fairseq-train": ("train", train),
        "fairseq-generate": ("generate", [data_bin, "--path", checkpoint, "--cpu"]),
    }  # fmt: skip


def _run(command, argv, capfd) -> tuple[int, str]:
    """(exit status, everything the command printed)."""
    argv = [str(a) for a in argv]
    if isinstance(command, str):
        proc = run_cli(command, argv, check=False, timeout=120)
        return proc.returncode, proc.stdout + proc.stderr
    capfd.readouterr()
    try:
        status = command(argv)
    except SystemExit as exit_:
        status = exit_.code
    out, err = capfd.readouterr()
    return status, out + err


def _error_line(output: str, needle: str) -> str:
    lines = [line for line in output.splitlines() if needle in line]
    assert lines, output[-3000:]
    return lines[0]


COMMANDS = list(_command_lines("d", "c", Path("o")))


@pytest.mark.parametrize("name", COMMANDS)
def test_a_checkpoint_whose_pickle_runs_code_runs_nothing_and_is_refused(name, tiny_data_bin, tmp_path, capfd):
    marker = tmp_path / "code-ran"
    evil = malicious(tmp_path / "checkpoint_best.pt", marker)
    command, argv = _command_lines(tiny_data_bin, evil, tmp_path)[name]
    try:
        status, output = _run(command, argv, capfd)
    finally:  # whatever the command did after loading it
        assert not marker.exists(), f"{name} ran the checkpoint's code"
    assert status == 1, output[-3000:]
    line = _error_line(output, f"refused to load checkpoint {evil}: its pickle needs posix.system")
    prog = name  # evaluate reads the checkpoint itself (its dictionaries are checked) before fairseq-generate would
    assert line.startswith(f"{prog}: error: ") and "set SAGE_TRUST_CHECKPOINTS=1 in the environment" in line, line
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.parametrize(
    "name", ["sage-analyze-redundancy", "sage-analyze-token-loss", "fairseq-train", "fairseq-generate"]
)
def test_a_cut_short_checkpoint_where_fairseq_loads_it_is_one_line_naming_it(name, kinds, tiny_data_bin, tmp_path,
                                                                              capfd):  # fmt: skip
    cut = tmp_path / "cut" / "model.pt"  # alone in its folder: nothing to resume from instead
    cut.parent.mkdir()
    cut.write_bytes((kinds["adam-inverse_sqrt"] / "checkpoint_last.pt").read_bytes()[:10_000])
    command, argv = _command_lines(tiny_data_bin, cut, tmp_path)[name]
    status, output = _run(command, argv, capfd)
    assert status == 1, output[-3000:]
    line = _error_line(output, f"cannot read checkpoint {cut} (10,000 bytes): cut short or corrupt")
    assert line.startswith(f"{name}: error: "), line
    assert "Traceback" not in output, output[-3000:]


def test_the_opt_in_loads_a_file_the_user_trusts_in_fairseq_and_the_toolkit(kinds, tiny_data_bin, tmp_path, capfd,
                                                                             monkeypatch):  # fmt: skip
    trusted = tmp_path / "trusted.pt"
    state = torch.load(kinds["adam-inverse_sqrt"] / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    state["extra_state"]["note"] = fractions.Fraction(1, 3)  # harmless, but outside the allow-list
    torch.save(state, trusted)
    generate = ["generate", [tiny_data_bin, "--path", trusted, "--cpu", "--beam", "1", "--max-len-b", "5"]]
    status, output = _run(*generate, capfd)
    assert status == 1 and "its pickle needs fractions.Fraction" in _error_line(output, "refused to load")
    monkeypatch.setenv("SAGE_TRUST_CHECKPOINTS", "1")  # the fairseq process inherits it
    status, output = _run(*generate, capfd)
    assert status == 0 and "H-0\t" in output, output[-3000:]
    assert f"loading {trusted} in full (SAGE_TRUST_CHECKPOINTS=1)" in output
    out = tmp_path / "avg.pt"
    status, _ = _run(evaluation_commands.average_checkpoints_main, ["--inputs", trusted, "--output", out], capfd)
    assert status == 0 and torch.load(out, weights_only=False)["extra_state"]["note"] == fractions.Fraction(1, 3)


def test_the_restore_file_of_a_resume_in_plain_fairseq_loads(kinds, tiny_data_bin, tmp_path):
    """fairseq-train --restore-file with an old args-style checkpoint (and the allow-list's types) resumes."""
    save = tmp_path / "save"
    shutil.copytree(kinds["args_style"], save)
    os.replace(save / "args_style_torch1.5_format.pt", save / "checkpoint_last.pt")
    args = [tiny_data_bin, "--task", "translation", *TINY_MODEL, "--optimizer", "adam", "--lr", "1e-3", "--max-tokens",
            "400", "--max-update", "4", "--cpu", "--save-dir", save, "--no-progress-bar", "--criterion",
            "label_smoothed_cross_entropy", "--disable-validation"]  # fmt: skip
    proc = run_cli("train", args)
    assert f"Loaded checkpoint {save / 'checkpoint_last.pt'} (epoch 1 @ 3 updates)" in proc.stdout + proc.stderr
    assert load_checkpoint_file(save / "checkpoint_last.pt")["optimizer_history"][-1]["num_updates"] == 4
