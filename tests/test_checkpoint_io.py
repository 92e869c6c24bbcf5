"""sage_toolkit.checkpoint_io, the checkpoint loading, writing and resume point that the toolkit and the patched
fairseq share (docs/checkpoints.md), through its public functions. The command lines: test_checkpoint_safety.py and
test_interrupted_saves.py."""

from __future__ import annotations

import argparse
import fractions
import os

import numpy as np
import pytest
import torch

from sage_toolkit import checkpoint_io
from sage_toolkit.checkpoint_io import (
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    copy_checkpoint_file,
    load_checkpoint_file,
    newest_intact_checkpoint,
    resume_point,
    save_checkpoint_file,
)
from sage_toolkit.errors import ToolkitError


class RunsCode:
    """What a malicious checkpoint pickles: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious(path, marker, **save_options):
    torch.save({"model": {"w": torch.zeros(2)}, "payload": RunsCode(marker)}, path, **save_options)
    return path


def training_state(updates: int) -> dict:
    """What fairseq's checkpoints hold, in small: a Namespace config, int64 numpy metrics, tensors, the history."""
    return {
        "args": argparse.Namespace(arch="transformer", lr=[0.001]),
        "model": {"w": torch.full((3,), float(updates))},
        "optimizer_history": [{"num_updates": updates, "lr_scheduler_state": {"best": 1.5}}],
        "extra_state": {"metrics": {"valid": [(0, "_bleu_counts", "AverageMeter", {"val": np.arange(4)})]}},
    }


@pytest.fixture(autouse=True)
def untrusted(monkeypatch):
    monkeypatch.delenv(checkpoint_io.TRUST_VARIABLE, raising=False)


@pytest.mark.parametrize("serialization", ["zip", "legacy"])
def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(serialization, tmp_path):
    marker = tmp_path / "ran"
    options = {} if serialization == "zip" else {"_use_new_zipfile_serialization": False}
    path = malicious(tmp_path / "evil.pt", marker, **options)
    with pytest.raises(UnsafeCheckpointError) as refused:
        load_checkpoint_file(path)
    message = str(refused.value)
    assert f"refused to load checkpoint {path}: its pickle needs posix.system" in message
    assert "SAGE_TRUST_CHECKPOINTS=1" in message and isinstance(refused.value, ToolkitError)
    assert not marker.exists()


def test_the_opt_in_loads_a_trusted_file_in_full(tmp_path, monkeypatch):
    path = tmp_path / "trusted.pt"
    torch.save({"model": {}, "ratio": fractions.Fraction(1, 3)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"needs fractions\.Fraction"):
        load_checkpoint_file(path)
    monkeypatch.setenv(checkpoint_io.TRUST_VARIABLE, "1")
    assert load_checkpoint_file(path)["ratio"] == fractions.Fraction(1, 3)
    for value in ("yes", "true", "2"):  # one spelling: another value is refused, never read as no (or as yes)
        monkeypatch.setenv(checkpoint_io.TRUST_VARIABLE, value)
        with pytest.raises(ToolkitError, match=f"SAGE_TRUST_CHECKPOINTS must be 1 .* got '{value}'"):
            load_checkpoint_file(path)
    monkeypatch.setenv(checkpoint_io.TRUST_VARIABLE, "0")
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint_file(path)


@pytest.mark.parametrize("serialization", ["zip", "legacy"])
def test_what_fairseq_checkpoints_hold_loads(serialization, tmp_path):
    # real checkpoints of every kind: test_checkpoint_safety.py; here each allowed type, in both torch formats
    path = tmp_path / "state.pt"
    options = {} if serialization == "zip" else {"_use_new_zipfile_serialization": False}
    torch.save(training_state(7), path, **options)
    loaded = load_checkpoint_file(path)
    assert loaded["args"] == argparse.Namespace(arch="transformer", lr=[0.001])
    assert np.array_equal(loaded["extra_state"]["metrics"]["valid"][0][3]["val"], np.arange(4))
    assert torch.equal(loaded["model"]["w"], torch.full((3,), 7.0))


def test_unreadable_files_are_named_with_what_is_wrong(tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save(training_state(1), whole)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "cut.pt").write_bytes(whole.read_bytes()[:300])
    (tmp_path / "page.pt").write_text("<html>not found</html>")
    cases = {
        "missing.pt": f"checkpoint {tmp_path / 'missing.pt'} does not exist",
        "empty.pt": f"cannot read checkpoint {tmp_path / 'empty.pt'}: it is empty (0 bytes)",
        "cut.pt": f"cannot read checkpoint {tmp_path / 'cut.pt'} (300 bytes): cut short or corrupt (RuntimeError: ",
        "page.pt": f"cannot read checkpoint {tmp_path / 'page.pt'} (22 bytes): not a torch checkpoint, or a damaged",
    }
    for name, message in cases.items():
        with pytest.raises(UnreadableCheckpointError) as unreadable:
            load_checkpoint_file(tmp_path / name)
        assert str(unreadable.value).startswith(message), str(unreadable.value)
        assert "\n" not in str(unreadable.value)


def test_saves_and_copies_replace_the_file_whole_or_not_at_all(tmp_path, monkeypatch):
    path, copy = tmp_path / "checkpoint_1_2.pt", tmp_path / "checkpoint_last.pt"
    save_checkpoint_file(training_state(2), path)
    copy_checkpoint_file(path, copy)
    assert copy.read_bytes() == path.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == [
        path.name,
        copy.name,
    ]

    def fails_midway(source, destination):
        with open(destination, "wb") as f:
            f.write(b"PK\x03\x04 half")
        raise OSError("disk full")

    monkeypatch.setattr("shutil.copyfile", fails_midway)
    before = copy.read_bytes()
    with pytest.raises(OSError, match="disk full"):
        copy_checkpoint_file(path, copy)
    assert copy.read_bytes() == before and not (tmp_path / "checkpoint_last.pt.tmp").exists()


def _folder(tmp_path):
    save_checkpoint_file(training_state(4), tmp_path / "checkpoint_1_4.pt")
    save_checkpoint_file(training_state(8), tmp_path / "checkpoint1.pt")
    save_checkpoint_file(training_state(8), tmp_path / "checkpoint_best.pt")
    save_checkpoint_file(training_state(99), tmp_path / "checkpoint.avg2.pt")  # an average: never resumed from
    (tmp_path / "checkpoint_2_12.pt").write_bytes(b"")  # newer, but empty
    malicious(tmp_path / "checkpoint_2_16.pt", tmp_path / "ran")  # newer, but unsafe: never chosen, never run
    last = tmp_path / "checkpoint_last.pt"
    last.write_bytes((tmp_path / "checkpoint1.pt").read_bytes()[:500])  # cut short
    return last


def test_an_unreadable_checkpoint_last_resumes_from_the_newest_intact_checkpoint(tmp_path, caplog):
    last = _folder(tmp_path)
    assert newest_intact_checkpoint(tmp_path, exclude=[last]) == (tmp_path / "checkpoint1.pt", 8)
    with caplog.at_level("WARNING"):
        assert resume_point(last, fallback=True) == tmp_path / "checkpoint1.pt"
    assert f"cannot read checkpoint {last} (500 bytes): cut short or corrupt" in caplog.text
    assert f"resuming from {tmp_path / 'checkpoint1.pt'} (update 8), the newest intact checkpoint" in caplog.text
    assert not (tmp_path / "ran").exists()


def test_an_unreadable_restore_file_is_refused_with_the_remedy(tmp_path):
    last = _folder(tmp_path)
    with pytest.raises(UnreadableCheckpointError) as refused:
        resume_point(last, fallback=False)
    message = str(refused.value)
    assert message.startswith(f"cannot read checkpoint {last} (500 bytes): cut short or corrupt")
    assert f"is checkpoint1.pt (update 8): resume from it with --restore-file {tmp_path / 'checkpoint1.pt'}" in message
    for name in ("checkpoint_1_4.pt", "checkpoint1.pt", "checkpoint_best.pt"):
        (tmp_path / name).unlink()
    with pytest.raises(UnreadableCheckpointError, match="holds no other intact checkpoint to resume from: move"):
        resume_point(last, fallback=True)


def test_a_readable_or_missing_resume_point_is_kept_and_an_unsafe_one_refused(tmp_path):
    save_checkpoint_file(training_state(3), tmp_path / "checkpoint_last.pt")
    assert resume_point(tmp_path / "checkpoint_last.pt", fallback=True) == tmp_path / "checkpoint_last.pt"
    assert resume_point(tmp_path / "none.pt", fallback=False) == tmp_path / "none.pt"
    evil = malicious(tmp_path / "checkpoint_last.pt", tmp_path / "ran")
    with pytest.raises(UnsafeCheckpointError):
        resume_point(evil, fallback=True)
    assert not (tmp_path / "ran").exists()
