"""A SIGTERM during a save (the runner's stop, a cluster's preemption) never costs the run (docs/checkpoints.md,
"Interrupted saves and resume").

fairseq-train is killed by SIGTERM from inside the write of each file a save writes (the first file, written by
torch.save, and its copies to checkpoint_best.pt, checkpoint.best_*.pt, checkpoint_last.pt; at an update interval and
at the end of an epoch), then at random moments, and resumed with the same command each time; a checkpoint_last.pt cut
short as an unpatched fairseq's interrupted copy left it is resumed past. After every kill each checkpoint in the folder
loads, and the run ends with exactly the state of an uninterrupted one.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from sage_toolkit.checkpoint_io import load_checkpoint_file
from tests.fairseq_utils import ROOT, assert_same_training_state, cpu_env, run_cli, train_args

pytestmark = pytest.mark.slow

MAX_UPDATE = 12  # an epoch is 8 updates: saves at updates 3 and 6, at the end of epoch 1 (8), at 9 and 12

# Loaded (by the `sitecustomize` import of every Python start) into the killed fairseq-train: its N-th write of a
# file whose name matches REGEX writes half of the file, then the process sends itself SIGTERM (default action: it
# dies on the spot, as at a preemption). The writes: torch.save (the first file of a save; an unpatched fairseq wrote
# it to NAME.tmp too) and shutil.copyfile (the copies; an unpatched fairseq copied straight onto NAME).
KILL_HOOK = """
import io, os, re, shutil, signal, time

_pattern, _nth = os.environ["KILL_WHILE_WRITING"].rsplit(":", 1)
_writes = []


def _aimed_at(destination):
    name = os.path.basename(os.fspath(getattr(destination, "name", destination)))
    if re.fullmatch(_pattern, name.removesuffix(".tmp")):
        _writes.append(name)
        return len(_writes) == int(_nth)
    return False


def _die_half_written(data, destination):
    f = destination if hasattr(destination, "write") else open(destination, "wb")
    f.write(data[: len(data) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)


_copyfile = shutil.copyfile


def copyfile(source, destination, *args, **kwargs):
    if _aimed_at(destination):
        with open(source, "rb") as f:
            _die_half_written(f.read(), destination)
    return _copyfile(source, destination, *args, **kwargs)


shutil.copyfile = copyfile

import torch

_save = torch.save


def save(obj, f, *args, **kwargs):
    if _aimed_at(f):
        buffer = io.BytesIO()
        _save(obj, buffer, *args, **kwargs)
        _die_half_written(buffer.getvalue(), f)
    return _save(obj, f, *args, **kwargs)


torch.save = save
"""

# (the file whose write is interrupted, which of its writes in that process), one process after the other, each
# resuming where the one before left the save dir
KILLS = [
    (r"checkpoint_best\.pt", 2),  # the copy to checkpoint_best.pt at update 6 (resumes from update 3)
    (r"checkpoint\.best_.+\.pt", 1),  # the copy to the kept best one at update 6 (from 3)
    (r"checkpoint_last\.pt", 1),  # the copy to checkpoint_last.pt at update 6 (from 3; left empty by the old copy)
    (r"checkpoint\d+\.pt", 1),  # the first file of the end-of-epoch save at 8 (from 3)
    (r"checkpoint_\d+_\d+\.pt", 1),  # the first file of the save at 9 (from 6)
]


def _args(data_bin, save, max_update=MAX_UPDATE):
    """The tiny run with validation, every checkpoint kind (per epoch, per update interval, best, kept best, last)."""
    saves = ["--save-interval-updates", "3", "--validate-interval-updates", "3", "--keep-best-checkpoints", "1"]
    args = train_args(data_bin, save, ["--optimizer", "adam_sage"], max_update, saves)
    return [str(a) for a in args if a not in ("--no-epoch-checkpoints", "--disable-validation")]


def _train(args, env=None) -> subprocess.Popen:
    command = [sys.executable, "-m", "fairseq_cli.train", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**cpu_env(), **(env or {})})  # fmt: skip


def _every_checkpoint_loads(save) -> None:
    for path in sorted(save.glob("*.pt")):
        load_checkpoint_file(path, mmap=True)  # an UnreadableCheckpointError names it


def _updates(save) -> int:
    last = save / "checkpoint_last.pt"
    return load_checkpoint_file(last)["optimizer_history"][-1]["num_updates"] if last.exists() else 0


@pytest.fixture(scope="module")
def uninterrupted(tiny_data_bin, tmp_path_factory):
    save = tmp_path_factory.mktemp("uninterrupted") / "save"
    run_cli("train", _args(tiny_data_bin, save))
    return load_checkpoint_file(save / "checkpoint_last.pt")


def test_sigterm_inside_each_write_of_a_save_then_resume_ends_as_an_uninterrupted_run(uninterrupted, tiny_data_bin,
                                                                                       tmp_path):  # fmt: skip
    save = tmp_path / "save"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    for pattern, nth in KILLS:
        env = {"KILL_WHILE_WRITING": f"{pattern}:{nth}", "PYTHONPATH": str(hook)}
        proc = _train(_args(tiny_data_bin, save), env)
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == -signal.SIGTERM, f"not killed while writing {pattern} ({nth}):\n{output[-3000:]}"
        _every_checkpoint_loads(save)
    assert _updates(save) == 8, "the last kill fell in the save at update 9: checkpoint_last.pt is the one of 8"

    # an unpatched fairseq's interrupted copy left checkpoint_last.pt cut short: said, and resumed past (from the
    # newest intact checkpoint, checkpoint1.pt of update 8) with the same command
    last = save / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    proc = run_cli("train", _args(tiny_data_bin, save))
    output = proc.stdout + proc.stderr
    assert f"cannot read checkpoint {last} (" in output and "): cut short or corrupt" in output, output[-3000:]
    assert f"resuming from {save / 'checkpoint1.pt'} (update 8), the newest intact checkpoint" in output
    assert "Traceback" not in output
    assert_same_training_state(uninterrupted, load_checkpoint_file(last))

    # given as --restore-file (not fairseq's default, the save dir's checkpoint_last.pt), such a file is refused with
    # the newest intact checkpoint of its folder named as the remedy; nothing is trained
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    restore, intact = elsewhere / "model.pt", elsewhere / "checkpoint_1_6.pt"
    restore.write_bytes(last.read_bytes()[:5000])
    shutil.copyfile(save / "checkpoint_1_6.pt", intact)
    proc = run_cli("train", [*_args(tiny_data_bin, tmp_path / "other"), "--restore-file", restore], check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in output, output[-3000:]
    line = output.strip().splitlines()[-1]
    assert line.startswith(f"fairseq-train: error: cannot read checkpoint {restore} (5,000 bytes): cut short"), line
    assert f"is checkpoint_1_6.pt (update 6): resume from it with --restore-file {intact}" in line, line
    assert not any((tmp_path / "other").glob("*.pt"))


def test_sigterm_at_random_moments_then_resume_ends_as_an_uninterrupted_run(uninterrupted, tiny_data_bin, tmp_path):
    save = tmp_path / "save"
    delays = [round(random.uniform(2.0, 12.0), 1) for _ in range(2)]
    for delay in delays:  # a fairseq start takes seconds: a kill may fall in the start, in training or in a save
        if _updates(save) == MAX_UPDATE:
            break  # finished before a signal: fairseq resuming a finished run trains one update more
        proc = _train(_args(tiny_data_bin, save))
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode in (0, -signal.SIGTERM), f"SIGTERM after {delay} s:\n{output[-3000:]}"
        _every_checkpoint_loads(save)
    if _updates(save) < MAX_UPDATE:
        run_cli("train", _args(tiny_data_bin, save))
    assert_same_training_state(uninterrupted, load_checkpoint_file(save / "checkpoint_last.pt"))
