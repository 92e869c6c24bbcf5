"""The options of the SAGE optimizers and their checks: one range per scalar option (``RANGES``), the option
pairs and choices (:func:`check_options`), and the tensors SAGE can update (:func:`check_param`). Used at
construction, for every added group, in a loaded state and by fairseq's wrapper (which names its flags)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

from . import _functional as F


def real_number(value: Any, tensor_ok: bool = False) -> float | None:
    """The number an option holds: a Python or numpy real (not a bool), or with ``tensor_ok`` a one-element real
    tensor (torch's optimizers take ``lr`` as one); None for anything else."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, Tensor) and tensor_ok and value.numel() == 1:
        if not (value.is_complex() or value.dtype == torch.bool):
            return float(value)
    return None


def check_range(name: str, value: Any, low: float, high: float | None = None, *, above: bool = False,
                 tensor_ok: bool = False, why: str = "") -> None:  # fmt: skip
    """``value`` is a finite number >= ``low`` (> ``low`` with ``above``) and < ``high``."""
    number = real_number(value, tensor_ok)
    if number is None:
        raise ValueError(f"{name} must be a number{' or a one-element tensor' if tensor_ok else ''}, got {value!r}")
    ok = math.isfinite(number) and (number > low if above else number >= low)
    if ok and high is not None:
        ok = number < high
    if not ok:
        bound = f"in [{low}, {high})" if high is not None else f"{'>' if above else '>='} {low}"
        raise ValueError(f"{name} must be {bound}, got {value!r}{why}")


def check_betas(betas: Any, name: str = "betas") -> tuple[float, float]:
    try:
        beta1, beta2 = (float(b) for b in betas)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a pair of floats, got {betas!r}") from None
    check_range(f"{name}[0]", beta1, 0.0, 1.0)
    check_range(f"{name}[1]", beta2, 0.0, 1.0)
    return beta1, beta2


# the scalar options every group carries, with their checks (check_range's keywords); checked at construction, per
# added group and in a loaded state. eps > 0: it keeps both denominators positive; at 0 an entry whose gradient has
# always been 0 (a padding embedding row) or whose sensitivity is 0 (a zero-initialised bias) gets 0/0 = NaN.
RANGES: dict[str, dict[str, Any]] = {
    "lr": dict(low=0.0, tensor_ok=True),
    "eps": dict(low=0.0, above=True, why=" (eps keeps the denominators positive: at 0, an entry whose gradient or "
                                         "sensitivity is zero gets 0/0 = NaN)"),
    "weight_decay": dict(low=0.0),
    "beta3": dict(low=0.0, high=1.0),
    "sage_strength": dict(low=0.0, tensor_ok=True),
}  # fmt: skip
# the options a tensor may hold (as torch's lr): kept as the tensor, read by the step (changing it in place changes the
# next step); a tensor on the parameters' device is read there by the triton kernel, without a host read
TENSOR_OPTIONS = ("lr", "sage_strength")
# the impls whose step counts and scalars stay on the device: the ones a CUDA graph can capture
CAPTURABLE_IMPLS = ("auto", "triton")


def check_options(options: dict[str, Any], names: dict[str, str] | None = None) -> None:
    """Validate SAGE options (any subset of the constructor's keywords); errors name ``names[key]`` where given
    (the fairseq wrapper passes its command-line flags, so a user reads ``--sage-beta3``, not ``beta3``)."""
    names = names or {}
    for key, value in options.items():
        name = names.get(key, key)
        if key in RANGES:
            check_range(name, value, **RANGES[key])
        elif key == "betas":
            check_betas(value, name)
        elif key == "impl" and value not in F.IMPLEMENTATIONS:
            raise ValueError(f"{name} must be one of {', '.join(F.IMPLEMENTATIONS)}, got {value!r}")
        elif key == "capturable" and not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    if options.get("capturable") is True and options.get("impl", "auto") not in CAPTURABLE_IMPLS:
        raise ValueError(
            f"{names.get('capturable', 'capturable')}=True needs impl 'triton' or 'auto' (the triton kernel on CUDA "
            f"tensors, whose step never reads a device value on the host); impl={options['impl']!r} reads the step "
            "counts on the host, which a CUDA graph cannot capture"
        )


def plain_numbers(options: dict[str, Any]) -> dict[str, Any]:
    """The checked scalar options as Python floats (numpy scalars would make a saved state need numpy to load); a
    tensor ``lr`` or strength stays the tensor, as torch's lr (the caller may change it in place)."""
    out = dict(options)
    for key in RANGES:
        if key in out and not (key in TENSOR_OPTIONS and isinstance(out[key], Tensor)):
            out[key] = float(out[key])
    if "betas" in out:
        out["betas"] = check_betas(out["betas"])
    return out


def describe_param(name: str | None, where: str) -> str:
    return f"parameter {name!r} ({where})" if name else f"the parameter at {where}"


def check_param(p: Any, name: str | None, where: str) -> None:
    """Refuse what SAGE cannot update before any state exists (a later failure inside step() would leave the state
    half-updated)."""
    if not isinstance(p, Tensor):
        raise TypeError(f"SAGE optimizes tensors; {where} is a {type(p).__name__}")
    if p.is_complex():
        raise ValueError(
            f"SAGE does not support complex parameters: {describe_param(name, where)} is {p.dtype}. The sensitivity "
            "|theta * grad| is defined per real entry; optimize torch.view_as_real(p) as a real parameter instead"
        )
    if not p.is_floating_point():
        raise ValueError(f"SAGE optimizes floating-point tensors: {describe_param(name, where)} is {p.dtype}")
