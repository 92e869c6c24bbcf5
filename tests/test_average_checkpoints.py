"""scripts/average_checkpoints.py (sage_toolkit.evaluation.checkpoints): the mean of the model tensors, selection of
the last N checkpoints, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sage_toolkit.errors import ToolkitError
from sage_toolkit.evaluation import checkpoints as avg
from sage_toolkit.evaluation import commands


def run_main(argv) -> int:
    """scripts/average_checkpoints.py's main in-process; its exit status (errors leave through SystemExit)."""
    try:
        return commands.average_checkpoints_main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def fake_checkpoint(path: Path, seed: int, **extra) -> dict:
    """A checkpoint in fairseq's layout: ``model`` tensors (fp32, fp16, an integer buffer) and other entries."""
    g = torch.Generator().manual_seed(seed)
    state = {
        "model": {
            "encoder.weight": torch.randn(4, 3, generator=g),
            "decoder.half": torch.randn(5, generator=g).half(),
            "decoder.double": torch.randn(2, 2, generator=g, dtype=torch.float64),
            "num_batches": torch.tensor(seed, dtype=torch.long),
        },
        "cfg": {"seed": seed},
        "extra_state": {"epoch": seed},
        "last_optimizer_state": {"state": {0: torch.ones(3) * seed}},
        **extra,
    }
    torch.save(state, path)
    return state


def test_average_of_two_is_the_elementwise_mean_and_keeps_the_last_ones_other_entries(tmp_path):
    a = fake_checkpoint(tmp_path / "checkpoint1.pt", 1)
    b = fake_checkpoint(tmp_path / "checkpoint2.pt", 2)
    out = avg.average_checkpoints([tmp_path / "checkpoint1.pt", tmp_path / "checkpoint2.pt"])
    for name in ("encoder.weight", "decoder.double"):
        expected = (a["model"][name] + b["model"][name]) / 2
        assert out["model"][name].dtype == a["model"][name].dtype
        torch.testing.assert_close(out["model"][name], expected, rtol=0, atol=0)
    half = (a["model"]["decoder.half"].float() + b["model"]["decoder.half"].float()) / 2  # fp32 accumulation
    assert out["model"]["decoder.half"].dtype == torch.float16
    assert torch.equal(out["model"]["decoder.half"], half.half())
    assert out["model"]["num_batches"].item() == 2  # integer buffers: the last checkpoint's
    assert out["cfg"] == {"seed": 2} and out["extra_state"] == {"epoch": 2}
    assert torch.equal(out["last_optimizer_state"]["state"][0], torch.full((3,), 2.0))


def test_cli_averages_the_last_n_by_number_and_writes_atomically(tmp_path, capsys):
    states = {n: fake_checkpoint(tmp_path / f"checkpoint{n}.pt", n) for n in (1, 2, 9, 10)}  # 10 after 9, not 1
    fake_checkpoint(tmp_path / "checkpoint_last.pt", 99)
    out = tmp_path / "avg" / "averaged.pt"
    rc = run_main(["--inputs", str(tmp_path), "--num-epoch-checkpoints", "2", "--output", str(out),
                   "--drop-optimizer-state"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert "checkpoint9.pt, checkpoint10.pt" in capsys.readouterr().out
    got = torch.load(out, weights_only=False)
    expected = (states[9]["model"]["encoder.weight"] + states[10]["model"]["encoder.weight"]) / 2
    assert torch.equal(got["model"]["encoder.weight"], expected)
    assert got["cfg"] == {"seed": 10} and got["last_optimizer_state"] is None
    assert sorted(p.name for p in out.parent.iterdir()) == ["averaged.pt"]  # no temporary file left


def test_update_checkpoints_are_ordered_by_update_number(tmp_path):
    for name in ("checkpoint_1_500.pt", "checkpoint_2_1000.pt", "checkpoint_3_1500.pt", "checkpoint3.pt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in avg.last_checkpoints(tmp_path, 2, "update")] == [
        "checkpoint_2_1000.pt",
        "checkpoint_3_1500.pt",
    ]
    assert [p.name for p in avg.last_checkpoints(tmp_path, 1, "auto")] == ["checkpoint3.pt"]  # epoch ones first
    (tmp_path / "checkpoint3.pt").unlink()
    assert [p.name for p in avg.last_checkpoints(tmp_path, 1, "auto")] == ["checkpoint_3_1500.pt"]


def test_errors_name_the_problem(tmp_path, capsys):
    fake_checkpoint(tmp_path / "checkpoint1.pt", 1)
    with pytest.raises(ToolkitError, match=r"last 3 checkpoints: .* has 1 epoch checkpoints .*checkpoint1\.pt"):
        avg.last_checkpoints(tmp_path, 3, "epoch")
    other = {"model": {"other.weight": torch.zeros(1)}}
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ToolkitError, match="holds other parameters"):
        avg.average_checkpoints([tmp_path / "checkpoint1.pt", tmp_path / "other.pt"])
    reshaped = fake_checkpoint(tmp_path / "shape.pt", 2)
    reshaped["model"]["encoder.weight"] = torch.zeros(2)
    torch.save(reshaped, tmp_path / "shape.pt")
    with pytest.raises(ToolkitError, match=r"parameter encoder.weight has shape \(2,\)"):
        avg.average_checkpoints([tmp_path / "checkpoint1.pt", tmp_path / "shape.pt"], drop_optimizer_state=True)
    rc = run_main(["--inputs", str(tmp_path / "missing.pt"), "--output", str(tmp_path / "x.pt")])
    assert rc == 1 and f"checkpoint {tmp_path / 'missing.pt'} does not exist" in capsys.readouterr().err
    (tmp_path / "garbage.pt").write_text("not a checkpoint")
    rc = run_main(["--inputs", str(tmp_path / "garbage.pt"), "--output", str(tmp_path / "x.pt")])
    assert rc == 1 and f"cannot read checkpoint {tmp_path / 'garbage.pt'}" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
