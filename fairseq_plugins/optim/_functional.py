"""Functional SAGE updates over lists of tensors: ``adam_sage`` and ``adamax_sage``.

Each dispatches (``impl``) to one of four kernels, listed in the table ``IMPLS`` (impl name -> ``Impl``):

- ``fused``: one compiled pass per entry over all tensors of the list, threads over chunks, no temporaries
  (``_fused_cpu``; CPU only, contiguous tensors; others in the list take the single-tensor kernel);
- ``single_tensor``: a loop of in-place torch ops per tensor, few temporaries;
- ``foreach``: torch._foreach_* ops over the whole list (list-wide temporaries; CUDA without Triton);
- ``triton``: one Triton launch per dtype over chunks of every tensor, each entry read and written once
  (``_fused_triton``; CUDA, or CPU tensors under TRITON_INTERPRET=1; the choice for CUDA).

The last two are in ``_torch_kernels``; this module holds the options, the checks, the fused wrapper and the table.

``auto`` picks ``triton`` when every tensor is on CUDA (measured on an H200: 1.6-3.2x faster than ``foreach`` per step,
no temporaries, as close to a float64 run; BENCHMARKS.md, GPU), or ``foreach`` with a one-time warning where Triton
cannot run (not installed, a GPU older than compute capability 7.0); else ``fused``, or ``single_tensor`` with a
one-time warning if the fused kernel cannot be built here. All compute in at least fp32: fp16/bf16 parameters and
gradients are upcast, their state is fp32, and the result is written back. See ``AdamSAGE`` for the math.

The multiplier is computed as ``(U + eps^2) / (Ihat + eps^2)`` with both terms multiplied by the sensitivity bias
correction ``bc3`` so that no division by ``bc3`` is needed:

    r = (|bc3 * I - Ibar| + bc3 * eps^2) / (Ibar + bc3 * eps^2)

and the applied multiplier is ``1 + strength * (r - 1)``.

Kernel calling convention (every entry of ``IMPLS``, and any new one, follows it)::

    kernel(params, grads, exp_avgs, second_moments, exp_avg_sens, steps, *, options)

The six lists, positional as in torch's kernels (``torch/optim/adam.py``), are aligned per parameter:
``second_moments`` is ``exp_avg_sqs`` (Adam) or ``exp_infs`` (Adamax); ``exp_avg_sens`` is None for tensors without
SAGE (the plain update); ``steps`` are one-element tensors, already incremented for this step. The scalars travel only
as ``options``, a frozen ``StepOptions`` (keyword-only fields ``lr, beta1, beta2, beta3, eps, weight_decay,
bias_correction, strength``): the one place that lists them, so two of them cannot be swapped silently. A kernel may
assume that ``check_tensors`` has passed (shapes, devices and state dtypes fit) and updates every list in place.
A new impl is one ``Impl`` entry: its Adam kernel, its Adamax kernel and a function that says why it cannot run here.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from . import _fused_cpu, _fused_triton
from ._torch_kernels import LOW_PRECISION, adam_foreach, adam_single_tensor, adamax_foreach, adamax_single_tensor
from ._torch_kernels import bias_corrections as _bias_corrections


@dataclass(frozen=True, kw_only=True, slots=True)
class StepOptions:
    """The scalar options of one update, the same for every tensor of the call (the functional forms take them as
    keyword arguments). ``beta1``/``beta2``: the moments' EMA coefficients; ``beta3``: the sensitivity's;
    ``bias_correction``: divide the smoothed sensitivity by ``1 - beta3**t``; ``strength``: SAGE's alpha."""

    lr: float
    beta1: float
    beta2: float
    beta3: float
    eps: float
    weight_decay: float
    bias_correction: bool
    strength: float


class Kernel(Protocol):
    """One update of aligned tensor lists (see the module's calling convention)."""

    def __call__(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        second_moments: list[Tensor],
        exp_avg_sens: list[Tensor] | None,
        steps: list[Tensor],
        /,
        *,
        options: StepOptions,
    ) -> None: ...


_warned_fallback = False
_warned_cuda_fallback = False
TRITON_MIN_CAPABILITY = (7, 0)  # Triton compiles for Volta and newer


def _triton_unavailable_on(device: torch.device) -> str | None:
    """Why ``auto`` cannot pick the Triton kernel for tensors on this CUDA device, or None."""
    reason = IMPLS["triton"].unavailable()
    if reason is None:
        capability = torch.cuda.get_device_capability(device)
        if capability < TRITON_MIN_CAPABILITY:
            name = torch.cuda.get_device_name(device)
            reason = f"Triton needs compute capability 7.0 or newer, {name} has {capability[0]}.{capability[1]}"
    return reason


def resolve_impl(impl: str, params: list[Tensor]) -> str:
    """The kernel that ``impl`` means for these tensors; an unavailable impl raises, ``auto`` falls back."""
    global _warned_fallback, _warned_cuda_fallback
    if impl == "auto":
        if params and all(p.is_cuda for p in params):
            reason = _triton_unavailable_on(params[0].device)
            if reason is None:
                return "triton"
            if not _warned_cuda_fallback:
                _warned_cuda_fallback = True
                warnings.warn(
                    f"SAGE: the fused Triton kernel is unavailable ({reason}); using the foreach kernel (slower, "
                    "with temporaries the size of the parameters)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return "foreach"
        reason = IMPLS["fused"].unavailable()
        if reason is None:
            return "fused"
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(
                f"SAGE: the fused CPU kernel is unavailable ({reason}); using the slower single_tensor kernel",
                RuntimeWarning,
                stacklevel=3,
            )
        return "single_tensor"
    if impl not in IMPLS:
        raise ValueError(f"SAGE impl must be one of {', '.join(IMPLEMENTATIONS)}, got {impl!r}")
    reason = IMPLS[impl].unavailable()
    if reason is not None:
        raise RuntimeError(f"SAGE impl={impl!r} is unavailable: {reason}")
    return impl


def why_unavailable(impl: str, params: list[Tensor]) -> str | None:
    """Why ``impl``, asked for by name, cannot update these tensors here, or None (``auto`` always can: it picks).
    For a check at start-up, before the first update would fail: the kernel is missing, or the tensors are on a
    device it does not run on (Triton: CUDA, or CPU under TRITON_INTERPRET; fused: CPU)."""
    if impl == "auto":
        return None
    reason = IMPLS[impl].unavailable()
    if reason is None and impl in ("triton", "fused"):
        wrong = [p.device for p in params if p.is_cuda != (impl == "triton")]
        if impl == "triton" and _fused_triton.interpreting():
            wrong = []
        if wrong:
            runs_on = "CUDA tensors" if impl == "triton" else "CPU tensors"
            reason = f"the {impl} kernel runs on {runs_on}, and the parameters are on {wrong[0]}"
    return reason


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """SAGE arithmetic and state run in fp32 at least (eps^2 underflows in fp16)."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


# what to do about a saved state that does not fit: every such error ends with it
START_AFRESH = "start the optimizer afresh (fairseq-train: --reset-optimizer)"
RESET_REMEDY = f"load the state saved for this model, or {START_AFRESH}"


def check_tensors(
    params: list[Tensor],
    grads: list[Tensor],
    firsts: list[Tensor],
    seconds: list[Tensor],
    sens: list[Tensor] | None,
    steps: list[Tensor],
    *,
    second_name: str,
    param_names: list[str | None] | None = None,
) -> None:
    """Every tensor an update touches fits its parameter: same shape and device, state in the compute dtype, a
    one-element step. Checked before any kernel (the fused one writes through raw pointers sized by the parameter)
    and before the step counters move, so a misfit raises ``ValueError`` and changes nothing."""
    n = len(params)
    lists = {"grads": grads, "exp_avgs": firsts, f"{second_name}s": seconds, "steps": steps}
    if sens is not None:
        lists["exp_avg_sens"] = sens
    for key, items in lists.items():
        if len(items) != n:
            raise ValueError(f"SAGE: {len(items)} {key} for {n} parameters")
    for i, p in enumerate(params):
        shape, device, dtype = p.shape, p.device, compute_dtype(p.dtype)
        tensors = [("gradient", grads[i]), ("exp_avg", firsts[i]), (second_name, seconds[i])]
        if sens is not None:
            tensors.append(("exp_avg_sens", sens[i]))
        for key, t in tensors:
            if t.shape == shape and t.device == device and (key == "gradient" or t.dtype == dtype):
                continue
            name = param_names[i] if param_names is not None and param_names[i] else None
            what = f"parameter {name!r}" if name else f"parameter {i} of the list"
            want = f"shape {tuple(shape)} on {device}" + ("" if key == "gradient" else f" in {dtype}")
            raise ValueError(
                f"SAGE: the {key} of {what} is {tuple(t.shape)} {t.dtype} on {t.device}; it must be {want}. "
                f"A state loaded for another model or parameter order does not fit: {RESET_REMEDY}"
            )
        if steps[i].numel() != 1:
            raise ValueError(f"SAGE: the step counter of parameter {i} has {steps[i].numel()} elements, not 1")


def _update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    seconds: list[Tensor],
    exp_avg_sens: list[Tensor] | None,
    steps: list[Tensor],
    *,
    family: str,
    second_name: str,
    impl: str,
    param_names: list[str | None] | None,
    options: dict[str, Any],
) -> None:
    """Check, count the step, dispatch: the body of both functional forms."""
    step_options = StepOptions(**options)  # a missing or unknown option raises TypeError naming it
    check_tensors(params, grads, exp_avgs, seconds, exp_avg_sens, steps, second_name=second_name,
                  param_names=param_names)  # fmt: skip
    if steps:
        torch._foreach_add_(steps, 1.0)
    kernel = getattr(IMPLS[resolve_impl(impl, params)], family)
    kernel(params, grads, exp_avgs, seconds, exp_avg_sens, steps, options=step_options)


def adam_sage(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    exp_avg_sens: list[Tensor] | None,
    steps: list[Tensor],
    *,
    impl: str = "auto",
    param_names: list[str | None] | None = None,
    **options: Any,
) -> None:
    """AdamW-SAGE on a list of tensors. ``exp_avg_sens`` None: the plain AdamW update (unselected tensors).

    ``options``: the fields of ``StepOptions``, all by keyword (``lr, beta1, beta2, beta3, eps, weight_decay,
    bias_correction, strength``). ``steps`` are incremented here. Decoupled weight decay, not scaled by the multiplier.
    ``param_names`` only serve error messages.
    """
    _update(params, grads, exp_avgs, exp_avg_sqs, exp_avg_sens, steps, family="adam", second_name="exp_avg_sq",
            impl=impl, param_names=param_names, options=options)  # fmt: skip


def adamax_sage(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_infs: list[Tensor],
    exp_avg_sens: list[Tensor] | None,
    steps: list[Tensor],
    *,
    impl: str = "auto",
    param_names: list[str | None] | None = None,
    **options: Any,
) -> None:
    """Adamax-SAGE on a list of tensors (the authors' Adamax: no bias correction of the first moment, weight decay
    coupled inside the scaled update). ``exp_avg_sens`` None: the plain update with multiplier 1. ``options`` as in
    ``adam_sage``. ``param_names`` only serve error messages."""
    _update(params, grads, exp_avgs, exp_infs, exp_avg_sens, steps, family="adamax", second_name="exp_inf",
            impl=impl, param_names=param_names, options=options)  # fmt: skip


# ---------------------------------------------------------------- fused (CPU)


def _fused(params, grads, firsts, seconds, sens, steps, /, *, options: StepOptions, adamax: bool, fallback: Kernel):
    """The fused kernel on every eligible tensor (one call per dtype), ``fallback`` on the others."""
    try:
        step_values = torch.stack(steps).tolist()  # one op for the usual 0-dim CPU step counters
    except RuntimeError:
        step_values = [float(s) for s in steps]
    buckets: dict[torch.dtype, list[int]] = defaultdict(list)
    rest: list[int] = []
    eligible = _fused_cpu.eligible
    for i, p in enumerate(params):
        ok = (
            eligible(p, grads[i], firsts[i], seconds[i])
            if sens is None
            else eligible(p, grads[i], firsts[i], seconds[i], sens[i])
        )
        if ok:
            buckets[p.dtype].append(i)
        else:
            rest.append(i)
    corrections = {}  # step value -> (step size, bc3): tensors usually share a step count
    for step in set(step_values):
        bc1, bc2, bc3 = _bias_corrections(step, options)
        corrections[step] = (options.lr if adamax else options.lr * math.sqrt(bc2) / bc1, bc3)
    for idx in buckets.values():
        _fused_cpu.step(
            [params[i] for i in idx],
            [grads[i] for i in idx],
            [firsts[i] for i in idx],
            [seconds[i] for i in idx],
            None if sens is None else [sens[i] for i in idx],
            adamax=adamax,
            step_sizes=[corrections[step_values[i]][0] for i in idx],
            bc3s=[corrections[step_values[i]][1] for i in idx],
            options=options,
        )
    if rest:
        pick = [[lst[i] for i in rest] for lst in (params, grads, firsts, seconds)]
        fallback(*pick, None if sens is None else [sens[i] for i in rest], [steps[i] for i in rest], options=options)


def _adam_sage_fused(params, grads, exp_avgs, exp_avg_sqs, exp_avg_sens, steps, /, *, options: StepOptions):
    _fused(params, grads, exp_avgs, exp_avg_sqs, exp_avg_sens, steps, options=options, adamax=False,
           fallback=adam_single_tensor)  # fmt: skip


def _adamax_sage_fused(params, grads, exp_avgs, exp_infs, exp_avg_sens, steps, /, *, options: StepOptions):
    _fused(params, grads, exp_avgs, exp_infs, exp_avg_sens, steps, options=options, adamax=True,
           fallback=adamax_single_tensor)  # fmt: skip


# ---------------------------------------------------------------- the impl table


def _always_available() -> str | None:
    return None


def _fused_cpu_unavailable() -> str | None:
    return None if _fused_cpu.available() else _fused_cpu.error()


@dataclass(frozen=True)
class Impl:
    """One implementation: its kernel per optimizer family, and why it cannot run here (None: it can)."""

    adam: Kernel
    adamax: Kernel
    unavailable: Callable[[], str | None] = _always_available


# impl name -> kernels; the order is the one ``--sage-impl`` lists after ``auto``
IMPLS: dict[str, Impl] = {
    "fused": Impl(_adam_sage_fused, _adamax_sage_fused, _fused_cpu_unavailable),
    "single_tensor": Impl(adam_single_tensor, adamax_single_tensor),
    "foreach": Impl(adam_foreach, adamax_foreach),
    "triton": Impl(_fused_triton.adam_sage, _fused_triton.adamax_sage, _fused_triton.error),
}
IMPLEMENTATIONS = ("auto", *IMPLS)
