"""Functional SAGE updates over lists of tensors: ``adam_sage`` and ``adamax_sage``.

Each dispatches (``impl``) to one of three kernels:

- ``fused``: one compiled pass per entry over all tensors of the list, threads over chunks, no temporaries
  (``_fused_cpu``; CPU only, contiguous tensors; others in the list take the single-tensor kernel);
- ``single_tensor``: a loop of in-place torch ops per tensor, few temporaries;
- ``foreach``: torch._foreach_* ops over the whole list (list-wide temporaries; the choice for CUDA).

``auto`` picks ``foreach`` when every tensor is on CUDA, else ``fused`` (see BENCHMARKS.md), or ``single_tensor`` with a
one-time warning if the fused kernel cannot be built here. All compute in at least fp32: fp16/bf16 parameters and
gradients are upcast, their state is fp32, and the result is written back. See ``AdamSAGE`` for the math.

The multiplier is computed as ``(U + eps^2) / (Ihat + eps^2)`` with both terms multiplied by the sensitivity bias
correction ``bc3`` so that no division by ``bc3`` is needed:

    r = (|bc3 * I - Ibar| + bc3 * eps^2) / (Ibar + bc3 * eps^2)

and the applied multiplier is ``1 + strength * (r - 1)``.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict

import torch
from torch import Tensor

from . import _fused_cpu

_LOW_PRECISION = (torch.float16, torch.bfloat16)

IMPLEMENTATIONS = ("auto", "fused", "single_tensor", "foreach")

_warned_fallback = False


def resolve_impl(impl: str, params: list[Tensor]) -> str:
    """The kernel that ``impl`` means for these tensors; ``fused`` raises if it cannot be built, ``auto`` falls back."""
    global _warned_fallback
    if impl == "auto":
        if params and all(p.is_cuda for p in params):
            return "foreach"
        if _fused_cpu.available():
            return "fused"
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(
                f"SAGE: the fused CPU kernel is unavailable ({_fused_cpu.error()}); using the slower single_tensor "
                "kernel",
                RuntimeWarning,
                stacklevel=3,
            )
        return "single_tensor"
    if impl == "fused" and not _fused_cpu.available():
        raise RuntimeError(f"SAGE impl='fused' is unavailable: {_fused_cpu.error()}")
    return impl


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """SAGE arithmetic and state run in fp32 at least (eps^2 underflows in fp16)."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _upcast(t: Tensor) -> Tensor:
    return t.float() if t.dtype in _LOW_PRECISION else t


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


def _bias_corrections(step: float, beta1: float, beta2: float, beta3: float, bias_correction: bool):
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    bc3 = 1.0 - beta3**step if bias_correction else 1.0
    return bc1, bc2, bc3


def _multiplier_(sens: Tensor, exp_avg_sens: Tensor, bc3: float, eps_sq: float, strength: float) -> Tensor:
    """Turn ``sens`` (holding I_t) into the applied multiplier, in place; ``exp_avg_sens`` already holds Ibar_t."""
    floor = bc3 * eps_sq
    sens.mul_(bc3).sub_(exp_avg_sens).abs_().add_(floor)
    sens.div_(exp_avg_sens + floor)
    if strength != 1.0:
        sens.mul_(strength).add_(1.0 - strength)
    return sens


def _foreach_multiplier_(sens, exp_avg_sens, bc3: float, eps_sq: float, strength: float):
    floor = bc3 * eps_sq
    torch._foreach_mul_(sens, bc3)
    torch._foreach_sub_(sens, exp_avg_sens)
    torch._foreach_abs_(sens)
    torch._foreach_add_(sens, floor)
    denom = torch._foreach_add(exp_avg_sens, floor)
    torch._foreach_div_(sens, denom)
    del denom
    if strength != 1.0:
        torch._foreach_mul_(sens, strength)
        torch._foreach_add_(sens, 1.0 - strength)
    return sens


def _group_by_step(params, *lists):
    """Yield (step value, params, lists...) buckets: tensors that skipped a step (no grad) have other counts."""
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        buckets[(p.device, p.dtype, float(lists[-1][i]))].append(i)
    for (_, _, step), idx in buckets.items():
        yield step, [params[i] for i in idx], *[[lst[i] for i in idx] for lst in lists[:-1]]


def adam_sage(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    exp_avg_sens: list[Tensor] | None,
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    bias_correction: bool,
    strength: float,
    impl: str = "auto",
    param_names: list[str | None] | None = None,
) -> None:
    """AdamW-SAGE on a list of tensors. ``exp_avg_sens`` None: the plain AdamW update (unselected tensors).

    ``steps`` are incremented here. Decoupled weight decay, not scaled by the multiplier. ``param_names`` only
    serve error messages.
    """
    check_tensors(params, grads, exp_avgs, exp_avg_sqs, exp_avg_sens, steps, second_name="exp_avg_sq",
                  param_names=param_names)  # fmt: skip
    if steps:
        torch._foreach_add_(steps, 1.0)
    kernel = _KERNELS[resolve_impl(impl, params)][0]
    kernel(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        exp_avg_sens,
        steps,
        lr,
        beta1,
        beta2,
        beta3,
        eps,
        weight_decay,
        bias_correction,
        strength,
    )


def _adam_sage_single_tensor(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    exp_avg_sens,
    steps,
    lr,
    beta1,
    beta2,
    beta3,
    eps,
    weight_decay,
    bias_correction,
    strength,
):
    for i, p in enumerate(params):
        param, grad = _upcast(p), _upcast(grads[i])
        exp_avg, exp_avg_sq = exp_avgs[i], exp_avg_sqs[i]
        bc1, bc2, bc3 = _bias_corrections(float(steps[i]), beta1, beta2, beta3, bias_correction)

        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        update = exp_avg_sq.sqrt().add_(eps)  # the denominator, reused as the update buffer
        if exp_avg_sens is not None:
            sens = torch.mul(param, grad).abs_()  # sensitivity of the parameter *before* this step
            exp_avg_sens[i].lerp_(sens, 1.0 - beta3)
            update = _multiplier_(sens, exp_avg_sens[i], bc3, eps * eps, strength).mul_(exp_avg).div_(update)
        else:
            update = torch.div(exp_avg, update)

        if weight_decay != 0.0:
            param.mul_(1.0 - lr * weight_decay)
        param.add_(update, alpha=-lr * math.sqrt(bc2) / bc1)
        if param is not p:
            p.copy_(param)


def _adam_sage_foreach(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    exp_avg_sens,
    steps,
    lr,
    beta1,
    beta2,
    beta3,
    eps,
    weight_decay,
    bias_correction,
    strength,
):
    lists = [params, grads, exp_avgs, exp_avg_sqs] + ([exp_avg_sens] if exp_avg_sens is not None else []) + [steps]
    for step, ps, gs, ms, vs, *rest in _group_by_step(*lists):
        bc1, bc2, bc3 = _bias_corrections(step, beta1, beta2, beta3, bias_correction)
        params32, grads32 = [_upcast(p) for p in ps], [_upcast(g) for g in gs]

        torch._foreach_lerp_(ms, grads32, 1.0 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, grads32, grads32, value=1.0 - beta2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_add_(denom, eps)
        if rest:
            (sens_avgs,) = rest
            update = torch._foreach_mul(params32, grads32)
            torch._foreach_abs_(update)
            torch._foreach_lerp_(sens_avgs, update, 1.0 - beta3)
            _foreach_multiplier_(update, sens_avgs, bc3, eps * eps, strength)
            torch._foreach_mul_(update, ms)
            torch._foreach_div_(update, denom)
        else:
            update = torch._foreach_div(ms, denom)
        del denom

        if weight_decay != 0.0:
            torch._foreach_mul_(params32, 1.0 - lr * weight_decay)
        torch._foreach_add_(params32, update, alpha=-lr * math.sqrt(bc2) / bc1)
        _copy_back(ps, params32)


def _copy_back(params, params32):
    pairs = [(p, p32) for p, p32 in zip(params, params32, strict=True) if p is not p32]
    if pairs:
        torch._foreach_copy_([p for p, _ in pairs], [p32 for _, p32 in pairs])


def adamax_sage(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_infs: list[Tensor],
    exp_avg_sens: list[Tensor] | None,
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    bias_correction: bool,
    strength: float,
    impl: str = "auto",
    param_names: list[str | None] | None = None,
) -> None:
    """Adamax-SAGE on a list of tensors (the authors' Adamax: no bias correction of the first moment, weight decay
    coupled inside the scaled update). ``exp_avg_sens`` None: the plain update with multiplier 1. ``param_names``
    only serve error messages."""
    check_tensors(params, grads, exp_avgs, exp_infs, exp_avg_sens, steps, second_name="exp_inf",
                  param_names=param_names)  # fmt: skip
    if steps:
        torch._foreach_add_(steps, 1.0)
    kernel = _KERNELS[resolve_impl(impl, params)][1]
    kernel(
        params,
        grads,
        exp_avgs,
        exp_infs,
        exp_avg_sens,
        steps,
        lr,
        beta1,
        beta2,
        beta3,
        eps,
        weight_decay,
        bias_correction,
        strength,
    )


def _adamax_sage_single_tensor(
    params,
    grads,
    exp_avgs,
    exp_infs,
    exp_avg_sens,
    steps,
    lr,
    beta1,
    beta2,
    beta3,
    eps,
    weight_decay,
    bias_correction,
    strength,
):
    for i, p in enumerate(params):
        param, grad = _upcast(p), _upcast(grads[i])
        exp_avg, exp_inf = exp_avgs[i], exp_infs[i]
        _, _, bc3 = _bias_corrections(float(steps[i]), 0.0, 0.0, beta3, bias_correction)

        exp_avg.lerp_(grad, 1.0 - beta1)
        torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps), out=exp_inf)
        update = torch.add(exp_inf, eps)
        torch.div(exp_avg, update, out=update)
        if weight_decay != 0.0:
            update.add_(param, alpha=weight_decay)
        if exp_avg_sens is not None:
            sens = torch.mul(param, grad).abs_()
            exp_avg_sens[i].lerp_(sens, 1.0 - beta3)
            update.mul_(_multiplier_(sens, exp_avg_sens[i], bc3, eps * eps, strength))
        param.add_(update, alpha=-lr)
        if param is not p:
            p.copy_(param)


def _adamax_sage_foreach(
    params,
    grads,
    exp_avgs,
    exp_infs,
    exp_avg_sens,
    steps,
    lr,
    beta1,
    beta2,
    beta3,
    eps,
    weight_decay,
    bias_correction,
    strength,
):
    lists = [params, grads, exp_avgs, exp_infs] + ([exp_avg_sens] if exp_avg_sens is not None else []) + [steps]
    for step, ps, gs, ms, us, *rest in _group_by_step(*lists):
        _, _, bc3 = _bias_corrections(step, 0.0, 0.0, beta3, bias_correction)
        params32, grads32 = [_upcast(p) for p in ps], [_upcast(g) for g in gs]

        torch._foreach_lerp_(ms, grads32, 1.0 - beta1)
        torch._foreach_mul_(us, beta2)
        abs_grads = torch._foreach_abs(grads32)
        torch._foreach_add_(abs_grads, eps)
        torch._foreach_maximum_(us, abs_grads)
        del abs_grads
        denom = torch._foreach_add(us, eps)
        update = torch._foreach_div(ms, denom)
        del denom
        if weight_decay != 0.0:
            torch._foreach_add_(update, params32, alpha=weight_decay)
        if rest:
            (sens_avgs,) = rest
            sens = torch._foreach_mul(params32, grads32)
            torch._foreach_abs_(sens)
            torch._foreach_lerp_(sens_avgs, sens, 1.0 - beta3)
            torch._foreach_mul_(update, _foreach_multiplier_(sens, sens_avgs, bc3, eps * eps, strength))
            del sens
        torch._foreach_add_(params32, update, alpha=-lr)
        _copy_back(ps, params32)


def _fused(
    adamax, fallback, params, grads, firsts, seconds, sens, steps, lr, b1, b2, b3, eps, wd, bias_correction, alpha
):
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
        bc1, bc2, bc3 = _bias_corrections(step, b1, b2, b3, bias_correction)
        corrections[step] = (lr if adamax else lr * math.sqrt(bc2) / bc1, bc3)
    for idx in buckets.values():
        sizes = [corrections[step_values[i]][0] for i in idx]
        bc3s = [corrections[step_values[i]][1] for i in idx]
        _fused_cpu.step(
            adamax,
            [params[i] for i in idx],
            [grads[i] for i in idx],
            [firsts[i] for i in idx],
            [seconds[i] for i in idx],
            None if sens is None else [sens[i] for i in idx],
            sizes,
            bc3s,
            beta1=b1,
            beta2=b2,
            beta3=b3,
            eps=eps,
            lr=lr,
            weight_decay=wd,
            strength=alpha,
        )
    if rest:
        pick = [[lst[i] for i in rest] for lst in (params, grads, firsts, seconds)]
        fallback(
            *pick,
            None if sens is None else [sens[i] for i in rest],
            [steps[i] for i in rest],
            lr,
            b1,
            b2,
            b3,
            eps,
            wd,
            bias_correction,
            alpha,
        )


def _adam_sage_fused(*args):
    _fused(False, _adam_sage_single_tensor, *args)


def _adamax_sage_fused(*args):
    _fused(True, _adamax_sage_single_tensor, *args)


_KERNELS = {
    "single_tensor": (_adam_sage_single_tensor, _adamax_sage_single_tensor),
    "foreach": (_adam_sage_foreach, _adamax_sage_foreach),
    "fused": (_adam_sage_fused, _adamax_sage_fused),
}
