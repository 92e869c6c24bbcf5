"""fairseq-train users read errors and warnings in terms of the flags they typed (docs/fairseq.md)."""

from __future__ import annotations

import pytest

from tests.fairseq_utils import run_cli, train_args

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "optimizer, flags, message",
    [
        ("adam_sage", ["--sage-beta3", "1.0"], "--sage-beta3 must be in [0.0, 1.0), got 1.0"),
        ("adamax_sage", ["--sage-strength", "-1"], "--sage-strength must be >= 0.0, got -1.0"),
        ("adam_sage", ["--adam-betas", "(0.9, 1.5)"], "--adam-betas[1] must be in [0.0, 1.0), got 1.5"),
        ("adam_sage", ["--sage-impl", "gpu"], "--sage-impl must be one of auto, fused, single_tensor, foreach, triton"),
        ("adamax_sage", ["--adam-eps=-1e-8"], "--adam-eps must be > 0.0, got -1e-08"),
        ("adam_sage", ["--adam-eps", "0"], "--adam-eps must be > 0.0, got 0.0 (eps keeps the denominators positive"),
        # refused at start-up, naming the flag (the kernel runs on CUDA tensors; these runs are on the CPU)
        ("adam_sage", ["--sage-impl", "triton"], "--sage-impl triton cannot run here: "),
    ],
)
def test_a_bad_option_is_refused_naming_its_flag(optimizer, flags, message, tiny_data_bin, tmp_path):
    proc = run_cli("train", train_args(tiny_data_bin, tmp_path, ["--optimizer", optimizer, *flags], 1), check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert message in proc.stderr.strip().splitlines()[-1], proc.stderr[-3000:]


def test_a_selection_of_tensors_without_gradients_warns(tiny_data_bin, tmp_path):
    # fairseq 0.12.2's encoder layers hold copies of their weights for a BetterTransformer path that training never
    # uses (in_proj_weight, fc1_weight, ...): a pattern that matches only those would run plain Adam
    unused = r"regex:^encoder\.layers\.\d+\.(in_proj|fc1|fc2)_weight$"
    proc = run_cli(
        "train", train_args(tiny_data_bin, tmp_path, ["--optimizer", "adam_sage", "--sage-params", unused], 2)
    )
    warning = [line for line in proc.stderr.splitlines() if "none of them received a gradient" in line]
    assert len(warning) == 1 and "selects 3 tensors" in warning[0], proc.stderr[-3000:]
