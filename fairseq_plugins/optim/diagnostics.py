"""Cheap statistics of the SAGE multiplier, computed inside ``step()`` on request (no fairseq import).

``opt.request_sage_stats()`` asks the optimizer to measure, during its next ``step()``, the multiplier
``r = (|I - Ihat| + eps^2) / (Ihat + eps^2)`` of that step (the value before the strength alpha is applied; the
applied multiplier is ``1 + alpha * (r - 1)``). ``opt.pop_sage_stats()`` then returns a dict:

* ``r_mean``: mean of r over all entries of the SAGE tensors;
* ``r_gt1``: fraction of those entries with r > 1 (trained harder than the base optimizer would, once alpha > 0);
* ``r_q10``, ``r_q50``, ``r_q90``: quantiles of r;
* ``mult_mean``: mean of the applied multiplier ``1 + alpha * (r - 1)`` (alpha of that step).

They are estimated on a fixed random sample: the first request draws, per tensor and once, entry indices with a
fixed seed (a share of ``num_samples`` proportional to the tensor's size, at least ``min(numel, 16)`` entries), and
each sampled entry is weighted by ``numel / sampled``, so the mean and fractions estimate the means over all
entries. The cost is a few gathers per tensor and one sort of the sample, and only on the requested steps: the
hook must see ``theta_t``, ``g_t`` and ``Ibar_{t-1}`` before the update kernel overwrites them. Tensors with
``sage=False`` (multiplier 1) are left out.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._functional import compute_dtype

QUANTILES = (0.1, 0.5, 0.9)
QUANTILE_KEYS = tuple(f"r_q{round(q * 100):02d}" for q in QUANTILES)
MIN_PER_TENSOR = 16


class _Sampler:
    """Fixed per-tensor entry indices for a sample budget, drawn once with a fixed seed."""

    def __init__(self, tensors: list[Tensor], num_samples: int, seed: int):
        total = sum(t.numel() for t in tensors)
        gen = torch.Generator().manual_seed(seed)
        self.index: dict[int, Tensor] = {}
        self.weight: dict[int, float] = {}
        for t in tensors:
            n = t.numel()
            k = min(n, max(MIN_PER_TENSOR, round(num_samples * n / max(total, 1))))
            idx = torch.randperm(n, generator=gen)[:k] if k < n else torch.arange(n)
            self.index[id(t)] = idx.to(t.device)
            self.weight[id(t)] = n / k if k else 0.0


class SAGEStatsMixin:
    """Adds ``request_sage_stats`` / ``pop_sage_stats`` and the step hook to a SAGE optimizer."""

    def request_sage_stats(self, num_samples: int = 8192, seed: int = 0) -> None:
        """Measure the multiplier on the next ``step()``, on a fixed sample of about ``num_samples`` entries."""
        if not (isinstance(num_samples, int) and num_samples > 0):
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        self._sage_stats_request = (num_samples, seed)

    def pop_sage_stats(self) -> dict[str, float] | None:
        """The statistics of the last requested step (a dict of floats), or None; clears them."""
        stats, self._sage_stats_result = getattr(self, "_sage_stats_result", None), None
        return stats

    # --- the hook called from step(): begin, observe each SAGE group before its kernel, finish ---
    def _sage_stats_begin(self) -> list | None:
        request = getattr(self, "_sage_stats_request", None)
        if request is None:
            return None
        self._sage_stats_request = None
        samplers = getattr(self, "_sage_samplers", None)
        if samplers is None:
            samplers = self._sage_samplers = {}
        if request not in samplers:
            sage_tensors = [p for g in self.param_groups if g.get("sage", True) for p in g["params"]]
            samplers[request] = _Sampler(sage_tensors, *request)
        self._sage_stats_sampler = samplers[request]
        return []

    @torch.no_grad()
    def _sage_stats_observe(
        self, acc: list, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], sens: list[Tensor], steps
    ) -> None:
        """Sampled r of this step for one group; ``sens`` holds Ibar_{t-1}, ``steps`` t - 1 (before the kernel)."""
        sampler = self._sage_stats_sampler
        beta3, eps_sq = group["beta3"], group["eps"] ** 2
        for p, g, s, t in zip(params, grads, sens, steps, strict=True):
            idx = sampler.index.get(id(p))
            if idx is None or idx.numel() == 0:
                continue
            dtype = compute_dtype(p.dtype)
            theta = p.reshape(-1).index_select(0, idx).to(dtype)
            grad = g.reshape(-1).index_select(0, idx).to(dtype)
            sens_bar = s.reshape(-1).index_select(0, idx)
            step = float(t) + 1.0
            sensitivity = (theta * grad).abs()
            smoothed = sens_bar * beta3 + sensitivity * (1.0 - beta3)
            if group["bias_correction"]:
                smoothed = smoothed / (1.0 - beta3**step)
            r = ((sensitivity - smoothed).abs() + eps_sq) / (smoothed + eps_sq)
            acc.append((r.float(), sampler.weight[id(p)], float(group["sage_strength"])))

    def _sage_stats_finish(self, acc: list | None) -> None:
        if acc is None:
            return
        self._sage_stats_sampler = None
        if not acc:
            self._sage_stats_result = None
            return
        r = torch.cat([x[0].cpu() for x in acc])
        w = torch.cat([torch.full((x[0].numel(),), x[1]) for x in acc])
        alpha = torch.cat([torch.full((x[0].numel(),), x[2]) for x in acc])
        self._sage_stats_result = summarize(r, w, alpha)


def summarize(r: Tensor, weight: Tensor, alpha: Tensor | float = 1.0) -> dict[str, float]:
    """Weighted mean, fraction above 1 and quantiles of ``r``, and the mean applied multiplier."""
    r, weight = r.double(), weight.double()
    total = weight.sum()
    mean = float((r * weight).sum() / total)
    applied = 1.0 + torch.as_tensor(alpha, dtype=torch.float64) * (r - 1.0)
    stats = {
        "r_mean": mean,
        "r_gt1": float(weight[r > 1.0].sum() / total),
        **dict(zip(QUANTILE_KEYS, weighted_quantiles(r, weight, QUANTILES), strict=True)),
        "mult_mean": float((applied * weight).sum() / total),
    }
    return stats


def weighted_quantiles(values: Tensor, weight: Tensor, qs) -> list[float]:
    """The smallest value whose cumulative weight reaches ``q`` of the total, for each q (lower quantile)."""
    order = torch.argsort(values)
    v, cw = values[order], torch.cumsum(weight[order], 0)
    targets = torch.tensor([q * float(cw[-1]) for q in qs], dtype=cw.dtype)
    pos = torch.searchsorted(cw, targets).clamp_(max=len(v) - 1)
    return [float(v[i]) for i in pos]
