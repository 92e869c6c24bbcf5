"""Resuming a fairseq-train checkpoint with changed SAGE options, through the real CLI (docs/fairseq.md, "Resuming").

The rules: every option of the optimizer comes from the command line (one log line names each change) and the next
checkpoint records what ran; a changed ``--sage-params`` is refused with a message naming ``--reset-optimizer`` and
leaves the checkpoint untouched, never a crash or a stale selection.
"""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from tests.fairseq_utils import run_cli, train_args

pytestmark = pytest.mark.slow

ADAM_SAGE = ["--optimizer", "adam_sage", "--adam-betas", "(0.9, 0.98)"]
FIRST_UPDATES = 3


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def checkpoints(tiny_data_bin, tmp_path_factory):
    """One short training per selection; each test resumes a copy."""
    made = {}

    def make(selection: str):
        if selection not in made:
            save = tmp_path_factory.mktemp("first") / "ckpt"
            run_cli("train", train_args(tiny_data_bin, save, [*ADAM_SAGE, "--sage-params", selection], FIRST_UPDATES))
            made[selection] = save
        return made[selection]

    return make


def _resume(tiny_data_bin, checkpoints, tmp_path, before: str, after: list[str], check: bool):
    save = tmp_path / "ckpt"
    shutil.copytree(checkpoints(before), save)
    digest = _digest(save / "checkpoint_last.pt")
    args = train_args(tiny_data_bin, save, [*ADAM_SAGE, *after], FIRST_UPDATES + 2)
    return run_cli("train", args, check=check), save, digest


@pytest.mark.parametrize(
    "before, after",
    [(r"regex:fc1\.", r"regex:fc2\."), ("all", "none"), ("none", "all"), ("attn_ffn", "all")],
)
def test_a_changed_selection_is_refused_and_the_checkpoint_kept(before, after, tiny_data_bin, checkpoints, tmp_path):
    proc, save, digest = _resume(tiny_data_bin, checkpoints, tmp_path, before, ["--sage-params", after], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, f"expected a clean error exit, got {proc.returncode}:\n{out[-3000:]}"
    message = out.strip().splitlines()[-1]
    assert "--sage-params" in message and "--reset-optimizer" in message, message
    assert repr(after) in message and repr(before) in message, message
    assert _digest(save / "checkpoint_last.pt") == digest, "the refused resume changed the checkpoint"


def test_a_changed_selection_with_reset_optimizer_runs_the_new_selection(tiny_data_bin, checkpoints, tmp_path):
    proc, save, _ = _resume(
        tiny_data_bin, checkpoints, tmp_path, r"regex:fc1\.", ["--sage-params", r"regex:fc2\.", "--reset-optimizer"],
        check=True,
    )  # fmt: skip
    state = _load(save / "checkpoint_last.pt")
    groups = state["last_optimizer_state"]["param_groups"]
    assert [(g["sage"], g["sage_params"]) for g in groups] == [(True, r"regex:fc2\."), (False, r"regex:fc2\.")]
    assert state["cfg"]["optimizer"]["sage_params"] == r"regex:fc2\."
    # 1+1 layers, weight and bias of fc2 each: the tensors that ran SAGE are fc2's
    assert len(groups[0]["params"]) == 4
    sage_ids = set(groups[0]["params"])
    with_sens = {k for k, v in state["last_optimizer_state"]["state"].items() if "exp_avg_sens" in v}
    assert with_sens == sage_ids


@pytest.mark.parametrize(
    "option, key, value, logged",
    [
        (["--sage-beta3", "0.5"], "beta3", 0.5, "--sage-beta3 was 0.75 in the checkpoint, now 0.5"),
        (
            ["--sage-impl", "single_tensor"],
            "impl",
            "single_tensor",
            "--sage-impl was auto in the checkpoint, now single",
        ),
        (["--weight-decay", "0.01"], "weight_decay", 0.01, "--weight-decay was 0.0 in the checkpoint, now 0.01"),
        (["--sage-no-bias-correction"], "bias_correction", False, "(--sage-no-bias-correction) was True in the"),
    ],
)
def test_a_changed_option_is_applied_logged_and_recorded(option, key, value, logged, tiny_data_bin, checkpoints,
                                                          tmp_path):  # fmt: skip
    proc, save, _ = _resume(tiny_data_bin, checkpoints, tmp_path, "all", option, check=True)
    out = proc.stdout + proc.stderr
    assert sum(logged in line for line in out.splitlines()) == 1, out[-3000:]
    state = _load(save / "checkpoint_last.pt")
    assert state["optimizer_history"][-1]["num_updates"] == FIRST_UPDATES + 2
    assert {g[key] for g in state["last_optimizer_state"]["param_groups"]} == {value}
    cfg_key = {"beta3": "sage_beta3", "impl": "sage_impl", "bias_correction": "sage_no_bias_correction"}.get(key, key)
    recorded = state["cfg"]["optimizer"][cfg_key]
    assert recorded == (not value if key == "bias_correction" else value)


def test_an_unchanged_resume_logs_no_option_change(tiny_data_bin, checkpoints, tmp_path):
    proc, save, _ = _resume(tiny_data_bin, checkpoints, tmp_path, "all", [], check=True)
    assert "in the checkpoint, now" not in proc.stdout + proc.stderr
    assert _load(save / "checkpoint_last.pt")["optimizer_history"][-1]["num_updates"] == FIRST_UPDATES + 2
