"""The fine-tuning study's base model (sage_toolkit.study.base_model): a trained checkpoint reduced to fp16 weights,
its sha256, and fairseq-train's finetune_from_model starting from it (fresh optimizer and schedule, its weights)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch

from sage_toolkit.study import base_model
from tests.fairseq_utils import ROOT, run_cli, train_args, train_log

pytestmark = pytest.mark.slow


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def trained(tiny_data_bin, tmp_path_factory):
    save = tmp_path_factory.mktemp("base")
    run_cli("train", train_args(tiny_data_bin, save, ["--optimizer", "adam"], 6))
    return save / "checkpoint_last.pt"


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The two fp16 tensors hold the same bits. Not torch.equal: fairseq's positional-embedding _float_tensor buffer is
    torch.empty, whatever memory held, NaN at times, which torch.equal calls unequal to itself."""
    return torch.equal(a.view(torch.int16), b.view(torch.int16))


def test_export_keeps_the_weights_in_fp16_and_nothing_of_the_training(trained, tmp_path):
    out = tmp_path / "base" / "checkpoint_base.pt"
    proc = subprocess.run([sys.executable, "-m", "sage_toolkit.study.base_model", str(trained), str(out)],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert f"sha256 {digest}" in proc.stdout
    source, base = load(trained), load(out)
    assert base["model"].keys() == source["model"].keys()
    for name, tensor in source["model"].items():
        assert base["model"][name].dtype == torch.float16
        assert same_bits(base["model"][name], tensor.half()), name
    assert base["last_optimizer_state"] is None and base["optimizer_history"][-1]["num_updates"] == 0
    assert base["extra_state"] == {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "version": 2}}
    assert base["sage_base_model"]["num_updates"] == 6 and base["sage_base_model"]["optimizer"] == "FairseqAdam"
    assert list(tmp_path.joinpath("base").iterdir()) == [out]  # no temporary file left
    # exporting again gives the same tensors (not the same bytes: torch.save writes a random serialization id, so a
    # study declares the sha256 of the one committed file)
    assert base_model.export_base(trained, tmp_path / "again.pt") == base_model.sha256_of(tmp_path / "again.pt")
    again = load(tmp_path / "again.pt")["model"]
    assert all(same_bits(again[name], tensor) for name, tensor in base["model"].items())


def test_fine_tuning_starts_from_the_base(trained, tiny_data_bin, tmp_path):
    """fairseq-train --finetune-from-model BASE: the first update's loss is the base's (not a fresh model's), the
    optimizer and schedule start fresh (update 1, warmup lr), and a resumed run continues from its own checkpoint."""
    base = tmp_path / "base.pt"
    base_model.export_base(trained, base)
    common = ["--optimizer", "adam_sage", "--sage-impl", "single_tensor"]
    fresh = train_log(run_cli("train", train_args(tiny_data_bin, tmp_path / "fresh", common, 1)))
    tuned = train_log(run_cli("train", [*train_args(tiny_data_bin, tmp_path / "ft", common, 2),
                                        "--finetune-from-model", base]))  # fmt: skip
    assert [r["num_updates"] for r in tuned] == [1, 2] and tuned[0]["lr"] == fresh[0]["lr"]
    assert tuned[0]["loss"] < fresh[0]["loss"] - 0.5  # six updates of training behind it vs a random model
    state = load(tmp_path / "ft" / "checkpoint_last.pt")
    assert state["optimizer_history"][-1]["num_updates"] == 2
    assert state["optimizer_history"][-1]["optimizer_name"] == "FairseqAdamSAGE"
    resumed = run_cli("train", [*train_args(tiny_data_bin, tmp_path / "ft", common, 3), "--finetune-from-model", base])
    assert [r["num_updates"] for r in train_log(resumed)] == [3]
