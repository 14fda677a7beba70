"""Confidence bounds of a binomial proportion: the one home of Wilson and Clopper-Pearson.

The decision policy asks for one-sided bounds on auto-coding precision (thousands of candidate
thresholds at once, hence the vectorised closed forms); review monitoring shows a two-sided
interval of the precision measured on the quality-control sample. Both agree with
`scipy.stats.binomtest(k, n).proportion_ci(method="wilson" | "exact")` (tests/test_policy.py).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.stats import beta as beta_dist, norm

from cimcoder.errors import CimcoderError

BoundMethod = Literal["wilson", "clopper-pearson"]
BOUND_METHODS: tuple[BoundMethod, ...] = ("wilson", "clopper-pearson")


class IntervalError(CimcoderError):
    """An unknown interval method (policy files name theirs)."""


def lower_bound(
    successes: np.ndarray | int, trials: np.ndarray | int, *, confidence: float = 0.95,
    method: BoundMethod = "wilson",
) -> np.ndarray:
    """One-sided lower confidence bound of a binomial proportion (0 where trials == 0)."""
    k = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    out = np.zeros(np.broadcast(k, n).shape)
    ok = n > 0
    k, n = np.broadcast_to(k, out.shape)[ok], np.broadcast_to(n, out.shape)[ok]
    if method == "wilson":
        z = norm.ppf(confidence)
        phat = k / n
        den = 1 + z * z / n
        centre = phat + z * z / (2 * n)
        half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
        out[ok] = np.clip((centre - half) / den, 0.0, 1.0)
    elif method == "clopper-pearson":
        alpha = 1 - confidence
        lb = np.where(k > 0, beta_dist.ppf(alpha, np.maximum(k, 1e-12), n - k + 1), 0.0)
        out[ok] = np.nan_to_num(lb)
    else:
        raise IntervalError(f"unknown bound method {method!r} (use {' or '.join(BOUND_METHODS)})")
    return out


def upper_bound(
    successes: np.ndarray | int, trials: np.ndarray | int, *, confidence: float = 0.95,
    method: BoundMethod = "wilson",
) -> np.ndarray:
    """One-sided upper confidence bound (1 where trials == 0), by symmetry of the lower one."""
    k = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    return 1.0 - lower_bound(n - k, n, confidence=confidence, method=method)


def proportion_interval(
    successes: int, trials: int, *, confidence: float = 0.95, method: BoundMethod = "wilson"
) -> tuple[float, float] | None:
    """Two-sided `confidence` interval of a proportion (None without observations): each end
    is the one-sided bound at (1 + confidence) / 2."""
    if trials == 0:
        return None
    one_sided = (1 + confidence) / 2
    low = lower_bound(successes, trials, confidence=one_sided, method=method)
    high = upper_bound(successes, trials, confidence=one_sided, method=method)
    return float(low), float(high)
