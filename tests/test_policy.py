"""Decision policy: lower-bound rule, held-out precision, inheritance, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_eval_synthetic import FREQUENT, RARE, synthetic_scores

from cimcoder.eval import cli as eval_cli
from cimcoder.eval.calibration import Calibrator
from cimcoder.eval.metrics import best_f1_threshold
from cimcoder.eval.policy import (
    AUTO,
    DEFAULT_MAX_REVIEW,
    DEFAULT_MIN_REVIEW_PROBABILITY,
    DEFAULT_REVIEW_BUDGET,
    REJECT,
    REVIEW,
    CodePolicy,
    CrossFittedPolicy,
    DecisionPolicy,
    PolicyError,
    PolicyMismatchError,
    auto_threshold,
    lower_bound,
    review_threshold,
)


@pytest.fixture(scope="module")
def fitted() -> tuple[DecisionPolicy, np.ndarray, np.ndarray, list[str]]:
    y, s, labels = synthetic_scores(3000, seed=0)
    # The mechanisms below are checked under the strict settings (95 % bound, per-code maps).
    policy = DecisionPolicy.fit(y, s, labels, target_precision=0.95, edition="cim10-fr-test",
                                confidence=0.95, calibration="isotonic",
                                fitted_on={"data": "synthetic", "half": "A"})
    y_new, s_new, _ = synthetic_scores(3000, seed=1)
    return policy, y_new, s_new, labels


def test_wilson_and_clopper_pearson_bounds() -> None:
    # 19 right out of 20 auto-coded: 95% point estimate, yet far from a 95% guarantee.
    assert float(lower_bound(19, 20)) == pytest.approx(0.8040, abs=1e-3)
    assert float(lower_bound(19, 20, method="clopper-pearson")) == pytest.approx(0.7839, abs=1e-3)
    assert float(lower_bound(0, 0)) == 0.0
    # Even a perfect record needs enough cases: 40/40 does not certify 95%, 80/80 does.
    assert float(lower_bound(40, 40)) < 0.95 < float(lower_bound(80, 80))


def test_auto_threshold_uses_the_lower_bound_not_the_point_estimate() -> None:
    # 80 pairs at 0.9, all right; 4 wrong at 0.55; 60 right at 0.5; negatives at 0.1.
    p = np.r_[np.full(80, 0.9), np.full(4, 0.55), np.full(60, 0.5), np.full(200, 0.1)]
    y = np.r_[np.ones(80), np.zeros(4), np.ones(60), np.zeros(200)].astype(bool)
    # Down to 0.5 the point estimate is 140/144 = 97.2%, but its lower bound is 94.0% < 95%:
    assert float(lower_bound(140, 144)) < 0.95
    assert auto_threshold(y, p, 0.95) == (0.9, 80, 80)
    # With a 93% target the bound is reached at 0.5 (the lowest threshold is taken).
    assert auto_threshold(y, p, 0.93) == (0.5, 144, 140)
    # Too few examples: nothing can be promised.
    assert auto_threshold(y[:30], p[:30], 0.95) is None


def test_review_threshold_keeps_the_target_recall() -> None:
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    y = np.ones(10, dtype=bool)
    assert review_threshold(y, p, 0.8) == 0.2  # keeps 8 of 10 (0.9 ... 0.2)
    assert review_threshold(y, p, 1.0) == 0.05
    assert review_threshold(np.zeros(3, dtype=bool), p[:3], 0.9) is None


def test_held_out_auto_precision_lands_near_the_target(fitted) -> None:
    policy, y_new, s_new, labels = fitted
    d = policy.decide(policy.calibrate(s_new, labels), labels)
    auto = d == AUTO
    precision = (y_new & auto).sum() / auto.sum()
    assert abs(precision - 0.95) <= 0.02
    # and automates a real share of the codes, with the review band keeping recall
    assert (y_new & auto).sum() / y_new.sum() > 0.5
    assert (y_new & (d == REJECT)).sum() / y_new.sum() < 0.08
    assert set(np.unique(d)) == {AUTO, REVIEW, REJECT}


def test_higher_target_means_higher_measured_precision_and_less_automation() -> None:
    y, s, labels = synthetic_scores(2000, seed=5)
    y_new, s_new, _ = synthetic_scores(2000, seed=6)
    measured = []
    for target in (0.85, 0.95, 0.98):
        pol = DecisionPolicy.fit(y, s, labels, target_precision=target)
        auto = pol.decide(pol.calibrate(s_new, labels), labels) == AUTO
        measured.append(((y_new & auto).sum() / auto.sum(), auto.sum()))
    assert measured[0][0] < measured[1][0] < measured[2][0]
    assert measured[0][1] > measured[1][1] > measured[2][1]


def test_rare_codes_inherit_from_category_chapter_or_global(fitted) -> None:
    policy, *_ = fitted
    for code in FREQUENT:
        assert policy.codes[code].auto_level == f"code:{code}"
    levels = {policy.codes[c].auto_level for c in RARE}
    # ~60 positives per digestive code cannot certify 95% alone; chapter XI pools them.
    assert levels <= {"category:" + c[:3] for c in RARE} | {"chapter:XI", "global"}
    assert "chapter:XI" in levels
    counts = policy.level_counts()
    assert counts["auto"]["code"] == len(FREQUENT)
    assert sum(counts["auto"].values()) == len(RARE) + len(FREQUENT)
    for cp in policy.codes.values():
        assert cp.auto is None or cp.review <= cp.auto


def test_code_with_bad_own_precision_is_vetoed() -> None:
    y, s, labels = synthetic_scores(3000, seed=7)
    # K30.0 is scored high whatever the text says: its own auto precision is poor. A pooled
    # calibration does not see it, so the inherited chapter threshold must be withdrawn.
    j = labels.index("K30.0")
    rng = np.random.default_rng(0)
    s[:, j] = np.where(rng.random(len(s)) < 0.005, 0.99, s[:, j])
    policy = DecisionPolicy.fit(y, s, labels, calibration="platt", confidence=0.95)
    assert policy.codes["K30.0"].auto is None
    assert policy.codes["K30.0"].vetoed


def test_save_load_round_trip_gives_identical_decisions(tmp_path, fitted) -> None:
    policy, _, s_new, labels = fitted
    path = policy.save(tmp_path)
    assert path.name == "policy.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["version"]["hash"] == policy.version["hash"]
    assert data["target_precision"] == 0.95 and data["labels"] == labels
    assert data["codes"]["I10"]["auto_level"] == "code:I10"
    again = DecisionPolicy.load(tmp_path, labels=labels)
    assert again.version == policy.version
    assert again.edition == policy.edition == "cim10-fr-test"
    p1, p2 = policy.calibrate(s_new, labels), again.calibrate(s_new, labels)
    assert np.array_equal(p1, p2)
    assert np.array_equal(policy.decide(p1, labels), again.decide(p2, labels))


def test_label_space_mismatch_is_refused(tmp_path, fitted) -> None:
    policy, _, s_new, labels = fitted
    policy.save(tmp_path)
    other = [*labels[:-1], "Z51.1"]
    with pytest.raises(PolicyMismatchError, match="another label space"):
        DecisionPolicy.load(tmp_path, labels=other)
    with pytest.raises(PolicyMismatchError, match="another order"):
        policy.decide(s_new, list(reversed(labels)))


def test_hand_edited_or_missing_policy_is_refused(tmp_path, fitted) -> None:
    policy, *_ = fitted
    with pytest.raises(PolicyError, match="run `cimcoder calibrate` first"):
        DecisionPolicy.load(tmp_path)
    path = policy.save(tmp_path)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["codes"]["I10"]["auto"] = 0.01
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(PolicyError, match="version hash"):
        DecisionPolicy.load(path)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(PolicyError, match="not valid JSON"):
        DecisionPolicy.load(path)


def test_bad_targets_are_refused() -> None:
    y, s, labels = synthetic_scores(100, seed=8)
    with pytest.raises(PolicyError, match="target precision"):
        DecisionPolicy.fit(y, s, labels, target_precision=1.5)


def test_auto_thresholds_pool_every_code_before_any_node_refines() -> None:
    # I10 has 100 true codes scored 0.9, all right: it certifies 95 % alone. Five codes of
    # other chapters have 8 each, also right at 0.9: 40/40 cannot certify 95 % (see the bounds
    # test). Bottom-up, I10 took its own threshold and the 40 left over certified nothing;
    # top-down, the 140 pooled pairs certify the global threshold every code inherits.
    codes = ["A01.0", "C18.9", "E11.9", "I10", "J18.9", "K35.8"]
    n = 400
    y = np.zeros((n, len(codes)), dtype=bool)
    for j in range(len(codes)):
        y[j * 8:(j + 1) * 8, j] = True
    y[:100, codes.index("I10")] = True
    s = np.where(y, 0.9, 0.1)
    policy = DecisionPolicy.fit(y, s, codes, calibration="none", min_positives=20)
    assert policy.codes["A01.0"].auto_level == "global"
    assert all(policy.codes[c].auto == 0.9 for c in codes)
    # A code whose own data certify another threshold replaces the one it inherits: I10 also
    # has 100 true codes at 0.8, all right, while the others score 0.8 on 20 stays each
    # without them (pooled, 0.8 is far below 95 %).
    i10 = codes.index("I10")
    y2, s2 = y.copy(), s.copy()
    y2[200:300, i10], s2[200:300, i10] = True, 0.8
    others = [j for j in range(len(codes)) if j != i10]
    for k, j in enumerate(others):
        s2[300 + k * 20:320 + k * 20, j] = 0.8
    refined = DecisionPolicy.fit(y2, s2, codes, calibration="none", min_positives=100)
    assert refined.codes["A01.0"].auto_level == "global" and refined.codes["A01.0"].auto == 0.9
    assert refined.codes["I10"].auto_level == "code:I10" and refined.codes["I10"].auto == 0.8


def test_small_codes_cannot_certify_their_own_threshold() -> None:
    # Scanning thresholds code by code certifies lucky streaks: a code with fewer true codes
    # than min_positives (here even I10, ~300) must inherit a pooled threshold instead.
    y, s, labels = synthetic_scores(1500, seed=9)
    policy = DecisionPolicy.fit(y, s, labels, min_positives=400)
    assert all(not policy.codes[c].auto_level.startswith("code:") for c in labels)
    assert policy.level_counts()["auto"]["code"] == 0


# A stay of a cardiology ward with many plausible codes, most of them only "possible".
CAP_LABELS = ["I10", "I50.0", "I50.1", "I48.2", "I25.1", "I21.4", "I35.0", "I44.7", "I49.5",
              "I26.9", "I27.2", "E11.9", "E66.0", "N18.3"]


def hand_policy(cap: int | None = 10, floor: float = 0.05, budget: float | None = None) -> DecisionPolicy:
    """Same thresholds for every code: auto at 0.9, review from 0.01."""
    labels = CAP_LABELS
    y = np.zeros((2, len(labels)), dtype=bool)
    y[0, 0] = True
    cal = Calibrator.fit(y, np.full(y.shape, 0.5), labels, method="none")
    codes = {c: CodePolicy(0.9, 0.01, "global", "global") for c in labels}
    return DecisionPolicy(labels=labels, calibrator=cal, codes=codes,
                          max_review_per_stay=cap, min_review_probability=floor, review_budget=budget)


def test_review_budget_sizes_the_list_to_the_codes_the_stay_is_expected_to_have() -> None:
    p = np.zeros((2, len(CAP_LABELS)))
    # Stay 1, a short letter: one sure code and a tail of unlikely ones; expected 0.95 + 0.3 + 0.2
    # + 0.1 (0.03 is below the floor) = 1.55 codes: ceil(1.55) + 1 = 3 places, one taken by auto.
    p[0, :5] = [0.95, 0.30, 0.20, 0.10, 0.03]
    # Stay 2, a long case: thirteen likely codes (expected 10.4, 12 places): the cap of 10 binds.
    p[1, :13] = 0.8
    budgeted = hand_policy(budget=1.0).decide(p, CAP_LABELS)
    assert list(budgeted[0, :5]) == [AUTO, REVIEW, REVIEW, REJECT, REJECT]
    assert (budgeted[1] == REVIEW).sum() == 10
    p[1, :13] = 0.4  # expected 5.2: ceil + 1 = 7 places, below the cap
    assert (hand_policy(budget=1.0).decide(p, CAP_LABELS)[1] == REVIEW).sum() == 7
    p[1, :13] = 0.8
    off = hand_policy(budget=None).decide(p, CAP_LABELS)
    assert list(off[0, :5]) == [AUTO, REVIEW, REVIEW, REVIEW, REJECT]
    assert (off[1] == REVIEW).sum() == 10
    # A larger budget keeps more; auto-coding is never cut by it.
    wide = hand_policy(budget=3.0).decide(p, CAP_LABELS)
    assert list(wide[0, :5]) == [AUTO, REVIEW, REVIEW, REVIEW, REJECT]
    p[0, :5] = 0.97
    assert (hand_policy(budget=1.0).decide(p, CAP_LABELS)[0, :5] == AUTO).all()


def test_review_cap_turns_the_eleventh_review_into_reject_and_never_caps_auto() -> None:
    policy = hand_policy()
    p = np.zeros((3, len(CAP_LABELS)))
    # Stay 1: eleven review candidates (0.60, 0.55, ..., 0.10) and three sure codes.
    p[0, :11] = np.linspace(0.60, 0.10, 11)
    p[0, 11:] = 0.95
    # Stay 2: thirteen sure codes, more than the cap, and one code at 3 % (below the floor).
    p[1, :13] = 0.97
    p[1, 13] = 0.03
    # Stay 3: exactly ten review candidates, listed in reverse order of probability.
    p[2, :10] = np.linspace(0.1, 0.5, 10)
    d = policy.decide(p, CAP_LABELS)
    assert list(d[0, :10]) == [REVIEW] * 10
    assert d[0, 10] == REJECT  # the 11th most probable review code (p = 0.10)
    assert list(d[0, 11:]) == [AUTO] * 3
    assert (d[1, :13] == AUTO).all()  # auto-coding is never capped
    assert d[1, 13] == REJECT  # 0.03 >= the review threshold 0.01, but below the 0.05 floor
    assert (d[2, :10] == REVIEW).all() and (d[2, 10:] == REJECT).all()
    # Rows are independent: deciding one stay alone gives the same answer.
    assert np.array_equal(policy.decide(p[:1], CAP_LABELS), d[:1])
    # Uncapped view (what the report compares with): 11 reviews, and 0.03 goes to review.
    free = policy.decide(p, CAP_LABELS, review_cap=False)
    assert (free[0, :11] == REVIEW).all() and free[1, 13] == REVIEW
    # No cap at all, or a cap of 0 (nothing to review).
    assert (hand_policy(cap=None).decide(p, CAP_LABELS)[0, :11] == REVIEW).all()
    none = hand_policy(cap=0).decide(p, CAP_LABELS)
    assert not (none == REVIEW).any() and (none == AUTO).sum() == (d == AUTO).sum()


def test_review_cap_ties_are_broken_by_raw_score_then_label_order() -> None:
    # A step-function calibration maps twelve codes to the same 40 %.
    p = np.zeros((1, len(CAP_LABELS)))
    p[0, :12] = 0.4
    d = hand_policy().decide(p, CAP_LABELS)
    assert list(d[0, :12]) == [REVIEW] * 10 + [REJECT] * 2
    raw = np.zeros_like(p)
    raw[0, :12] = np.linspace(0.1, 0.2, 12)  # the model itself ranks the last ones first
    d = hand_policy().decide(p, CAP_LABELS, tiebreak=raw)
    assert list(d[0, :12]) == [REJECT] * 2 + [REVIEW] * 10
    with pytest.raises(PolicyError, match="tiebreak"):
        hand_policy().decide(p, CAP_LABELS, tiebreak=raw[:, :3])


def test_fit_stores_the_workload_limits_and_the_f1_threshold(tmp_path) -> None:
    y, s, labels = synthetic_scores(800, seed=12)
    policy = DecisionPolicy.fit(y, s, labels, max_review_per_stay=3, min_review_probability=0.1)
    assert policy.max_review_per_stay == 3 and policy.min_review_probability == 0.1
    assert policy.f1_threshold == best_f1_threshold(y, s)[0]  # raw scores, not calibrated
    d = policy.decide(policy.calibrate(s, labels), labels)
    assert (d == REVIEW).sum(axis=1).max() <= 3
    again = DecisionPolicy.load(policy.save(tmp_path), labels=labels)
    assert (again.max_review_per_stay, again.min_review_probability, again.f1_threshold) == \
        (3, 0.1, policy.f1_threshold)
    assert again.version == policy.version
    data = json.loads((tmp_path / "policy.json").read_text(encoding="utf-8"))
    assert data["format"] == 2
    assert data["review_cap"] == {"max_review_per_stay": 3, "min_review_probability": 0.1,
                                  "review_budget": DEFAULT_REVIEW_BUDGET}
    # Defaults, and the CLI's copies of them.
    default = DecisionPolicy.fit(y, s, labels)
    assert default.max_review_per_stay == DEFAULT_MAX_REVIEW == eval_cli.DEFAULT_MAX_REVIEW
    assert default.min_review_probability == DEFAULT_MIN_REVIEW_PROBABILITY \
        == eval_cli.DEFAULT_MIN_REVIEW_PROBABILITY
    assert default.review_budget == DEFAULT_REVIEW_BUDGET == eval_cli.DEFAULT_REVIEW_BUDGET
    with pytest.raises(PolicyError, match="review budget"):
        DecisionPolicy.fit(y, s, labels, review_budget=0.0)
    with pytest.raises(PolicyError, match="min review probability"):
        DecisionPolicy.fit(y, s, labels, min_review_probability=1.0)


def test_format_1_policy_files_still_load_without_cap(tmp_path, fitted) -> None:
    policy, _, s_new, labels = fitted
    old = DecisionPolicy(**{**policy.__dict__, "policy_format": 1})
    path = old.save(tmp_path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == 1 and "review_cap" not in data and "f1_threshold" not in data
    loaded = DecisionPolicy.load(path, labels=labels)
    assert loaded.max_review_per_stay is None and loaded.min_review_probability == 0.0
    assert loaded.f1_threshold is None
    p = loaded.calibrate(s_new, labels)
    assert np.array_equal(loaded.decide(p, labels), policy.decide(p, labels, review_cap=False))


def test_cross_fitted_decisions_never_see_their_own_stay() -> None:
    y, s, labels = synthetic_scores(1500, seed=11)
    fold = np.arange(len(y)) % 5
    cf = CrossFittedPolicy.fit(y, s, labels, fold, target_precision=0.9)
    d = cf.decide(cf.calibrate(s, labels), labels, tiebreak=s)
    # Rewrite the gold of fold 0 (every code flipped): the policy fitted on all the stays
    # changes, fold 0's own decisions must not (its policy never saw those stays).
    y2 = y.copy()
    y2[fold == 0] = ~y2[fold == 0]
    cf2 = CrossFittedPolicy.fit(y2, s, labels, fold, target_precision=0.9)
    d2 = cf2.decide(cf2.calibrate(s, labels), labels, tiebreak=s)
    assert (d2[fold == 0] == d[fold == 0]).all()
    assert (d2[fold != 0] != d[fold != 0]).any()
    whole = DecisionPolicy.fit(y, s, labels, target_precision=0.9)
    whole2 = DecisionPolicy.fit(y2, s, labels, target_precision=0.9)
    assert whole.thresholds()[0].tolist() != whole2.thresholds()[0].tolist()
    # Each row's F1 threshold is its fold policy's; halves keep their rows' policies.
    assert cf.f1_thresholds()[3] == cf.policies[3].f1_threshold
    half = cf.subset(fold < 2)
    assert half.n_folds == 5 and (half.fold == fold[fold < 2]).all()
    with pytest.raises(PolicyError, match="at least 2 non-empty folds"):
        CrossFittedPolicy.fit(y, s, labels, np.zeros(len(y), dtype=int))


def test_default_policy_lands_near_the_target_on_new_stays() -> None:
    # Default settings (one pooled Platt map, 95 % bound) on over-confident scores.
    y, s, labels = synthetic_scores(3000, seed=21)
    y_new, s_new, _ = synthetic_scores(3000, seed=22)
    for target in (0.9, 0.95):
        pol = DecisionPolicy.fit(y, s, labels, target_precision=target)
        assert pol.calibrator.method == "platt" and pol.confidence == 0.95
        auto = pol.decide(pol.calibrate(s_new, labels), labels) == AUTO
        assert abs((y_new & auto).sum() / auto.sum() - target) <= 0.02


def test_never_auto_withdraws_auto_coding_but_keeps_review(fitted) -> None:
    # A model's veto (e.g. every mention of the code negated) beats any probability.
    policy, _, s_new, labels = fitted
    probs = policy.calibrate(s_new, labels)
    free = policy.decide(probs, labels)
    assert (free == "auto").any()
    veto = free == "auto"
    vetoed = policy.decide(probs, labels, never_auto=veto)
    assert not (vetoed == "auto").any()
    assert (vetoed[veto] != "reject").any()  # they compete for review instead
    with pytest.raises(PolicyError):
        policy.decide(probs, labels, never_auto=veto[:, :2])


def test_auto_thresholds_are_fitted_on_the_codes_that_can_be_auto_coded() -> None:
    y, s, labels = synthetic_scores(3000, seed=0)
    # The model vetoes half of its most confident wrong codes: what remains is more precise,
    # so a threshold certified on the eligible pairs reaches at least as far.
    rng = np.random.default_rng(0)
    veto = (~y) & (s > np.quantile(s, 0.9)) & (rng.random(s.shape) < 0.5)
    plain = DecisionPolicy.fit(y, s, labels, target_precision=0.95)
    aware = DecisionPolicy.fit(y, s, labels, target_precision=0.95, never_auto=veto)
    d_plain = plain.decide(plain.calibrate(s, labels), labels, never_auto=veto)
    d_aware = aware.decide(aware.calibrate(s, labels), labels, never_auto=veto)
    assert (d_aware == "auto").sum() >= (d_plain == "auto").sum()
    right = (y & (d_aware == "auto")).sum() / max((d_aware == "auto").sum(), 1)
    assert right >= 0.93
