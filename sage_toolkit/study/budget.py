"""How far a training budget is from convergence, read from validation-loss curves.

Under the inverse-square-root schedule the validation loss of these models keeps falling slowly for many thousands of
updates, so "converged" is a threshold on how fast it still falls. Two numbers per curve:

- the measured fall: minus the least-squares slope of the validation loss over the last ``window`` updates of the
  curve, per 1,000 updates;
- the predicted fall at update t: the curve from update ``start`` on fitted with
  ``L(t) = floor + scale * (t/1000)^-decay`` (least squares; ``decay`` on a fine grid, ``floor`` and ``scale``
  solved exactly for each), whose fall per 1,000 updates is ``scale * decay * (t/1000)^-(decay+1)``.

:func:`budget` is the smallest multiple of ``step`` (at least ``minimum``) at which every fitted curve is predicted to
fall by at most ``max_fall`` per 1,000 updates: the rule studies/multi30k_de_en_converged.yaml declares for raising its
budget. ``python scripts/study.py SPEC --budget RUN ...`` prints it for the named runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sage_toolkit.errors import ToolkitError

DECAYS = np.arange(0.02, 4.0001, 0.002)  # the fit's grid of decay exponents


@dataclass(frozen=True)
class DecayFit:
    """``L(t) = floor + scale * (t/1000)^-decay`` fitted to a validation curve; ``rmse`` of the fit, ``points`` used."""

    floor: float
    scale: float
    decay: float
    rmse: float
    points: int

    def loss(self, update: float) -> float:
        return self.floor + self.scale * (update / 1000) ** -self.decay

    def fall(self, update: float) -> float:
        """The predicted fall of the validation loss per 1,000 updates at ``update`` (positive while falling)."""
        return self.scale * self.decay * (update / 1000) ** -(self.decay + 1)


def _points(curve: list[dict], start: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = [
        (p["update"], loss)
        for p in curve
        if p.get("update", 0) >= start and isinstance(loss := p.get("valid_loss"), (int, float)) and math.isfinite(loss)
    ]
    return np.array([u for u, _ in pairs], dtype=float), np.array([v for _, v in pairs], dtype=float)


def fit_decay(curve: list[dict], start: int = 1000) -> DecayFit:
    """Fit the curve (``[{"update", "valid_loss"}, ...]``, a run's training summary) from update ``start`` on.
    ToolkitError with fewer than 4 points there."""
    updates, losses = _points(curve, start)
    if len(updates) < 4:
        raise ToolkitError(f"a decay fit needs at least 4 validation points from update {start} on, got {len(updates)}")
    best = None
    for decay in DECAYS:
        basis = np.stack([np.ones_like(updates), (updates / 1000) ** -decay], axis=1)
        (floor, scale), *_ = np.linalg.lstsq(basis, losses, rcond=None)
        sse = float(np.sum((basis @ np.array([floor, scale]) - losses) ** 2))
        if best is None or sse < best[0]:
            best = (sse, float(floor), float(scale), float(decay))
    sse, floor, scale, decay = best
    return DecayFit(floor, scale, round(decay, 3), math.sqrt(sse / len(updates)), len(updates))


def measured_fall(curve: list[dict], window: int = 1000) -> float:
    """Minus the least-squares slope of the validation loss over the curve's last ``window`` updates (both ends
    included), per 1,000 updates. ToolkitError with fewer than 3 points in the window."""
    updates, losses = _points(curve, 0)
    if len(updates) == 0:
        raise ToolkitError("the curve has no validation points")
    inside = updates >= updates.max() - window
    if inside.sum() < 3:
        raise ToolkitError(f"a slope over the last {window} updates needs at least 3 validation points there")
    slope = np.polyfit(updates[inside], losses[inside], 1)[0]
    return float(-slope * 1000)


def budget(fits: list[DecayFit], max_fall: float = 0.01, step: int = 1000, minimum: int = 0, limit: int = 10**6) -> int:
    """The smallest multiple of ``step``, at least ``minimum``, at which every fit predicts a fall of at most
    ``max_fall`` per 1,000 updates. ToolkitError if none is found up to ``limit`` (a curve that does not fall like a
    power law: ``decay`` near 0)."""
    if not fits:
        raise ToolkitError("a budget needs at least one fitted curve")
    update = max(step, math.ceil(minimum / step) * step)
    while update <= limit:
        if all(fit.fall(update) <= max_fall for fit in fits):
            return update
        update += step
    raise ToolkitError(f"no budget up to {limit} updates brings every predicted fall to {max_fall} per 1,000 updates")
