"""Data-parallel training with SAGE: 2 CPU processes (gloo) equal 1 process with --update-freq 2.

fairseq's `pytorch_ddp` backend passes GPU device ids to DistributedDataParallel and cannot run on CPU; its
`legacy_ddp` backend (fairseq's own gradient all-reduce) can. The optimizer sees the same all-reduced gradient under
either, so the CPU test uses legacy_ddp; GPU users keep the default.
"""

from __future__ import annotations

import pytest
import torch

from tests.fairseq_utils import run_cli, run_torchrun, train_args, train_log

pytestmark = pytest.mark.slow

# no dropout: its random masks would differ between two processes and one process doing two batches in a row
COMMON = ["--dropout", "0", "--ddp-backend", "legacy_ddp"]
SAGE = ["--optimizer", "adam_sage", "--sage-params", "attn_ffn", "--weight-decay", "0.01"]
UPDATES = 8


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def single(tiny_data_bin, tmp_path_factory):
    """The reference: one process, two batches per update."""
    save = tmp_path_factory.mktemp("single")
    run = run_cli("train", train_args(tiny_data_bin, save, SAGE, UPDATES, [*COMMON, "--update-freq", "2"]))
    return train_log(run), _load(save / "checkpoint_last.pt")


def _assert_same_training(single, multi):
    (log_a, ckpt_a), (log_b, ckpt_b) = single, multi
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]  # logged to 3 decimals
    assert len(log_a) == UPDATES
    for key, value in ckpt_a["model"].items():
        if value.is_floating_point() and not key.endswith("_float_tensor"):
            torch.testing.assert_close(ckpt_b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    state_a, state_b = ckpt_a["last_optimizer_state"], ckpt_b["last_optimizer_state"]
    assert [g["sage"] for g in state_a["param_groups"]] == [g["sage"] for g in state_b["param_groups"]]
    # fairseq's all-reduce gives every tensor a gradient, zeros for the encoder's unused BetterTransformer weight
    # copies that get none in a single process: they gain a state of zeros there, and nothing else differs
    extra = state_b["state"].keys() - state_a["state"].keys()
    assert state_a["state"].keys() <= state_b["state"].keys()
    assert all(not state_b["state"][i]["exp_avg"].any() for i in extra)
    sens = 0
    for index, entry in state_a["state"].items():
        for name, value in entry.items():
            torch.testing.assert_close(state_b["state"][index][name], value, rtol=1e-5, atol=1e-7, msg=(index, name))
        sens += "exp_avg_sens" in entry
    assert sens > 0, "the SAGE state must be among what is compared"


def test_two_processes_equal_one_process_with_update_freq(single, tiny_data_bin, tmp_path):
    multi_run = run_torchrun(2, train_args(tiny_data_bin, tmp_path / "ddp", SAGE, UPDATES, COMMON))
    _assert_same_training(single, (train_log(multi_run), _load(tmp_path / "ddp" / "checkpoint_last.pt")))


def test_zero_sharded_optimizer_state_equals_one_process(single, tiny_data_bin, tmp_path):
    """--zero-sharding os (fairscale's OSS): each process keeps the SAGE state of its own share of the tensors."""
    pytest.importorskip("fairscale", reason="fairscale is installed by `make setup`")
    args = train_args(tiny_data_bin, tmp_path / "zero", SAGE, UPDATES, [*COMMON, "--zero-sharding", "os"])
    multi_run = run_torchrun(2, args)
    _assert_same_training(single, (train_log(multi_run), _load(tmp_path / "zero" / "checkpoint_last.pt")))
