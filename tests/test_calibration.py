"""Calibration: ECE goes down on held-out data, hierarchy pooling, serialisation."""

from __future__ import annotations

import numpy as np
import pytest
from test_eval_synthetic import FREQUENT, RARE, synthetic_scores

from cimcoder.eval.calibration import (
    CalibrationError,
    Calibrator,
    expected_calibration_error,
    reliability,
)


# Temperature alone cannot shift a pooled base rate, so it is only asked to help.
@pytest.mark.parametrize(("method", "factor"), [("isotonic", 3), ("platt", 3), ("temperature", 1)])
def test_calibration_reduces_ece_on_held_out_stays(method: str, factor: float) -> None:
    y_fit, s_fit, labels = synthetic_scores(1500, seed=0)
    y_new, s_new, _ = synthetic_scores(1500, seed=1)
    cal = Calibrator.fit(y_fit, s_fit, labels, method=method)
    before = expected_calibration_error(y_new, s_new)
    after = expected_calibration_error(y_new, cal.apply(s_new, labels))
    assert before > 0.2  # the synthetic model is badly over-confident
    assert after < before / factor


def test_isotonic_per_code_only_with_enough_positives() -> None:
    y, s, labels = synthetic_scores(800, seed=2)
    cal = Calibrator.fit(y, s, labels, method="isotonic", min_positives=20)
    # Frequent codes (~160 positive stays each) get their own map ...
    assert all(cal.code_node[c] == f"code:{c}" for c in FREQUENT)
    # ... rare K codes (~16 each) are pooled with their neighbours unless they reach 20.
    n_pos = dict(zip(labels, y.sum(axis=0), strict=True))
    pooled = [c for c in RARE if n_pos[c] < 20]
    assert len(pooled) > 20
    assert all(cal.code_node[c].split(":")[0] in {"category", "chapter", "global"} for c in pooled)
    assert all(cal.code_node[c] == f"code:{c}" for c in RARE if n_pos[c] >= 20)
    # A code never seen at fit time uses its chapter's pooled map.
    assert cal.node_of("K99.9") in cal.nodes


def test_calibrated_probabilities_are_monotone_per_code_and_round_trip() -> None:
    y, s, labels = synthetic_scores(600, seed=3)
    cal = Calibrator.fit(y, s, labels)
    grid = np.tile(np.linspace(0, 1, 101)[:, None], (1, len(labels)))
    out = cal.apply(grid, labels)
    assert np.all(np.diff(out, axis=0) >= -1e-12)
    again = Calibrator.from_dict(cal.to_dict())
    assert np.array_equal(again.apply(grid, labels), out)


def test_reliability_bins_hand_computed() -> None:
    y = np.array([[1, 0, 0, 1]], dtype=bool)
    p = np.array([[0.95, 0.05, 0.15, 0.55]])
    rel = reliability(y, p, n_bins=10)
    assert rel["bins"][0]["count"] == 1 and rel["bins"][0]["observed"] == 0.0
    assert rel["bins"][9]["observed"] == 1.0
    # |0-0.05| + |0-0.15| + |1-0.55| + |1-0.95|, each with weight 1/4
    assert rel["ece"] == pytest.approx((0.05 + 0.15 + 0.45 + 0.05) / 4)


def test_bad_inputs_are_refused() -> None:
    y, s, labels = synthetic_scores(50, seed=4)
    with pytest.raises(CalibrationError, match="do not match"):
        Calibrator.fit(y, s[:, :3], labels)
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        Calibrator.fit(y, s, labels, method="magic")  # type: ignore[arg-type]
    with pytest.raises(CalibrationError, match="malformed"):
        Calibrator.from_dict({"nodes": {}})
