"""Which checkpoint to evaluate, and checkpoint averaging (as fairseq's ``scripts/average_checkpoints.py``, which is
not installed with the fairseq package; the code here is our own).

- Choice (:func:`resolve_checkpoints`): a file, or a save dir (then ``checkpoint_best.pt`` if present, else
  ``checkpoint_last.pt``); with ``average_last=N`` (save dir only) the last N numbered checkpoints, averaged into
  ``<save dir>/checkpoint.avgN.pt`` (model parameters only: no optimizer state).
- Numbered checkpoints: ``checkpoint{epoch}.pt`` (kind ``epoch``) and ``checkpoint_{epoch}_{update}.pt`` (kind
  ``update``), in numeric order, not string order; ``auto`` takes the epoch ones if the folder has any, else the update
  ones. Asking for more than exist is an error that lists what there is.
- Averaging (:func:`average_checkpoints`): the ``model`` entry of the result is the element-wise mean of the inputs'
  ``model`` tensors. Floating-point tensors are accumulated in float32 (float64 stays float64) and cast back to their
  own dtype; integer/bool tensors (buffers such as counters) are taken from the last checkpoint. All inputs must hold
  the same tensor names and shapes, and be the same model (:func:`model_differences`: the options of the model's
  configuration, ``cfg['model']`` or an older checkpoint's ``args``, must agree, except those that act only in
  training, :data:`TRAINING_ONLY_MODEL_OPTIONS`). Every other entry (``cfg``/``args``, ``extra_state``, optimizer
  history ...) is kept from the last checkpoint (the one with the highest number; with explicit files, the last one
  given); ``drop_optimizer_state`` empties ``last_optimizer_state`` (not needed for generation; it is several times
  the size of the model with Adam). The output is written atomically.
"""

from __future__ import annotations

import argparse
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sage_toolkit.atomic import atomic_path
from sage_toolkit.errors import ToolkitError

EPOCH_PATTERN = re.compile(r"checkpoint(\d+)\.pt")  # fairseq: checkpoint{epoch}.pt
UPDATE_PATTERN = re.compile(r"checkpoint_(\d+)_(\d+)\.pt")  # fairseq: checkpoint_{epoch}_{updates}.pt
AVERAGE_KINDS = ("auto", "epoch", "update")
# Model options that do not change the function a trained model computes: they act in training only (dropout, layer
# drop, activation checkpointing and offloading, FSDP wrapping). Checkpoints that differ only in them are averaged.
TRAINING_ONLY_MODEL_OPTIONS = frozenset({
    "dropout", "attention_dropout", "activation_dropout", "relu_dropout", "adaptive_softmax_dropout",
    "encoder_layerdrop", "decoder_layerdrop", "checkpoint_activations", "offload_activations", "min_params_to_wrap",
})  # fmt: skip


def numbered_checkpoints(folder: Path, kind: str) -> list[tuple[int, Path]]:
    """``(number, path)`` of the epoch (``kind='epoch'``) or update (``kind='update'``) checkpoints, ascending."""
    if kind not in ("epoch", "update"):
        raise ToolkitError(f"unknown checkpoint kind {kind!r}; choose epoch or update")
    folder = Path(folder)
    if not folder.is_dir():
        raise ToolkitError(f"checkpoint folder {folder} does not exist")
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
        raise ToolkitError(f"the number of checkpoints to average must be at least 1, got {n}")
    if kind == "auto":
        kind = "epoch" if numbered_checkpoints(folder, "epoch") else "update"
    found = numbered_checkpoints(folder, kind)
    if len(found) < n:
        names = ", ".join(p.name for _, p in found) or "none"
        pattern = "checkpoint{epoch}.pt" if kind == "epoch" else "checkpoint_{epoch}_{update}.pt"
        raise ToolkitError(
            f"cannot average the last {n} checkpoints: {folder} has {len(found)} {kind} checkpoints "
            f"({pattern}): {names}"
        )
    return [p for _, p in found[-n:]]


def load_checkpoint(path: Path) -> dict:
    """A fairseq checkpoint read onto the CPU without running code from it (:mod:`sage_toolkit.checkpoint_io`: an
    error naming the file if it is missing, unreadable, needs more than a fairseq checkpoint holds, or is not one)."""
    from sage_toolkit.checkpoint_io import load_checkpoint_file

    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"checkpoint {path} does not exist")
    state = load_checkpoint_file(path)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ToolkitError(f"{path} is not a fairseq checkpoint (no 'model' entry)")
    return state


def average_checkpoints(paths: Sequence[Path], drop_optimizer_state: bool = False) -> dict:
    """A checkpoint whose ``model`` is the element-wise mean of the ``model`` entries of ``paths``.

    Other entries come from the last path. See the module docstring for dtypes.
    """
    import torch

    paths = [Path(p) for p in paths]
    if not paths:
        raise ToolkitError("no checkpoints to average")
    sums: dict = {}
    first_keys = None
    last_state = None
    for path in paths:
        state = load_checkpoint(path)
        model = state["model"]
        if first_keys is None:
            first_keys = list(model)
            first_state = {"cfg": state.get("cfg"), "args": state.get("args")}  # what model_differences reads
        else:
            check_same_model(paths[0], first_state, path, state)
        if set(model) != set(first_keys):
            missing = sorted(set(first_keys) - set(model))[:5]
            extra = sorted(set(model) - set(first_keys))[:5]
            raise ToolkitError(
                f"{path} holds other parameters than {paths[0]} (missing {missing}, extra {extra}): "
                "checkpoints of different models cannot be averaged"
            )
        for name, tensor in model.items():
            if not torch.is_tensor(tensor):
                continue
            if name in sums and sums[name].shape != tensor.shape:
                raise ToolkitError(
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


def model_config(state: dict) -> dict | None:
    """The model part of a checkpoint's configuration as a dict: ``cfg['model']`` (fairseq >= 0.10; for models
    configured by command-line options, such as the transformer, a namespace of every option of the run), else an
    older checkpoint's ``args``; None when it records neither."""
    cfg = state.get("cfg")
    section = cfg.get("model") if isinstance(cfg, Mapping) else None
    if section is None:
        section = state.get("args")
    if isinstance(section, argparse.Namespace):
        return vars(section)
    return dict(section) if isinstance(section, Mapping) else None


@functools.lru_cache
def _registered_model(arch: str) -> tuple[str, frozenset[str]] | None:
    """(model name, the options its class declares) of a fairseq architecture; None for one fairseq does not know
    (a ``--user-dir`` model: its package is not imported here, nothing from a checkpoint is)."""
    import warnings

    with warnings.catch_warnings():  # fairseq's imports warn about deprecated torch APIs: not the user's concern
        warnings.simplefilter("ignore")
        from fairseq.models import ARCH_MODEL_NAME_REGISTRY, ARCH_MODEL_REGISTRY
    if arch not in ARCH_MODEL_REGISTRY:
        return None
    parser = argparse.ArgumentParser(add_help=False)
    ARCH_MODEL_REGISTRY[arch].add_args(parser)
    return ARCH_MODEL_NAME_REGISTRY[arch], frozenset(action.dest for action in parser._actions)


def _other_sections_options(state: dict) -> set[str]:
    """Names of the configuration's sections and of the options in its sections other than ``model``."""
    cfg = state.get("cfg")
    if not isinstance(cfg, Mapping):
        return set()
    names = set(cfg)
    for key, section in cfg.items():
        if key != "model" and isinstance(section, Mapping):
            names.update(section)
    return names


def model_differences(first: dict, other: dict) -> list[tuple[str, object, object]]:
    """``(option, first's value, other's value)`` for each model option in which the checkpoint states ``first`` and
    ``other`` differ (empty when they are the same model, or a checkpoint records no configuration).

    Compared: the architecture (``arch``; two names of one fairseq model class compare by their options) and the
    options the model class declares (fairseq's registry; for an architecture fairseq does not know, every option of
    the model section that no other section of the configuration holds), present in both, except
    :data:`TRAINING_ONLY_MODEL_OPTIONS`.
    """
    a, b = model_config(first), model_config(other)
    if a is None or b is None or a == b:
        return []
    arch_a, arch_b = a.get("arch") or a.get("_name"), b.get("arch") or b.get("_name")
    registered = _registered_model(arch_a) if isinstance(arch_a, str) else None
    if arch_a != arch_b:
        other_registered = _registered_model(arch_b) if isinstance(arch_b, str) else None
        if registered is None or other_registered is None or registered[0] != other_registered[0]:
            return [("arch", arch_a, arch_b)]
    if registered is not None:
        options = registered[1] & a.keys() & b.keys()
    else:
        options = (a.keys() & b.keys()) - _other_sections_options(first) - _other_sections_options(other)
    options -= TRAINING_ONLY_MODEL_OPTIONS | {"arch", "_name"}
    return [(key, a[key], b[key]) for key in sorted(options) if a[key] != b[key]]


def check_same_model(first_path: Path, first: dict, path: Path, state: dict) -> None:
    """A ToolkitError naming both files and each option (with both values) in which their models differ."""
    differences = model_differences(first, state)
    if differences:
        first_values = ", ".join(f"{key}={value!r}" for key, value, _ in differences)
        values = ", ".join(f"{key}={value!r}" for key, _, value in differences)
        raise ToolkitError(
            f"checkpoints of different models cannot be averaged: {first_path} has {first_values}; {path} has {values}"
        )


def save_checkpoint(state: dict, output: Path) -> Path:
    """``torch.save`` ``state`` to ``output`` atomically."""
    import torch

    with atomic_path(output) as tmp:
        torch.save(state, tmp)
    return Path(output)


@dataclass(frozen=True)
class AverageOptions:
    """What to average (``scripts/average_checkpoints.py``): explicit checkpoint files, or one save dir with the
    number of its last epoch or update checkpoints (at most one of the two numbers)."""

    inputs: tuple[Path, ...]
    output: Path
    num_epoch_checkpoints: int | None = None
    num_update_checkpoints: int | None = None
    drop_optimizer_state: bool = False


def average_to_file(options: AverageOptions) -> list[Path]:
    """Average the checkpoints ``options`` name into ``options.output``; returns the checkpoints averaged."""
    inputs = [Path(p) for p in options.inputs]
    if options.num_epoch_checkpoints is not None and options.num_update_checkpoints is not None:
        raise ToolkitError("give --num-epoch-checkpoints or --num-update-checkpoints, not both", exit_code=2)
    n = options.num_epoch_checkpoints if options.num_epoch_checkpoints is not None else options.num_update_checkpoints
    if n is not None:
        if len(inputs) != 1 or not inputs[0].is_dir():
            raise ToolkitError(
                f"--num-epoch-checkpoints/--num-update-checkpoints need one save dir in --inputs, got "
                f"{' '.join(map(str, inputs))}"
            )
        kind = "epoch" if options.num_epoch_checkpoints is not None else "update"
        paths = last_checkpoints(inputs[0], n, kind)
    else:
        if any(path.is_dir() for path in inputs):
            raise ToolkitError("--inputs is a folder: say how many with --num-epoch/update-checkpoints N")
        paths = inputs
    save_checkpoint(average_checkpoints(paths, drop_optimizer_state=options.drop_optimizer_state), options.output)
    return paths


def resolve_checkpoints(path: Path, average_last: int | None, average_by: str) -> tuple[Path, list[Path]]:
    """(the file to give fairseq-generate, the checkpoints it stands for). Writes nothing: an average of several
    checkpoints is named here and written by :func:`write_average`."""
    if not path.exists():
        raise ToolkitError(f"checkpoint {path} does not exist")
    if average_last is not None:
        if not path.is_dir():
            raise ToolkitError(f"--average-last needs a save dir as --checkpoint, got the file {path}")
        paths = last_checkpoints(path, average_last, average_by)
        if len(paths) == 1:
            return paths[0], paths
        return path / f"checkpoint.avg{average_last}.pt", paths
    if path.is_dir():
        for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
            if (path / name).is_file():
                return path / name, [path / name]
        present = ", ".join(sorted(p.name for p in path.glob("*.pt"))) or "no .pt files"
        raise ToolkitError(f"{path} has neither checkpoint_best.pt nor checkpoint_last.pt ({present})")
    return path, [path]


def write_average(checkpoint: Path, paths: list[Path], log_prefix: str) -> None:
    """Write the average of ``paths`` to ``checkpoint`` (resolve_checkpoints' name for it) when there are several."""
    if len(paths) > 1:
        print(f"{log_prefix}: averaging {', '.join(p.name for p in paths)} -> {checkpoint}", flush=True)
        save_checkpoint(average_checkpoints(paths, drop_optimizer_state=True), checkpoint)
