"""Summaries over seeds: mean and standard deviation, the difference of two means with its standard error."""

from __future__ import annotations

import math
import statistics


def finite(values) -> list[float]:
    """The numbers among ``values`` (None, strings and NaN dropped)."""
    return [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)]


def mean_std(values) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation) of the numbers in ``values``; std None for fewer than two, both None for
    none."""
    values = finite(values)
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def format_mean_std(values, digits: int = 2) -> str:
    """``mean ± std`` (``mean`` alone for one value, ``n/a`` for none)."""
    mean, std = mean_std(values)
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def difference_se(a, b) -> tuple[float, float]:
    """mean(b) - mean(a) and the standard error of that difference, sqrt(s_a²/n_a + s_b²/n_b) (two independent
    samples, each of at least two values)."""
    a, b = finite(a), finite(b)
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return statistics.mean(b) - statistics.mean(a), se


def format_difference(a, b, digits: int = 2) -> str:
    diff, se = difference_se(a, b)
    return f"{diff:+.{digits}f} ± {se:.{digits}f}"
