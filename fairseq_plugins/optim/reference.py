"""Slow, obviously correct SAGE: the formulas of ../shared/docs/SAGE.md line by line, in float64.

The ground truth for tests of the fast paths. One tensor at a time, no in-place tricks, new tensors everywhere.
State is kept in float64 whatever the parameter's dtype; the parameter is written back in its own dtype.
"""

from __future__ import annotations

import math

import torch


def sage_multiplier(theta, g, state, group, t):
    """The applied multiplier 1 + alpha * (r - 1) of one tensor at step t; updates state["exp_avg_sens"] (float64)."""
    if not group["sage"]:
        return 1.0
    b3, eps, alpha = group["beta3"], group["eps"], group["sage_strength"]
    I = (theta * g).abs()  # sensitivity
    state["exp_avg_sens"] = b3 * state["exp_avg_sens"] + (1 - b3) * I  # smoothed sensitivity
    I_hat = state["exp_avg_sens"] / (1 - b3**t) if group["bias_correction"] else state["exp_avg_sens"]
    U = (I - I_hat).abs()  # local variation
    r = (U + eps**2) / (I_hat + eps**2)  # multiplier (eps^2 in the numerator: see AdamSAGE, "No frozen entries")
    return 1 + alpha * (r - 1)


class _Reference(torch.optim.Optimizer):
    def __init__(self, params, lr, betas, eps, weight_decay, beta3, bias_correction, sage_strength=1.0):
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            beta3=beta3,
            bias_correction=bias_correction,
            sage_strength=sage_strength,
            sage=True,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    for key in ("exp_avg", self.second, "exp_avg_sens"):
                        state[key] = torch.zeros_like(p, dtype=torch.float64)
                state["step"] += 1
                theta, g = p.double(), p.grad.double()
                p.copy_(self.update(theta, g, state, group, state["step"]))


class ReferenceAdamSAGE(_Reference):
    second = "exp_avg_sq"

    def update(self, theta, g, state, group, t):
        (b1, b2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
        state["exp_avg"] = b1 * state["exp_avg"] + (1 - b1) * g
        state["exp_avg_sq"] = b2 * state["exp_avg_sq"] + (1 - b2) * g * g
        rho = sage_multiplier(theta, g, state, group, t)
        step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        adam = state["exp_avg"] / (state["exp_avg_sq"].sqrt() + eps)
        return theta - lr * wd * theta - step_size * rho * adam


class ReferenceAdamaxSAGE(_Reference):
    second = "exp_inf"

    def update(self, theta, g, state, group, t):
        (b1, b2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
        state["exp_avg"] = b1 * state["exp_avg"] + (1 - b1) * g
        state["exp_inf"] = torch.maximum(b2 * state["exp_inf"], g.abs() + eps)
        rho = sage_multiplier(theta, g, state, group, t)
        return theta - lr * rho * (state["exp_avg"] / (state["exp_inf"] + eps) + wd * theta)
