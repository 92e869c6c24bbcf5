"""Cheap statistics of the SAGE multiplier, computed inside ``step()`` on request (no fairseq import).

``opt.request_sage_stats()`` asks the optimizer to measure, during its next ``step()``, the multiplier
``r = (|I - Ihat| + eps^2) / (Ihat + eps^2)`` of that step (the value before the strength alpha is applied; the
applied multiplier is ``1 + alpha * (r - 1)``). ``opt.pop_sage_stats()`` then returns a dict:

* ``r_mean``: mean of r over all entries of the SAGE tensors;
* ``r_gt1``: fraction of those entries with r > 1 (trained harder than the base optimizer would, once alpha > 0);
* ``r_q10``, ``r_q50``, ``r_q90``: quantiles of r;
* ``mult_mean``: mean of the applied multiplier ``1 + alpha * (r - 1)`` (alpha of that step).

With ``by_kind=True`` the same statistics are also given per layer type of the tensors' names (:func:`layer_kind`:
``embed``, ``attn``, ``ffn``, ``norm``, ``other``) as ``KIND_r_mean`` and so on, from the same sample: in a small
transformer the embeddings hold most entries and dominate the overall numbers. It needs the tensors' names (fairseq's
wrapper gives them unless the parameters are flattened); without them only the overall statistics come, with a
warning once.

They are estimated on a fixed random sample: the first request draws, per tensor and once, entry indices with a
fixed seed (a share of ``num_samples`` proportional to the tensor's size, at least ``min(numel, 16)`` entries), and
each sampled entry is weighted by ``numel / sampled``, so the mean and fractions estimate the means over all
entries. The cost is a few gathers per tensor and one sort of the sample, and only on the requested steps: the
hook must see ``theta_t``, ``g_t`` and ``Ibar_{t-1}`` before the update kernel overwrites them. Tensors with
``sage=False`` (multiplier 1) are left out.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch
from torch import Tensor

from ._functional import compute_dtype
from .selection import EMBED_PATTERN

QUANTILES = (0.1, 0.5, 0.9)
QUANTILE_KEYS = tuple(f"r_q{round(q * 100):02d}" for q in QUANTILES)
MIN_PER_TENSOR = 16
# layer types of fairseq's (and torch's) transformer parameter names, tried in this order
LAYER_KINDS = (
    ("embed", re.compile(EMBED_PATTERN)),
    ("norm", re.compile(r"(^|\.)[a-z_]*(layer_norm|layernorm|LayerNorm)\b")),
    ("attn", re.compile(r"(^|\.)(self_attn|encoder_attn|attn|attention)\.")),
    ("ffn", re.compile(r"(^|\.)(fc1|fc2|intermediate\.dense|output\.dense)\.")),
)
LAYER_KIND_INDEX = {kind: i for i, kind in enumerate([k for k, _ in LAYER_KINDS] + ["other"])}


def layer_kind(name: str) -> str:
    """The layer type of a parameter from its name: ``embed`` (token and position embeddings, the output
    projection), ``norm`` (layer norms), ``attn`` (attention projections), ``ffn`` (feed-forward), else ``other``."""
    for kind, pattern in LAYER_KINDS:
        if pattern.search(name):
            return kind
    return "other"


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

    def request_sage_stats(self, num_samples: int = 8192, seed: int = 0, by_kind: bool = False) -> None:
        """Measure the multiplier on the next ``step()``, on a fixed sample of about ``num_samples`` entries; with
        ``by_kind``, per layer type as well (see the module docstring)."""
        if not (isinstance(num_samples, int) and num_samples > 0):
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if not isinstance(by_kind, bool):
            raise ValueError(f"by_kind must be True or False, got {by_kind!r}")
        self._sage_stats_request = (num_samples, seed)
        self._sage_stats_by_kind = by_kind

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
        self,
        acc: list,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        sens: list[Tensor],
        steps,
        names: list[str | None],
    ) -> None:
        """Gather this group's sampled entries; ``sens`` holds Ibar_{t-1}, ``steps`` t - 1 (before the kernel)."""
        sampler = self._sage_stats_sampler
        beta3, eps_sq, alpha = group["beta3"], group["eps"] ** 2, float(group["sage_strength"])
        by_kind = getattr(self, "_sage_stats_by_kind", False)
        if by_kind and any(n is None for n in names) and not getattr(self, "_warned_kind_names", False):
            self._warned_kind_names = True
            warnings.warn(
                "SAGE statistics by layer type: the parameters have no names (flattened parameters, or an optimizer "
                "built from bare tensors without name_parameters): only the overall statistics are given",
                stacklevel=3,
            )
        for p, g, s, t, name in zip(params, grads, sens, steps, names, strict=True):
            idx = sampler.index.get(id(p))
            if idx is None or idx.numel() == 0:
                continue
            step = float(t) + 1.0
            bc3 = 1.0 - beta3**step if group["bias_correction"] else 1.0
            gathered = [x.reshape(-1).index_select(0, idx) for x in (p, g, s)]  # theta_t, g_t, Ibar_{t-1}
            kind = layer_kind(name) if by_kind and name is not None else None
            acc.append((gathered, (beta3, bc3, eps_sq, alpha, sampler.weight[id(p)]), idx.numel(), kind))

    def _sage_stats_finish(self, acc: list | None) -> None:
        if acc is None:
            return
        self._sage_stats_sampler = None
        self._sage_stats_result = _multiplier_stats(acc) if acc else None


@torch.no_grad()
def _multiplier_stats(acc: list) -> dict[str, float]:
    """r for all gathered entries in one vectorised pass (float64 on the CPU), then the summary."""
    devices = {gathered[0].device for gathered, *_ in acc}
    columns = []
    for i in range(3):
        parts = [gathered[i] for gathered, *_ in acc]
        if len(devices) == 1:
            columns.append(torch.cat([x.to(compute_dtype(x.dtype)) for x in parts]).to("cpu", torch.float64))
        else:
            columns.append(torch.cat([x.to("cpu", torch.float64) for x in parts]))
    theta, grad, sens_bar = columns
    counts = torch.tensor([n for _, _, n, _ in acc])
    beta3, bc3, eps_sq, alpha, weight = (
        torch.tensor([m for _, m, _, _ in acc], dtype=torch.float64).repeat_interleave(counts, dim=0).unbind(1)
    )
    sensitivity = (theta * grad).abs()
    smoothed = (beta3 * sens_bar + (1.0 - beta3) * sensitivity) / bc3
    r = ((sensitivity - smoothed).abs() + eps_sq) / (smoothed + eps_sq)
    stats = summarize(r, weight, alpha)
    kinds = [kind for _, _, _, kind in acc]
    if any(kind is not None for kind in kinds):
        labels = torch.tensor([LAYER_KIND_INDEX.get(kind, -1) for kind in kinds]).repeat_interleave(counts)
        for kind, index in LAYER_KIND_INDEX.items():
            mask = labels == index
            if mask.any():
                stats.update({f"{kind}_{key}": v for key, v in summarize(r[mask], weight[mask], alpha[mask]).items()})
    return stats


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
