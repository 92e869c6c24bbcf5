"""The base model of a fine-tuning study: a trained checkpoint reduced to its weights (fp16), with its sha256.

A fine-tuning study starts every run from one pretrained model. Runs outlive sessions and the machines that trained
them, so the base is committed once, small: the model's tensors in fp16 (half the bytes; fine-tuning loads them into
fp32 parameters), the configuration fairseq needs to rebuild the model, and where it came from. No optimizer state and
no training position: fairseq's ``checkpoint.finetune_from_model`` loads it as a pretrained model (optimizer, schedule,
meters and data order start fresh).

    python -m sage_toolkit.study.base_model runs/finetune_de_en/base/checkpoint_best.pt \
        results/finetune_de_en/base/checkpoint_base.pt

prints the written file's sha256, which the study's spec declares (``base.sha256``) and every run's record repeats.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from sage_toolkit.atomic import atomic_path
from sage_toolkit.errors import ToolkitError, run_command
from sage_toolkit.evaluation.checkpoints import load_checkpoint


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_state(state: dict, source: Path) -> dict:
    """The weights-only checkpoint of a fairseq training checkpoint ``state`` (read from ``source``)."""
    import torch

    history = state.get("optimizer_history") or [{}]
    extra = state.get("extra_state") or {}
    origin = {
        "checkpoint": Path(source).name,
        "epoch": (extra.get("train_iterator") or {}).get("epoch"),
        "num_updates": history[-1].get("num_updates"),
        "best_valid_loss": extra.get("best"),
        "optimizer": history[-1].get("optimizer_name"),
    }
    model = {
        name: tensor.to(torch.float16) if tensor.is_floating_point() else tensor
        for name, tensor in state["model"].items()
    }
    # fairseq's loader upgrades older checkpoints by reading the last optimizer record and the iterator's position,
    # so both are present, saying "update 0, start of epoch 1" (no optimizer state: fine-tuning starts its own)
    fresh_history = {
        "criterion_name": history[-1].get("criterion_name"),
        "optimizer_name": history[-1].get("optimizer_name"),
        "lr_scheduler_state": {"best": None},
        "num_updates": 0,
    }
    return {
        "cfg": state.get("cfg"),
        "args": state.get("args"),
        "model": model,
        "optimizer_history": [fresh_history],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "version": 2}},
        "last_optimizer_state": None,
        "sage_base_model": origin,
    }


def export_base(checkpoint: Path, out: Path) -> str:
    """Write the base model of ``checkpoint`` to ``out`` (atomically); its sha256."""
    import torch

    state = load_checkpoint(checkpoint)
    if state.get("cfg") is None and state.get("args") is None:
        raise ToolkitError(f"{checkpoint}: no model configuration ('cfg' or 'args'): not a fairseq training checkpoint")
    with atomic_path(Path(out)) as tmp:
        torch.save(base_state(state, checkpoint), tmp)
    return sha256_of(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="base_model", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="the trained checkpoint (e.g. checkpoint_best.pt)")
    p.add_argument("out", type=Path, help="the base model file to write")
    args = p.parse_args(argv)

    def body():
        digest = export_base(args.checkpoint, args.out)
        print(f"{args.out}: sha256 {digest} ({args.out.stat().st_size / 2**20:.1f} MiB)")
        return 0

    return run_command("base_model", body)


if __name__ == "__main__":
    raise SystemExit(main())
