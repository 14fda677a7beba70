"""Metric functions on hand-computed cases, cross-checked against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from cimcoder.eval import metrics as M

# Three stays coded over five codes.
#  s1 "Pneumopathie franche lobaire aiguë à pneumocoque, HTA":         J13, I10
#  s2 "Insuffisance cardiaque congestive sur FA permanente":           I50.0, I48.2
#  s3 "Diabète de type 2 insulinotraité, HTA":                         E11.9, I10
LABELS = ["J13", "I10", "I50.0", "I48.2", "E11.9"]
Y = np.array(
    [
        [1, 1, 0, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 1, 0, 0, 1],
    ],
    dtype=bool,
)
S = np.array(
    [
        [0.9, 0.2, 0.6, 0.1, 0.05],  # ranks: J13 (gold), I50.0, I10 (gold), I48.2, E11.9
        [0.1, 0.3, 0.8, 0.4, 0.2],  # ranks: I50.0 (gold), I48.2 (gold), ...
        [0.7, 0.6, 0.1, 0.2, 0.3],  # ranks: J13, I10 (gold), E11.9 (gold)
    ]
)


def test_micro_prf_hand_computed() -> None:
    d = S >= 0.5
    # Emitted: s1 {J13, I50.0}, s2 {I50.0}, s3 {J13, I10}: 5 emitted, 3 right, 6 gold.
    m = M.micro_prf(Y, d)
    assert (m.tp, m.fp, m.fn) == (3, 2, 3)
    assert m.precision == 3 / 5
    assert m.recall == 3 / 6
    assert m.f1 == pytest.approx(2 * (3 / 5) * (3 / 6) / (3 / 5 + 3 / 6))


def test_out_of_space_gold_counts_as_missed() -> None:
    d = S >= 0.5
    # s2 also had R06.0 (dyspnée), which the model cannot score.
    m = M.micro_prf(Y, d, n_gold=[2, 3, 2])
    assert m.recall == 3 / 7
    assert M.recall_at_k(Y, S, 2, n_gold=[2, 3, 2]) == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    with pytest.raises(M.MetricInputError):
        M.micro_prf(Y, d, n_gold=[1, 1, 1])


def test_micro_and_macro_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.random((40, 7)) < 0.3
    d = rng.random((40, 7)) < 0.35
    y[:, 6] = False
    d[:, 6] = False  # a code neither coded nor predicted: left out of the macro average
    for avg, ours in (("micro", M.micro_prf(y, d)), ("macro", M.macro_prf(y[:, :6], d[:, :6]))):
        p, r, f, _ = precision_recall_fscore_support(y if avg == "micro" else y[:, :6],
                                                     d if avg == "micro" else d[:, :6],
                                                     average=avg, zero_division=0)
        assert ours.precision == pytest.approx(p)
        assert ours.recall == pytest.approx(r)
        assert ours.f1 == pytest.approx(f)
    assert M.macro_prf(y, d) == M.macro_prf(y[:, :6], d[:, :6])


def test_precision_and_recall_at_k() -> None:
    # top-2: s1 {J13, I50.0} 1 hit, s2 {I50.0, I48.2} 2 hits, s3 {J13, I10} 1 hit.
    assert M.precision_at_k(Y, S, 2) == pytest.approx((1 / 2 + 2 / 2 + 1 / 2) / 3)
    assert M.recall_at_k(Y, S, 2) == pytest.approx((1 / 2 + 2 / 2 + 1 / 2) / 3)
    assert M.precision_at_k(Y, S, 1) == pytest.approx(2 / 3)
    assert M.recall_at_k(Y, S, 5) == 1.0


def test_map_hand_computed() -> None:
    # s1: gold at ranks 1 and 3 -> (1/1 + 2/3) / 2 ; s2: ranks 1, 2 -> 1 ; s3: ranks 2, 3 -> (1/2 + 2/3) / 2
    expected = ((1 + 2 / 3) / 2 + 1.0 + (1 / 2 + 2 / 3) / 2) / 3
    assert M.mean_average_precision(Y, S) == pytest.approx(expected)
    # An out-of-space gold code in s2 halves nothing but adds to its denominator.
    expected_oos = ((1 + 2 / 3) / 2 + 2 / 3 + (1 / 2 + 2 / 3) / 2) / 3
    assert M.mean_average_precision(Y, S, n_gold=[2, 3, 2]) == pytest.approx(expected_oos)


def test_map_matches_sklearn_per_stay_average_precision() -> None:
    rng = np.random.default_rng(1)
    y = rng.random((30, 12)) < 0.25
    y[:, 0] = True  # every stay has a gold code
    s = rng.random((30, 12))  # continuous: no ties
    expected = np.mean([average_precision_score(y[i], s[i]) for i in range(30)])
    assert M.mean_average_precision(y, s) == pytest.approx(expected)


def test_map_skips_stays_without_gold() -> None:
    y = np.array([[1, 0], [0, 0]], dtype=bool)
    s = np.array([[0.2, 0.9], [0.5, 0.5]])
    assert M.mean_average_precision(y, s) == 0.5


def test_auc_matches_sklearn() -> None:
    rng = np.random.default_rng(2)
    y = rng.random((50, 6)) < 0.3
    s = np.round(rng.random((50, 6)) + 0.4 * y, 1)  # rounded: ties are present
    y[:, 5] = False  # one class only: excluded from the macro mean
    assert M.micro_auc(y, s) == pytest.approx(roc_auc_score(y.ravel(), s.ravel()))
    expected_macro = np.mean([roc_auc_score(y[:, j], s[:, j]) for j in range(5)])
    assert M.macro_auc(y, s) == pytest.approx(expected_macro)


def test_collapse_to_category_takes_any_gold_and_max_score() -> None:
    labels = ["I50.0", "I50.1", "I10"]
    y = np.array([[0, 1, 0]], dtype=bool)
    s = np.array([[0.7, 0.2, 0.4]])
    gy, gs, groups = M.collapse_to_groups(y, s, labels, lambda c: c[:3])
    assert groups == ["I10", "I50"]
    assert gy.tolist() == [[False, True]]
    assert gs.tolist() == [[0.4, 0.7]]


def test_principal_diagnosis_accuracy() -> None:
    acc, n = M.principal_diagnosis_accuracy(S, LABELS, ["J13", "I48.2", None])
    # s1 top = J13 (right), s2 top = I50.0 (DP was I48.2: wrong), s3 unknown DP (left out).
    assert (acc, n) == (1 / 2, 2)


def test_breakdown_by_group() -> None:
    groups = {"J13": "X", "I10": "IX", "I50.0": "IX", "I48.2": "IX", "E11.9": "IV"}
    out = M.breakdown(Y, S, LABELS, groups, decisions=S >= 0.5)
    assert set(out) == {"IV", "IX", "X"}
    # Chapter X (J13): gold in s1 only, emitted in s1 and s3 -> precision 1/2, recall 1.
    assert out["X"]["micro_precision"] == 1 / 2
    assert out["X"]["micro_recall"] == 1.0
    assert out["IX"]["n_codes"] == 3


def test_bad_shapes_are_refused_clearly() -> None:
    with pytest.raises(M.MetricInputError, match="shape mismatch"):
        M.mean_average_precision(Y, S[:, :3])
    with pytest.raises(M.MetricInputError, match="NaN"):
        M.micro_auc(Y, np.full(Y.shape, np.nan))


def test_best_f1_threshold_hand_computed() -> None:
    # Pairs by decreasing score: 0.9 J13 (gold), 0.8 (no), 0.7 (no), 0.6 (gold), 0.4 (gold),
    # 0.3 (no); 3 gold codes. Cutting after k pairs gives F1 = 2 tp / (k + 3):
    # 2/4, 2/5, 2/6, 4/7, 6/8, 6/9 -> best 6/8 at 0.4.
    y = np.array([[1, 0, 1], [0, 1, 0]], dtype=bool)
    s = np.array([[0.9, 0.8, 0.4], [0.7, 0.6, 0.3]])
    assert M.best_f1_threshold(y, s) == (0.4, pytest.approx(6 / 8))
    assert M.micro_prf(y, s >= 0.4).f1 == pytest.approx(6 / 8)
    # A gold code outside the label space: 4 gold codes, best is still 0.4 with 6/9.
    assert M.best_f1_threshold(y, s, n_gold=[3, 1]) == (0.4, pytest.approx(6 / 9))
    # Tied scores are cut together; no gold code at all: no threshold.
    tied = np.array([[0.5, 0.5, 0.1]])
    assert M.best_f1_threshold(np.array([[1, 0, 0]], dtype=bool), tied) == (0.5, pytest.approx(2 / 3))
    assert M.best_f1_threshold(np.zeros((2, 3), dtype=bool), s) is None


def test_best_f1_threshold_is_the_brute_force_optimum() -> None:
    rng = np.random.default_rng(4)
    y = rng.random((40, 12)) < 0.2
    s = np.round(np.clip(y * 0.3 + rng.random((40, 12)) * 0.7, 0, 1), 2)  # with ties
    t, f1 = M.best_f1_threshold(y, s)
    brute = max(M.micro_prf(y, s >= v).f1 for v in np.unique(s))
    assert f1 == pytest.approx(brute)
    _, _, f, _ = precision_recall_fscore_support(y, s >= t, average="micro", zero_division=0)
    assert f == pytest.approx(f1)
