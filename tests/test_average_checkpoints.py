"""scripts/average_checkpoints.py (sage_toolkit.evaluation.checkpoints): the mean of the model tensors, selection of
the last N checkpoints, errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from sage_toolkit.errors import ToolkitError
from sage_toolkit.evaluation import checkpoints as avg
from sage_toolkit.evaluation import commands
from tests.fairseq_utils import run_cli, train_args


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


def with_model_config(path: Path, seed: int, where: str = "cfg", **options) -> Path:
    """A fake checkpoint whose configuration records a fairseq transformer's model options, as fairseq 0.12.2 does
    (``cfg['model']``, a namespace of the run's options) or an older fairseq (``args``)."""
    config = argparse.Namespace(
        arch="transformer", _name="transformer", encoder_attention_heads=2, decoder_attention_heads=2,
        activation_fn="relu", dropout=0.1, lr=[5e-3], seed=seed, save_dir=str(path.parent), max_update=100,
    )  # fmt: skip
    vars(config).update(options)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"cfg": {"model": config, "common": {"seed": seed}}} if where == "cfg" else {"cfg": None, "args": config}
    fake_checkpoint(path, seed, **extra)
    return path


@pytest.mark.parametrize("where", ["cfg", "args"])
def test_only_the_options_that_define_the_model_must_agree(where, tmp_path, capsys):
    """Another run of the same model (other seed, learning rate, save dir, number of updates, dropout) is averaged;
    an option of the model class that changes its function (fairseq's registry says which options are the model's)
    is refused, naming both files and the option's two values."""
    a = with_model_config(tmp_path / "a" / "checkpoint1.pt", 1, where)
    b = with_model_config(tmp_path / "b" / "checkpoint2.pt", 2, where, lr=[1e-3], max_update=50, dropout=0.3)
    assert run_main(["--inputs", a, b, "--output", tmp_path / "avg.pt"]) == 0, capsys.readouterr().err
    c = with_model_config(tmp_path / "c" / "checkpoint3.pt", 3, where, activation_fn="gelu")
    assert run_main(["--inputs", a, b, c, "--output", tmp_path / "avg2.pt"]) == 1
    err = capsys.readouterr().err
    assert f"checkpoints of different models cannot be averaged: {a} has activation_fn='relu'; {c} has " in err, err
    assert not (tmp_path / "avg2.pt").exists()
    d = with_model_config(tmp_path / "d" / "checkpoint4.pt", 4, where, arch="lstm", _name="lstm")
    with pytest.raises(ToolkitError, match=f"{a} has arch='transformer'; {d} has arch='lstm'"):
        avg.average_checkpoints([a, d])
    # transformer_iwslt_de_en is fairseq's transformer class: the same model when its options are the same
    e = with_model_config(tmp_path / "e" / "checkpoint5.pt", 5, where, arch="transformer_iwslt_de_en")
    avg.average_checkpoints([a, e])


def test_a_model_fairseq_does_not_know_compares_the_options_no_other_section_holds(tmp_path):
    """A --user-dir architecture (not imported: nothing from a checkpoint runs): every option of its model section
    is compared except those of the configuration's other sections (here common.seed) and training-only ones."""
    a = with_model_config(tmp_path / "checkpoint1.pt", 1, arch="my_model", _name="my_model", head_size=8)
    b = with_model_config(tmp_path / "checkpoint2.pt", 2, arch="my_model", _name="my_model", head_size=8, dropout=0)
    avg.average_checkpoints([a, b])
    c = with_model_config(tmp_path / "checkpoint3.pt", 3, arch="my_model", _name="my_model", head_size=16)
    with pytest.raises(ToolkitError, match=r"has head_size=8; .*checkpoint3\.pt has head_size=16$"):
        avg.average_checkpoints([a, c])


@pytest.mark.slow
def test_trained_checkpoints_of_different_architectures_with_the_same_shapes_are_not_averaged(
    tiny_data_bin, tmp_path, capsys
):
    """fairseq-train's checkpoints: 4 instead of 2 attention heads and gelu instead of relu leave every tensor's
    name and shape as it was; another run of the same model (other seed, learning rate, dropout) is averaged."""

    def train(name: str, *extra: str) -> Path:
        run_cli("train", train_args(tiny_data_bin, tmp_path / name, ["--optimizer", "adam"], 1, list(extra)))
        return tmp_path / name / "checkpoint_last.pt"

    base = train("base")
    other = train(
        "other", "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--activation-fn", "gelu"
    )
    rc = run_main(["--inputs", base, other, "--output", tmp_path / "avg.pt"])
    err = capsys.readouterr().err
    assert rc == 1 and not (tmp_path / "avg.pt").exists()
    assert (
        f"checkpoints of different models cannot be averaged: {base} has activation_fn='relu', "
        f"decoder_attention_heads=2, encoder_attention_heads=2; {other} has activation_fn='gelu', "
        "decoder_attention_heads=4, encoder_attention_heads=4"
    ) in err, err
    rerun = train("rerun", "--seed", "2", "--lr", "1e-3", "--dropout", "0.3")
    assert run_main(["--inputs", base, rerun, "--output", tmp_path / "avg.pt"]) == 0, capsys.readouterr().err
    models = [torch.load(p, weights_only=False)["model"] for p in (base, rerun, tmp_path / "avg.pt")]
    name = "encoder.layers.0.fc1.weight"
    torch.testing.assert_close(models[2][name], (models[0][name] + models[1][name]) / 2, rtol=0, atol=0)
