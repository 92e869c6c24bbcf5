"""The ``single_tensor`` and ``foreach`` SAGE kernels: in-place torch ops, on any device.

Both follow the calling convention of ``_functional`` (six aligned lists, then ``*, options``); ``single_tensor``
loops over the tensors with few temporaries, ``foreach`` runs torch._foreach_* ops over the whole list (list-wide
temporaries; the choice for CUDA). fp16/bf16 parameters and gradients are upcast to fp32, their state is fp32, and
the result is written back. The single-tensor kernels are also the fused kernel's fallback for the tensors it cannot
take.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # only for the annotations: _functional imports this module
    from ._functional import StepOptions

LOW_PRECISION = (torch.float16, torch.bfloat16)


def upcast(t: Tensor) -> Tensor:
    return t.float() if t.dtype in LOW_PRECISION else t


def bias_corrections(step: float, options: StepOptions) -> tuple[float, float, float]:
    """``(bc1, bc2, bc3)`` at this step count; bc3 is 1 without the sensitivity's bias correction."""
    bc1 = 1.0 - options.beta1**step
    bc2 = 1.0 - options.beta2**step
    bc3 = 1.0 - options.beta3**step if options.bias_correction else 1.0
    return bc1, bc2, bc3


def _multiplier_(sens: Tensor, exp_avg_sens: Tensor, *, bc3: float, eps_sq: float, strength: float) -> Tensor:
    """Turn ``sens`` (holding I_t) into the applied multiplier, in place; ``exp_avg_sens`` already holds Ibar_t."""
    floor = bc3 * eps_sq
    sens.mul_(bc3).sub_(exp_avg_sens).abs_().add_(floor)
    sens.div_(exp_avg_sens + floor)
    if strength != 1.0:
        sens.mul_(strength).add_(1.0 - strength)
    return sens


def _foreach_multiplier_(sens, exp_avg_sens, *, bc3: float, eps_sq: float, strength: float):
    """``_multiplier_`` over lists."""
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


# ---------------------------------------------------------------- single_tensor


def adam_single_tensor(params, grads, exp_avgs, exp_avg_sqs, exp_avg_sens, steps, /, *, options: StepOptions):
    lr, beta1, beta2, beta3, eps = options.lr, options.beta1, options.beta2, options.beta3, options.eps
    for i, p in enumerate(params):
        param, grad = upcast(p), upcast(grads[i])
        exp_avg, exp_avg_sq = exp_avgs[i], exp_avg_sqs[i]
        bc1, bc2, bc3 = bias_corrections(float(steps[i]), options)

        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        update = exp_avg_sq.sqrt().add_(eps)  # the denominator, reused as the update buffer
        if exp_avg_sens is not None:
            sens = torch.mul(param, grad).abs_()  # sensitivity of the parameter *before* this step
            exp_avg_sens[i].lerp_(sens, 1.0 - beta3)
            multiplier = _multiplier_(sens, exp_avg_sens[i], bc3=bc3, eps_sq=eps * eps, strength=options.strength)
            update = multiplier.mul_(exp_avg).div_(update)
        else:
            update = torch.div(exp_avg, update)

        if options.weight_decay != 0.0:
            param.mul_(1.0 - lr * options.weight_decay)
        param.add_(update, alpha=-lr * math.sqrt(bc2) / bc1)
        if param is not p:
            p.copy_(param)


def adamax_single_tensor(params, grads, exp_avgs, exp_infs, exp_avg_sens, steps, /, *, options: StepOptions):
    beta1, beta2, beta3, eps = options.beta1, options.beta2, options.beta3, options.eps
    for i, p in enumerate(params):
        param, grad = upcast(p), upcast(grads[i])
        exp_avg, exp_inf = exp_avgs[i], exp_infs[i]
        _, _, bc3 = bias_corrections(float(steps[i]), options)

        exp_avg.lerp_(grad, 1.0 - beta1)
        torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps), out=exp_inf)
        update = torch.add(exp_inf, eps)
        torch.div(exp_avg, update, out=update)
        if options.weight_decay != 0.0:
            update.add_(param, alpha=options.weight_decay)
        if exp_avg_sens is not None:
            sens = torch.mul(param, grad).abs_()
            exp_avg_sens[i].lerp_(sens, 1.0 - beta3)
            update.mul_(_multiplier_(sens, exp_avg_sens[i], bc3=bc3, eps_sq=eps * eps, strength=options.strength))
        param.add_(update, alpha=-options.lr)
        if param is not p:
            p.copy_(param)


# ---------------------------------------------------------------- foreach


def _copy_back(params, params32):
    pairs = [(p, p32) for p, p32 in zip(params, params32, strict=True) if p is not p32]
    if pairs:
        torch._foreach_copy_([p for p, _ in pairs], [p32 for _, p32 in pairs])


def adam_foreach(params, grads, exp_avgs, exp_avg_sqs, exp_avg_sens, steps, /, *, options: StepOptions):
    lr, beta1, beta2, beta3, eps = options.lr, options.beta1, options.beta2, options.beta3, options.eps
    lists = [params, grads, exp_avgs, exp_avg_sqs] + ([exp_avg_sens] if exp_avg_sens is not None else []) + [steps]
    for step, ps, gs, ms, vs, *rest in _group_by_step(*lists):
        bc1, bc2, bc3 = bias_corrections(step, options)
        params32, grads32 = [upcast(p) for p in ps], [upcast(g) for g in gs]

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
            _foreach_multiplier_(update, sens_avgs, bc3=bc3, eps_sq=eps * eps, strength=options.strength)
            torch._foreach_mul_(update, ms)
            torch._foreach_div_(update, denom)
        else:
            update = torch._foreach_div(ms, denom)
        del denom

        if options.weight_decay != 0.0:
            torch._foreach_mul_(params32, 1.0 - lr * options.weight_decay)
        torch._foreach_add_(params32, update, alpha=-lr * math.sqrt(bc2) / bc1)
        _copy_back(ps, params32)


def adamax_foreach(params, grads, exp_avgs, exp_infs, exp_avg_sens, steps, /, *, options: StepOptions):
    beta1, beta2, beta3, eps = options.beta1, options.beta2, options.beta3, options.eps
    lists = [params, grads, exp_avgs, exp_infs] + ([exp_avg_sens] if exp_avg_sens is not None else []) + [steps]
    for step, ps, gs, ms, us, *rest in _group_by_step(*lists):
        _, _, bc3 = bias_corrections(step, options)
        params32, grads32 = [upcast(p) for p in ps], [upcast(g) for g in gs]

        torch._foreach_lerp_(ms, grads32, 1.0 - beta1)
        torch._foreach_mul_(us, beta2)
        abs_grads = torch._foreach_abs(grads32)
        torch._foreach_add_(abs_grads, eps)
        torch._foreach_maximum_(us, abs_grads)
        del abs_grads
        denom = torch._foreach_add(us, eps)
        update = torch._foreach_div(ms, denom)
        del denom
        if options.weight_decay != 0.0:
            torch._foreach_add_(update, params32, alpha=options.weight_decay)
        if rest:
            (sens_avgs,) = rest
            sens = torch._foreach_mul(params32, grads32)
            torch._foreach_abs_(sens)
            torch._foreach_lerp_(sens_avgs, sens, 1.0 - beta3)
            multiplier = _foreach_multiplier_(sens, sens_avgs, bc3=bc3, eps_sq=eps * eps, strength=options.strength)
            torch._foreach_mul_(update, multiplier)
            del sens, multiplier
        torch._foreach_add_(params32, update, alpha=-options.lr)
        _copy_back(ps, params32)
