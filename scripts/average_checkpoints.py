#!/usr/bin/env python3
"""Average the model parameters of several fairseq checkpoints (checkpoint averaging, as in fairseq's
``scripts/average_checkpoints.py``, which is not installed with the fairseq package).

Usage::

    python scripts/average_checkpoints.py --inputs SAVE_DIR --num-epoch-checkpoints 5 --output avg.pt
    python scripts/average_checkpoints.py --inputs SAVE_DIR --num-update-checkpoints 5 --output avg.pt
    python scripts/average_checkpoints.py --inputs a.pt b.pt c.pt --output avg.pt

What it does (the behaviour of fairseq's script; the code here is our own):

- selection: with ``--num-epoch-checkpoints N`` the N ``checkpoint{epoch}.pt`` files of SAVE_DIR with the highest
  epoch numbers, with ``--num-update-checkpoints N`` the N ``checkpoint_{epoch}_{update}.pt`` files with the highest
  update numbers (numeric order, not string order); an error if fewer than N exist;
- the ``model`` entry of the result is the element-wise mean of the inputs' ``model`` tensors. Floating-point tensors
  are accumulated in float32 (float64 stays float64) and cast back to their own dtype; integer/bool tensors (buffers
  such as counters) are taken from the last checkpoint. All inputs must hold the same tensor names and shapes;
- every other entry (``cfg``/``args``, ``extra_state``, optimizer history ...) is kept from the last checkpoint (the
  one with the highest number; with explicit ``--inputs`` files, the last one given). ``--drop-optimizer-state``
  empties ``last_optimizer_state`` (not needed for generation; it is several times the size of the model with Adam);
- the output is written atomically (a temporary file in the same folder, then renamed).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

EPOCH_PATTERN = re.compile(r"checkpoint(\d+)\.pt")  # fairseq: checkpoint{epoch}.pt
UPDATE_PATTERN = re.compile(r"checkpoint_(\d+)_(\d+)\.pt")  # fairseq: checkpoint_{epoch}_{updates}.pt


class AverageError(Exception):
    """A user-facing error; the message names the file or option at fault."""


def numbered_checkpoints(folder: Path, kind: str) -> list[tuple[int, Path]]:
    """``(number, path)`` of the epoch (``kind='epoch'``) or update (``kind='update'``) checkpoints, ascending."""
    if kind not in ("epoch", "update"):
        raise AverageError(f"unknown checkpoint kind {kind!r}; choose epoch or update")
    folder = Path(folder)
    if not folder.is_dir():
        raise AverageError(f"checkpoint folder {folder} does not exist")
    found = []
    for path in folder.iterdir():
        if kind == "epoch":
            m = EPOCH_PATTERN.fullmatch(path.name)
            number = int(m.group(1)) if m else None
        else:
            m = UPDATE_PATTERN.fullmatch(path.name)
            number = int(m.group(2)) if m else None
        if number is not None and path.is_file():
            found.append((number, path))
    return sorted(found)


def last_checkpoints(folder: Path, n: int, kind: str = "auto") -> list[Path]:
    """The last ``n`` numbered checkpoints of ``folder``, oldest first (the last one is the newest).

    ``kind``: ``epoch`` (``checkpoint{epoch}.pt``), ``update`` (``checkpoint_{epoch}_{update}.pt``) or ``auto``
    (epoch checkpoints if the folder has any, else update checkpoints).
    """
    if n < 1:
        raise AverageError(f"the number of checkpoints to average must be at least 1, got {n}")
    if kind == "auto":
        kind = "epoch" if numbered_checkpoints(folder, "epoch") else "update"
    found = numbered_checkpoints(folder, kind)
    if len(found) < n:
        names = ", ".join(p.name for _, p in found) or "none"
        pattern = "checkpoint{epoch}.pt" if kind == "epoch" else "checkpoint_{epoch}_{update}.pt"
        raise AverageError(
            f"cannot average the last {n} checkpoints: {folder} has {len(found)} {kind} checkpoints "
            f"({pattern}): {names}"
        )
    return [p for _, p in found[-n:]]


def _load(path: Path) -> dict:
    import torch

    path = Path(path)
    if not path.is_file():
        raise AverageError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # fairseq checkpoints pickle their config
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise AverageError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise AverageError(f"{path} is not a fairseq checkpoint (no 'model' entry)")
    return state


def average_checkpoints(paths: Sequence[Path], drop_optimizer_state: bool = False) -> dict:
    """A checkpoint whose ``model`` is the element-wise mean of the ``model`` entries of ``paths``.

    Other entries come from the last path. See the module docstring for dtypes.
    """
    import torch

    paths = [Path(p) for p in paths]
    if not paths:
        raise AverageError("no checkpoints to average")
    sums: dict = {}
    first_keys = None
    last_state = None
    for path in paths:
        state = _load(path)
        model = state["model"]
        if first_keys is None:
            first_keys = list(model)
        elif set(model) != set(first_keys):
            missing = sorted(set(first_keys) - set(model))[:5]
            extra = sorted(set(model) - set(first_keys))[:5]
            raise AverageError(
                f"{path} holds other parameters than {paths[0]} (missing {missing}, extra {extra}): "
                "checkpoints of different models cannot be averaged"
            )
        for name, tensor in model.items():
            if not torch.is_tensor(tensor):
                continue
            if name in sums and sums[name].shape != tensor.shape:
                raise AverageError(
                    f"{path}: parameter {name} has shape {tuple(tensor.shape)}, "
                    f"{paths[0]} has {tuple(sums[name].shape)}"
                )
            if tensor.is_floating_point():
                acc_dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
                if name in sums:
                    sums[name] += tensor.to(acc_dtype)
                else:
                    sums[name] = tensor.to(acc_dtype, copy=True)
            else:
                sums[name] = tensor  # integer/bool buffers: the last checkpoint's
        last_state = state
    model = {}
    for name, tensor in last_state["model"].items():
        if torch.is_tensor(tensor) and tensor.is_floating_point():
            model[name] = (sums[name] / len(paths)).to(tensor.dtype)
        else:
            model[name] = tensor
    last_state["model"] = model
    if drop_optimizer_state and "last_optimizer_state" in last_state:
        last_state["last_optimizer_state"] = None
    return last_state


def save_atomic(state: dict, output: Path) -> Path:
    """``torch.save`` into a temporary file next to ``output``, then one rename."""
    import torch

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return output


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="average_checkpoints", description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", nargs="+", required=True, type=Path, help="checkpoint files, or one save dir")
    p.add_argument("--output", required=True, type=Path, help="the averaged checkpoint (written atomically)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--num-epoch-checkpoints", type=int, help="average the last N checkpoint{epoch}.pt of the dir")
    g.add_argument("--num-update-checkpoints", type=int, help="average the last N checkpoint_{e}_{u}.pt of the dir")
    p.add_argument("--drop-optimizer-state", action="store_true", help="write last_optimizer_state=None")
    args = p.parse_args(argv)
    try:
        n = args.num_epoch_checkpoints if args.num_epoch_checkpoints is not None else args.num_update_checkpoints
        if n is not None:
            if len(args.inputs) != 1 or not args.inputs[0].is_dir():
                raise AverageError(
                    f"--num-epoch-checkpoints/--num-update-checkpoints need one save dir in --inputs, got "
                    f"{' '.join(map(str, args.inputs))}"
                )
            kind = "epoch" if args.num_epoch_checkpoints is not None else "update"
            paths = last_checkpoints(args.inputs[0], n, kind)
        else:
            if any(path.is_dir() for path in args.inputs):
                raise AverageError("--inputs is a folder: say how many with --num-epoch/update-checkpoints N")
            paths = list(args.inputs)
        state = average_checkpoints(paths, drop_optimizer_state=args.drop_optimizer_state)
        save_atomic(state, args.output)
    except AverageError as e:
        print(f"average_checkpoints: error: {e}", file=sys.stderr)
        return 1
    print(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
