"""Binomial confidence bounds (eval/intervals.py): hand values, scipy, the formulas they replace."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest, norm

from cimcoder.errors import CimcoderError
from cimcoder.eval.intervals import lower_bound, proportion_interval, upper_bound

# (confirmed auto-coded codes, auto-coded codes checked by a coder)
CASES = [(19, 20), (40, 40), (0, 7), (1, 1), (3, 10), (140, 144), (95, 100), (512, 530)]


def wilson_lower_as_the_policy_wrote_it(k: float, n: float, confidence: float) -> float:
    z = norm.ppf(confidence)
    phat = k / n
    centre = phat + z * z / (2 * n)
    half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
    return float(np.clip((centre - half) / (1 + z * z / n), 0.0, 1.0))


def wilson_as_monitoring_wrote_it(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def test_hand_values() -> None:
    # 19 of 20 auto-coded codes confirmed: 95 % observed, but only ~80 % promised at 95 %.
    assert float(lower_bound(19, 20)) == pytest.approx(0.8040, abs=1e-4)
    assert float(lower_bound(19, 20, method="clopper-pearson")) == pytest.approx(0.7839, abs=1e-4)
    low, high = proportion_interval(19, 20)  # type: ignore[misc]
    assert low == pytest.approx(0.7639, abs=1e-4) and high == pytest.approx(0.9911, abs=1e-4)
    # No observation: nothing is promised, nothing is excluded.
    assert float(lower_bound(0, 0)) == 0.0 and float(upper_bound(0, 0)) == 1.0
    assert proportion_interval(0, 0) is None
    with pytest.raises(CimcoderError, match="unknown bound method"):
        lower_bound(1, 2, method="agresti-coull")  # type: ignore[arg-type]


@pytest.mark.parametrize(("k", "n"), CASES)
def test_policy_bounds_are_the_formula_they_replace(k: int, n: int) -> None:
    for confidence in (0.8, 0.95, 0.99):
        assert float(lower_bound(k, n, confidence=confidence)) == wilson_lower_as_the_policy_wrote_it(
            k, n, confidence
        )
    # Vectorised over candidate thresholds, as the policy calls it.
    ks, ns = np.array([k for k, _ in CASES]), np.array([n for _, n in CASES])
    assert lower_bound(ks, ns).tolist() == [wilson_lower_as_the_policy_wrote_it(a, b, 0.95) for a, b in CASES]


@pytest.mark.parametrize(("k", "n"), CASES)
def test_bounds_agree_with_scipy_binomtest(k: int, n: int) -> None:
    for confidence in (0.8, 0.95):
        greater, less = binomtest(k, n, alternative="greater"), binomtest(k, n, alternative="less")
        assert float(lower_bound(k, n, confidence=confidence)) == pytest.approx(
            greater.proportion_ci(confidence, method="wilson").low, abs=1e-12)
        assert float(upper_bound(k, n, confidence=confidence)) == pytest.approx(
            less.proportion_ci(confidence, method="wilson").high, abs=1e-12)
        assert float(lower_bound(k, n, confidence=confidence, method="clopper-pearson")) == pytest.approx(
            greater.proportion_ci(confidence, method="exact").low, abs=1e-12)
        assert float(upper_bound(k, n, confidence=confidence, method="clopper-pearson")) == pytest.approx(
            less.proportion_ci(confidence, method="exact").high, abs=1e-12)
    two_sided = binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert proportion_interval(k, n) == pytest.approx((two_sided.low, two_sided.high), abs=1e-12)


@pytest.mark.parametrize(("k", "n"), CASES)
def test_monitoring_interval_matches_its_old_formula(k: int, n: int) -> None:
    # The old code used z = 1.96; the exact 97.5 % normal quantile (1.95996...) moves the
    # ends by less than 1e-5, below the 4 decimals the monitoring JSON keeps (up to rounding).
    assert proportion_interval(k, n) == pytest.approx(wilson_as_monitoring_wrote_it(k, n), abs=1e-5)
