"""Validation loss at matched training loss: is an optimizer behind because it trains more slowly, or because the
models it reaches generalise worse?

Two runs compared update by update mix the two questions. Read against the training loss instead (each validation
point of a run's curve carries the mean training loss since the previous point, ``Run.training_summary``), a run whose
validation loss is higher than the reference runs' *at the same training loss* has a larger generalisation gap: a
faster or slower descent alone does not move it along this axis. The training loss is fairseq's, with dropout on and
label smoothing, the same for every run of one model and data, so runs of one study compare; it is a diagnostic, not a
held-out measure.

The excess of a curve over reference curves: for each of the curve's points in its last ``1 - start_share`` of updates
(the converging regime), each reference curve's validation loss interpolated linearly at that training loss (any
point of the reference, only where it reached that training loss: no extrapolation), averaged over the references;
the excess is the curve's validation loss minus that, and the summary is its mean over the points.
"""

from __future__ import annotations

import statistics

import numpy as np

START_SHARE = 0.5  # the last half of each curve's updates


def converging_points(curve: list[dict], start_share: float = START_SHARE) -> list[tuple[float, float, int]]:
    """(training loss, validation loss, update) of the curve's points in its last ``1 - start_share`` of updates that
    have both losses."""
    known = [c for c in curve if c.get("train_loss") is not None and c.get("valid_loss") is not None]
    if not known:
        return []
    last = max(c["update"] for c in known)
    return [(c["train_loss"], c["valid_loss"], c["update"]) for c in known if c["update"] > start_share * last]


def reference_valid_loss(references: list[list[dict]], train_loss: float) -> float | None:
    """The references' validation loss at ``train_loss`` (mean over the references that reached it), or None."""
    values = []
    for reference in references:
        points = sorted(converging_points(reference, start_share=0.0))
        if len(points) >= 2 and points[0][0] <= train_loss <= points[-1][0]:
            values.append(float(np.interp(train_loss, [p[0] for p in points], [p[1] for p in points])))
    return statistics.mean(values) if values else None


def excess(curve: list[dict], references: list[list[dict]], start_share: float = START_SHARE) -> dict:
    """{"points": [{"update", "train_loss", "valid_loss", "reference_valid_loss", "excess"}], "mean": the mean excess
    over the points where the references reach the curve's training loss (None if there is none)}."""
    rows = []
    for train_loss, valid_loss, update in converging_points(curve, start_share):
        reference = reference_valid_loss(references, train_loss)
        if reference is not None:
            rows.append({"update": update, "train_loss": train_loss, "valid_loss": valid_loss,
                         "reference_valid_loss": reference, "excess": valid_loss - reference})  # fmt: skip
    return {"points": rows, "mean": statistics.mean(r["excess"] for r in rows) if rows else None}
