"""Uncertainty of the numbers a report states: 95% intervals with their n.

Scores averaged over subjects get a percentile bootstrap interval (subjects resampled with
replacement, seeded, so a report is reproducible); proportions (accuracy, the pointing game)
get Wilson's score interval, which stays inside [0, 1] and is honest at small n; differences
between two methods on the same subjects get a paired bootstrap interval.
"""

from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000


def bootstrap_interval(values, statistic=np.mean, seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (None with fewer than two)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    draws = values[rng.integers(0, len(values), (RESAMPLES, len(values)))]
    estimates = np.apply_along_axis(statistic, 1, draws) if statistic is not np.mean else draws.mean(1)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(a, b, seed: int = 0) -> dict:
    """Mean of a − b over paired subjects, with its bootstrap interval and n."""
    difference = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return {"mean": float(difference.mean()) if len(difference) else None,
            "ci": bootstrap_interval(difference, seed=seed), "n": len(difference)}


def wilson_interval(successes: int, n: int) -> tuple[float, float] | None:
    """Wilson's score interval of a proportion (None when n is 0)."""
    if n == 0:
        return None
    z = 1.959963984540054  # the normal quantile of a two-sided 95% interval
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_sd(mean: float, sd: float, digits: int = 3) -> str:
    """'7.098 ± 5.612': a spread (not an interval), as tables and summaries write it."""
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def describe(estimate: float | None, ci: tuple[float, float] | None, n: int, digits: int = 3) -> str:
    """'0.436 [0.381, 0.492], n 30': how every score is written in reports."""
    if estimate is None:
        return f"undefined (n {n})"
    if ci is None:
        return f"{estimate:.{digits}f}, n {n} (too few for an interval)"
    return f"{estimate:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}], n {n}"
