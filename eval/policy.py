"""Per-code decision policy: auto-code, send to review, or reject.

For each code, on calibrated probabilities ``p``:

- **auto** when ``p >= auto threshold``;
- **review** when ``review threshold <= p < auto threshold``;
- **reject** below the review threshold.

The auto threshold is the *lowest* threshold at which the auto-coded precision's one-sided
lower confidence bound (Wilson or Clopper-Pearson) still reaches the target precision the DIM
sets: a point estimate of 95% on 40 codes is not a promise of 95%. The bound's confidence is
95% by default (`confidence`). A laxer bound automates more where the model is good and many
codes clear the threshold, but lets a handful of lucky codes certify a weak model: on
CodiEsp-FR dev at an 80% bound, the TF-IDF baseline auto-coded 17 codes at 82% for a 95%
target. The promise is checked on stays the policy did not see: the held-out (cross-fitted)
precision is measured and reported with every policy, and QC sampling checks it in production.
The review threshold keeps ``target_recall`` of the true codes out of "reject".

The review band must stay reviewable by a DIM coder: with a weak model, the threshold that
keeps 95% of the true codes can send hundreds of codes per stay to review. Two workload
limits therefore apply on top of it, per stay: a code goes to review only if its calibrated
probability is at least ``min_review_probability``, and at most ``max_review_per_stay``
codes (the most probable) go to review; the others are rejected. Auto-coding is never capped.
A third limit sizes the list to the stay (`review_budget`): auto-coded plus review codes are at
most ``ceil(review_budget * expected) + 1``, where ``expected`` is the sum of the stay's
calibrated probabilities above the floor (the number of true codes the model expects). A
discharge letter with three diagnoses then gets a short list, a case report with fifteen a long
one. On CodiEsp-FR dev (hybrid of `make demo`, 10.3 codes per stay, expected and true code
counts correlated at 0.85) a budget of 1 cut the review list from 10.0 to 7.0 codes per stay
for 2.9 points of recall (auto + review 53.1 % -> 50.2 %); `None` turns it off.
The defaults (10 codes, 5 %) follow the coder: a stay's review list should read in a minute
or two, and below a 5 % calibrated probability a coder would check more than 20 suggestions
per true code found, which is slower than coding it from the report.

For model comparisons, the policy also stores ``f1_threshold``: the one global threshold on
*raw* model scores that maximises micro-F1 on the fitting data, applied unchanged elsewhere.

Auto thresholds are fitted top-down: one threshold on the pooled data of every code
("global"), then each chapter, 3-character category and code with ``min_positives`` true codes
of its own whose data certify a threshold replaces the one it inherits (the most specific
wins). Fitted bottom-up instead (each chapter on what its codes left, the global node on what
the chapters left), every small node has to clear the bound alone and most fall short: on
CodiEsp-FR dev it auto-coded 6.2 % of the true codes (held-out precision 96.8 %) where
top-down reaches 10.9 % (98.2 %), rare codes included (32 of 35 right). Review thresholds
(a recall, not a promise) are fitted bottom-up: a code whose own data cannot support one
inherits the threshold of its category, then its chapter, then all remaining codes. The level
each code uses is recorded. An inherited auto threshold is withdrawn from a code whose own
data show a precision significantly *below* the target (upper bound < target).

The policy is saved as ``policy.json`` next to the model and applied unchanged at inference.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cimcoder.errors import CimcoderError
from cimcoder.eval.calibration import CalibrationMethod, Calibrator
from cimcoder.eval.defaults import (
    DEFAULT_CALIBRATION,
    DEFAULT_CONFIDENCE,
    DEFAULT_MAX_REVIEW,
    DEFAULT_MIN_REVIEW_PROBABILITY,
    DEFAULT_REVIEW_BUDGET,
)
from cimcoder.eval.hierarchy import LEVELS, Hierarchy, fit_by_level, fit_top_down, node_name
from cimcoder.eval.intervals import BoundMethod, lower_bound, upper_bound
from cimcoder.eval.metrics import best_f1_threshold
from cimcoder.run_folder import POLICY_FILE, read_json, write_json_atomic

logger = logging.getLogger(__name__)

POLICY_FORMAT = 2
READABLE_FORMATS = (1, 2)  # format 1: no review cap, no F1 threshold
AUTO, REVIEW, REJECT = "auto", "review", "reject"


class PolicyError(CimcoderError):
    """A decision policy cannot be fitted, read, or applied to this model."""


class PolicyMismatchError(PolicyError):
    """The policy was fitted for another label space than the model's."""


# --------------------------------------------------------------------------- thresholds


def auto_threshold(
    y: np.ndarray, p: np.ndarray, target_precision: float, *, confidence: float = 0.95,
    method: BoundMethod = "wilson",
) -> tuple[float, int, int] | None:
    """Lowest threshold whose auto-coded set has precision lower bound >= target.

    `y`, `p`: flat gold flags and calibrated probabilities of the (stay, code) pairs of a
    node. Returns (threshold, auto-coded pairs, of which correct) or None when no
    threshold is supported by the data.
    """
    yv = np.asarray(y, dtype=bool).ravel()
    pv = np.asarray(p, dtype=float).ravel()
    if not yv.any():
        return None
    order = np.argsort(-pv, kind="stable")
    ps, ys = pv[order], yv[order]
    tp = np.cumsum(ys)
    n = np.arange(1, ps.size + 1)
    # A threshold keeps every tie of its value: only the last index of each run counts.
    last_of_run = np.ones(ps.size, dtype=bool)
    last_of_run[:-1] = ps[:-1] != ps[1:]
    cand = np.flatnonzero(last_of_run & (ps > 0))
    if cand.size == 0:
        return None
    lb = lower_bound(tp[cand], n[cand], confidence=confidence, method=method)
    good = cand[lb >= target_precision]
    if good.size == 0:
        return None
    i = int(good.max())
    return float(ps[i]), int(n[i]), int(tp[i])


def review_threshold(y: np.ndarray, p: np.ndarray, target_recall: float) -> float | None:
    """Highest threshold keeping at least `target_recall` of the true pairs (None: no positives)."""
    yv = np.asarray(y, dtype=bool).ravel()
    pos = np.sort(np.asarray(p, dtype=float).ravel()[yv])[::-1]
    if pos.size == 0:
        return None
    k = max(1, math.ceil(target_recall * pos.size - 1e-9))
    return float(pos[min(k, pos.size) - 1])


# --------------------------------------------------------------------------- policy


def cross_fitted_probabilities(
    y: np.ndarray, s: np.ndarray, labels: Sequence[str],
    fit: Callable[[np.ndarray | slice], Calibrator], *, n_folds: int = 5,
) -> np.ndarray:
    """Out-of-fold calibrated probabilities: fold k is calibrated by a map fitted on the others.

    Folds are assigned round-robin on the row order (deterministic). Falls back to fewer
    folds on tiny data; with fewer than 2 folds possible, the in-sample map is used.
    """
    n = y.shape[0]
    k = min(n_folds, n)
    if k < 2:
        return fit(slice(None)).apply(s, labels)
    fold = np.arange(n) % k
    out = np.empty_like(s, dtype=float)
    for f in range(k):
        train = np.flatnonzero(fold != f)
        test = np.flatnonzero(fold == f)
        cal = fit(train)
        out[test] = cal.apply(s[test], labels)
    return out


@dataclass
class CodePolicy:
    """Thresholds of one code and where they come from."""

    auto: float | None  # None: never auto-coded
    review: float
    auto_level: str  # node key, e.g. "code:I50.0", "category:I50", "chapter:IX", "global"
    review_level: str
    vetoed: bool = False  # inherited auto threshold withdrawn: own data below target

    def to_dict(self) -> dict[str, Any]:
        return {
            "auto": self.auto,
            "review": self.review,
            "auto_level": self.auto_level,
            "review_level": self.review_level,
            "vetoed": self.vetoed,
        }


@dataclass
class DecisionPolicy:
    """Calibration + per-code thresholds, fitted once and applied unchanged at inference."""

    labels: list[str]
    calibrator: Calibrator
    codes: dict[str, CodePolicy]
    target_precision: float = 0.95
    target_recall: float = 0.95
    confidence: float = DEFAULT_CONFIDENCE
    bound: BoundMethod = "wilson"
    min_positives: int = 50
    terminology: Literal["cim10", "cim11"] = "cim10"
    edition: str | None = None  # terminology edition of the model's label space
    fitted_on: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    content_hash: str = ""
    # Coder workload, per stay: None = no cap (format-1 policies).
    max_review_per_stay: int | None = DEFAULT_MAX_REVIEW
    min_review_probability: float = DEFAULT_MIN_REVIEW_PROBABILITY
    # Auto + review per stay <= ceil(budget * expected codes) + 1; None = off (older policies).
    review_budget: float | None = None
    # Global micro-F1-optimal threshold on raw scores of the fitting data (model comparisons).
    f1_threshold: float | None = None
    policy_format: int = POLICY_FORMAT

    # ------------------------------------------------------------------ fit

    @classmethod
    def fit(
        cls,
        y_true: np.ndarray,
        scores: np.ndarray,
        labels: Sequence[str],
        *,
        target_precision: float = 0.95,
        target_recall: float = 0.95,
        confidence: float = DEFAULT_CONFIDENCE,
        bound: BoundMethod = "wilson",
        calibration: CalibrationMethod = DEFAULT_CALIBRATION,
        min_positives: int = 50,
        terminology: Literal["cim10", "cim11"] = "cim10",
        edition: str | None = None,
        fitted_on: dict[str, Any] | None = None,
        calibrator: Calibrator | None = None,
        calibration_folds: int = 5,
        max_review_per_stay: int | None = DEFAULT_MAX_REVIEW,
        min_review_probability: float = DEFAULT_MIN_REVIEW_PROBABILITY,
        review_budget: float | None = DEFAULT_REVIEW_BUDGET,
        n_gold: np.ndarray | Sequence[int] | None = None,
        never_auto: np.ndarray | None = None,
    ) -> DecisionPolicy:
        """Fit calibration (unless given) then thresholds on held-out gold and raw scores.

        Thresholds are chosen on *cross-fitted* calibrated probabilities: each stay's scores
        are calibrated by maps fitted without it (`calibration_folds` folds), because a
        per-code isotonic map judged on its own fitting stays looks better than it is and
        would push the thresholds too low. The saved calibrator is fitted on all stays.
        With a given `calibrator`, its in-sample probabilities are used as they are.

        `max_review_per_stay` / `min_review_probability` / `review_budget` bound the review
        band per stay (see the module docstring). `n_gold` (per-stay count of all gold codes, including those
        outside the label space) only enters the choice of `f1_threshold`. `never_auto` ([n, L]
        bool, the model's vetoes) leaves those pairs out of the auto thresholds: what is
        certified is the precision of the codes that can be auto-coded.
        """
        if not 0.5 <= target_precision < 1.0:
            raise PolicyError(f"target precision must be in [0.5, 1), got {target_precision}")
        if not 0.0 < target_recall <= 1.0:
            raise PolicyError(f"target recall must be in (0, 1], got {target_recall}")
        if not 0.5 <= confidence < 1.0:
            raise PolicyError(f"confidence must be in [0.5, 1), got {confidence}")
        if max_review_per_stay is not None and max_review_per_stay < 0:
            raise PolicyError(f"max review per stay must be >= 0 (or None), got {max_review_per_stay}")
        if not 0.0 <= min_review_probability < 1.0:
            raise PolicyError(f"min review probability must be in [0, 1), got {min_review_probability}")
        if review_budget is not None and not 0.0 < review_budget <= 100.0:
            raise PolicyError(f"review budget must be in (0, 100] (or None), got {review_budget}")
        labels = list(labels)
        y = np.asarray(y_true, dtype=bool)
        s = np.asarray(scores, dtype=float)
        if y.shape != s.shape or y.ndim != 2 or y.shape[1] != len(labels):
            raise PolicyError(f"gold {y.shape}, scores {s.shape}, {len(labels)} labels do not match")
        if not y.any():
            raise PolicyError("the fitting data hold no gold code of the label space")
        def fit_calibrator(rows: np.ndarray | slice) -> Calibrator:
            return Calibrator.fit(y[rows], s[rows], labels, method=calibration,
                                  min_positives=min_positives, terminology=terminology)

        if calibrator is not None:
            cal = calibrator
            p = cal.apply(s, labels)
        else:
            cal = fit_calibrator(slice(None))
            p = cross_fitted_probabilities(y, s, labels, fit_calibrator, n_folds=calibration_folds) \
                if calibration != "none" else cal.apply(s, labels)
        hierarchy = Hierarchy(terminology)
        if never_auto is not None:
            veto = np.asarray(never_auto, dtype=bool)
            if veto.shape != p.shape:
                raise PolicyError(f"never_auto {veto.shape} does not match scores {p.shape}")
            p_auto = np.where(veto, -np.inf, p)
        else:
            p_auto = p

        def fit_auto(cols: np.ndarray) -> tuple[float | None] | None:
            # Scanning thresholds of hundreds of small nodes would certify some by luck
            # (winner's curse): a node needs `min_positives` true codes to get its own.
            if int(y[:, cols].sum()) < min_positives:
                return None
            found = auto_threshold(y[:, cols], p_auto[:, cols], target_precision,
                                   confidence=confidence, method=bound)
            return None if found is None else (found[0],)

        def never(cols: np.ndarray) -> tuple[float | None]:
            return (None,)

        auto_nodes, auto_of = fit_top_down(labels, hierarchy, fit_auto, never)

        def fit_review(cols: np.ndarray) -> float | None:
            yy = y[:, cols]
            if int(yy.sum()) < min_positives:
                return None
            return review_threshold(yy, p[:, cols], target_recall)

        def review_fallback(cols: np.ndarray) -> float:
            t = review_threshold(y[:, cols], p[:, cols], target_recall)
            if t is None:  # no positive at all among the leftover codes: use every positive
                t = review_threshold(y, p, target_recall)
            return float(t if t is not None else 0.0)

        review_nodes, review_of = fit_by_level(labels, hierarchy, fit_review, review_fallback)

        codes: dict[str, CodePolicy] = {}
        for j, code in enumerate(labels):
            a_key, r_key = auto_of[code], review_of[code]
            auto = auto_nodes[a_key][0]
            vetoed = False
            if auto is not None and not a_key.startswith("code:"):
                sel = p_auto[:, j] >= auto
                n_auto = int(sel.sum())
                if n_auto:
                    ub = upper_bound(int(y[sel, j].sum()), n_auto, confidence=confidence, method=bound)
                    if float(ub) < target_precision:
                        auto, vetoed = None, True
            review = float(review_nodes[r_key])
            if auto is not None:
                review = min(review, auto)
            codes[code] = CodePolicy(auto, review, a_key, r_key, vetoed)
        best = best_f1_threshold(y, s, n_gold)

        policy = cls(
            labels=labels,
            calibrator=cal,
            codes=codes,
            target_precision=target_precision,
            target_recall=target_recall,
            confidence=confidence,
            bound=bound,
            min_positives=min_positives,
            terminology=terminology,
            edition=edition,
            fitted_on=dict(fitted_on or {}),
            created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            max_review_per_stay=None if max_review_per_stay is None else int(max_review_per_stay),
            min_review_probability=float(min_review_probability),
            review_budget=None if review_budget is None else float(review_budget),
            f1_threshold=None if best is None else best[0],
        )
        policy.content_hash = policy._hash()
        logger.debug("decision policy fitted: %s; F1 threshold %s", policy.level_counts(),
                    policy.f1_threshold)
        return policy

    # ------------------------------------------------------------------ apply

    def check_labels(self, labels: Sequence[str]) -> None:
        """Raise PolicyMismatchError unless `labels` is exactly the policy's label list."""
        labels = list(labels)
        if labels == self.labels:
            return
        missing = [c for c in self.labels if c not in set(labels)]
        extra = [c for c in labels if c not in set(self.labels)]
        detail = (
            f"the model has {len(labels)} codes, the policy {len(self.labels)}; "
            f"{len(extra)} codes unknown to the policy (e.g. {extra[:3]}), "
            f"{len(missing)} policy codes missing from the model (e.g. {missing[:3]})"
            if missing or extra
            else "same codes in another order"
        )
        raise PolicyMismatchError(
            f"decision policy {self.version['hash'][:12]} was fitted for another label space: "
            f"{detail}. Re-run `cimcoder calibrate` for this model."
        )

    def calibrate(self, scores: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """Calibrated probabilities [n, L] of raw model scores."""
        self.check_labels(labels)
        return self.calibrator.apply(scores, self.labels)

    def thresholds(self) -> tuple[np.ndarray, np.ndarray]:
        """(auto, review) thresholds in label order; never-auto codes have +inf."""
        auto = np.array([np.inf if self.codes[c].auto is None else self.codes[c].auto for c in self.labels])
        review = np.array([self.codes[c].review for c in self.labels])
        return auto, review

    def decide(
        self, probs: np.ndarray, labels: Sequence[str], *, review_cap: bool = True,
        tiebreak: np.ndarray | None = None, never_auto: np.ndarray | None = None,
    ) -> np.ndarray:
        """Array [n, L] of "auto" / "review" / "reject" from calibrated probabilities.

        `never_auto` ([n, L] bool, from the model: e.g. every mention of the code negated)
        withdraws auto-coding where True; such a code competes for review like any other.

        Each row is one stay: the review floor and the per-stay cap apply row by row, keeping
        the most probable review codes. Calibration maps are step functions, so many codes
        can share a probability: `tiebreak` (the raw scores, [n, L]) orders them, then label
        order. `review_cap=False` gives the uncapped review band (what the cap costs).
        """
        self.check_labels(labels)
        p = np.asarray(probs, dtype=float)
        if p.ndim != 2 or p.shape[1] != len(self.labels):
            raise PolicyError(f"probabilities {p.shape} do not match {len(self.labels)} labels")
        tb = None if tiebreak is None else np.asarray(tiebreak, dtype=float)
        if tb is not None and tb.shape != p.shape:
            raise PolicyError(f"tiebreak {tb.shape} does not match probabilities {p.shape}")
        auto, review = self.thresholds()
        is_auto = p >= auto
        if never_auto is not None:
            veto = np.asarray(never_auto, dtype=bool)
            if veto.shape != p.shape:
                raise PolicyError(f"never_auto {veto.shape} does not match probabilities {p.shape}")
            is_auto &= ~veto
        is_review = (p >= review) & ~is_auto
        if review_cap:
            is_review &= p >= self.min_review_probability
            caps = self.review_caps(p, is_auto)
            if caps is not None:
                over = np.flatnonzero(is_review.sum(axis=1) > caps)
                if over.size:
                    cap = caps[over, None] if caps.ndim else caps
                    sub = np.where(is_review[over], p[over], -np.inf)
                    if tb is None:
                        order = np.argsort(-sub, axis=1, kind="stable")
                    else:
                        order = np.lexsort((-tb[over], -sub), axis=-1)
                    rank = np.empty_like(order)
                    np.put_along_axis(rank, order, np.arange(p.shape[1])[None, :].repeat(over.size, 0), axis=1)
                    is_review[over] &= rank < cap
        out = np.full(p.shape, REJECT, dtype="<U6")
        out[is_review] = REVIEW
        out[is_auto] = AUTO
        return out

    def review_caps(self, p: np.ndarray, is_auto: np.ndarray) -> np.ndarray | None:
        """Review codes allowed per stay: the fixed cap, and the stay's budget (expected codes
        + 1, less what is auto-coded); a scalar array for the cap alone, None for no limit."""
        caps = None if self.max_review_per_stay is None else np.asarray(self.max_review_per_stay)
        if self.review_budget is None:
            return caps
        expected = np.where(p >= self.min_review_probability, p, 0.0).sum(axis=1)
        room = np.ceil(self.review_budget * expected - 1e-9).astype(int) + 1 - is_auto.sum(axis=1)
        room = np.maximum(room, 0)
        return room if caps is None else np.minimum(room, caps)

    def level_counts(self) -> dict[str, dict[str, int]]:
        """Codes per level of the hierarchy their auto and review thresholds come from."""
        auto = dict.fromkeys(LEVELS, 0)
        review = dict.fromkeys(LEVELS, 0)
        never = vetoed = 0
        for cp in self.codes.values():
            auto[cp.auto_level.split(":")[0]] += 1
            review[cp.review_level.split(":")[0]] += 1
            never += cp.auto is None
            vetoed += cp.vetoed
        return {"auto": auto, "review": review, "never_auto": {"codes": never, "vetoed": vetoed}}

    def settings(self) -> dict[str, Any]:
        """The keyword arguments of `fit` that reproduce this policy's choices on other data."""
        return {
            "target_precision": self.target_precision,
            "target_recall": self.target_recall,
            "confidence": self.confidence,
            "bound": self.bound,
            "calibration": self.calibrator.method,
            "min_positives": self.min_positives,
            "terminology": self.terminology,
            "edition": self.edition,
            "max_review_per_stay": self.max_review_per_stay,
            "min_review_probability": self.min_review_probability,
            "review_budget": self.review_budget,
        }

    def with_review_cap(
        self, max_review_per_stay: int | None, min_review_probability: float,
        review_budget: float | Literal["same"] | None = "same",
    ) -> DecisionPolicy:
        """The same policy with other per-stay review limits (what-if for the report)."""
        budget = self.review_budget if review_budget == "same" else review_budget
        return dataclasses.replace(self, max_review_per_stay=max_review_per_stay,
                                   min_review_probability=min_review_probability, review_budget=budget)

    def node_of(self, code: str, level: str) -> str:
        return node_name(level, code, Hierarchy(self.terminology))

    # ------------------------------------------------------------------ persistence

    @property
    def version(self) -> dict[str, str]:
        return {"hash": self.content_hash or self._hash(), "created_at": self.created_at}

    def _content(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.policy_format >= 2:  # format 1 files must keep hashing as they were written
            extra = {
                "review_cap": {
                    "max_review_per_stay": self.max_review_per_stay,
                    "min_review_probability": self.min_review_probability,
                    # Absent when off, so that policies written before it keep their hash.
                    **({} if self.review_budget is None else {"review_budget": self.review_budget}),
                },
                "f1_threshold": self.f1_threshold,
            }
        return {
            "format": self.policy_format,
            "terminology": self.terminology,
            "edition": self.edition,
            "target_precision": self.target_precision,
            "target_recall": self.target_recall,
            "confidence": self.confidence,
            "bound": self.bound,
            "min_positives": self.min_positives,
            "fitted_on": self.fitted_on,
            "labels": self.labels,
            "calibration": self.calibrator.to_dict(),
            "codes": {c: self.codes[c].to_dict() for c in self.labels},
            **extra,
        }

    def _hash(self) -> str:
        blob = json.dumps(self._content(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        content = self._content()
        return {"version": self.version, **content, "levels": self.level_counts()}

    def save(self, path: str | Path) -> Path:
        """Write the policy; a folder gets `policy.json` inside it."""
        out = Path(path)
        if out.is_dir():
            out = out / POLICY_FILE
        self.content_hash = self._hash()
        return write_json_atomic(out, self.to_dict())

    @classmethod
    def load(cls, path: str | Path, labels: Sequence[str] | None = None) -> DecisionPolicy:
        """Read a policy (file or run folder); with `labels`, refuse another label space."""
        src = Path(path)
        if src.is_dir():
            src = src / POLICY_FILE
        if not src.is_file():
            raise PolicyError(f"no decision policy at {src}; run `cimcoder calibrate` first")
        try:
            data = read_json(src)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PolicyError(f"{src} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
            raise PolicyError(f"{src}: unsupported policy format {data.get('format')!r}"
                              if isinstance(data, dict) else f"{src}: not a policy object")
        try:
            fmt = int(data["format"])
            cap = data.get("review_cap") or {}
            f1_t = data.get("f1_threshold")
            label_list = [str(c) for c in data["labels"]]
            codes = {}
            for c in label_list:
                d = data["codes"][c]
                codes[c] = CodePolicy(
                    auto=None if d["auto"] is None else float(d["auto"]),
                    review=float(d["review"]),
                    auto_level=str(d["auto_level"]),
                    review_level=str(d["review_level"]),
                    vetoed=bool(d.get("vetoed", False)),
                )
            policy = cls(
                labels=label_list,
                calibrator=Calibrator.from_dict(data["calibration"]),
                codes=codes,
                target_precision=float(data["target_precision"]),
                target_recall=float(data["target_recall"]),
                confidence=float(data["confidence"]),
                bound=data["bound"],
                min_positives=int(data["min_positives"]),
                terminology=data.get("terminology", "cim10"),
                edition=data.get("edition"),
                fitted_on=dict(data.get("fitted_on") or {}),
                created_at=str(data["version"]["created_at"]),
                # Format 1 predates the workload limits: applied as written (no cap, no floor).
                max_review_per_stay=None if fmt < 2 or cap.get("max_review_per_stay") is None
                else int(cap["max_review_per_stay"]),
                min_review_probability=float(cap.get("min_review_probability", 0.0)) if fmt >= 2 else 0.0,
                review_budget=None if cap.get("review_budget") is None else float(cap["review_budget"]),
                f1_threshold=None if f1_t is None else float(f1_t),
                policy_format=fmt,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyError(f"{src}: malformed policy ({exc!r})") from None
        policy.content_hash = policy._hash()
        stored = data["version"].get("hash")
        if stored != policy.content_hash:
            raise PolicyError(
                f"{src}: content does not match its version hash (edited by hand?); "
                "re-run `cimcoder calibrate`"
            )
        if policy.policy_format < POLICY_FORMAT:
            logger.warning("%s: policy format %d has no review cap nor F1 threshold; "
                           "re-run `cimcoder calibrate` to get them", src, policy.policy_format)
        if labels is not None:
            policy.check_labels(labels)
        return policy


# --------------------------------------------------------------------------- cross-fitting


@dataclass
class CrossFittedPolicy:
    """K policies, policy k fitted on every stay outside fold k and applied to fold k only.

    It measures the *fitting procedure* on data it did not see, with all the data used in
    turn: each stay is calibrated and decided by a policy fitted without it, and the pooled
    decisions give the held-out auto precision of the policy fitted on all the stays (which
    has slightly more data than each fold's, so the estimate is, if anything, conservative).
    Rows are stays, in the order of the data it was fitted on; `fold[i]` is row i's fold.
    """

    policies: list[DecisionPolicy]
    fold: np.ndarray

    @classmethod
    def fit(
        cls, y_true: np.ndarray, scores: np.ndarray, labels: Sequence[str], fold: np.ndarray,
        **fit_kwargs: Any,
    ) -> CrossFittedPolicy:
        y = np.asarray(y_true, dtype=bool)
        s = np.asarray(scores, dtype=float)
        fold = np.asarray(fold, dtype=int)
        if fold.shape != (y.shape[0],):
            raise PolicyError(f"fold assignment {fold.shape} does not match {y.shape[0]} stays")
        n_folds = int(fold.max()) + 1 if fold.size else 0
        if n_folds < 2 or any(not (fold == k).any() for k in range(n_folds)):
            raise PolicyError(f"cross-fitting needs at least 2 non-empty folds, got {np.bincount(fold)}")
        n_gold = fit_kwargs.pop("n_gold", None)
        never_auto = fit_kwargs.pop("never_auto", None)
        policies = []
        for k in range(n_folds):
            keep = fold != k
            if not y[keep].any():
                raise PolicyError(f"fold {k}: the other folds hold no gold code to fit on")
            policies.append(DecisionPolicy.fit(
                y[keep], s[keep], labels,
                n_gold=None if n_gold is None else np.asarray(n_gold)[keep],
                never_auto=None if never_auto is None else np.asarray(never_auto)[keep],
                **fit_kwargs,
            ))
        return cls(policies, fold)

    @property
    def n_folds(self) -> int:
        return len(self.policies)

    def _check_rows(self, a: np.ndarray) -> None:
        if a.shape[0] != self.fold.shape[0]:
            raise PolicyError(f"{a.shape[0]} stays given, the cross-fit holds {self.fold.shape[0]}")

    def calibrate(self, scores: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        s = np.asarray(scores, dtype=float)
        self._check_rows(s)
        out = np.empty_like(s)
        for k, pol in enumerate(self.policies):
            rows = self.fold == k
            out[rows] = pol.calibrate(s[rows], labels)
        return out

    def decide(
        self, probs: np.ndarray, labels: Sequence[str], *, review_cap: bool = True,
        tiebreak: np.ndarray | None = None, never_auto: np.ndarray | None = None,
    ) -> np.ndarray:
        p = np.asarray(probs, dtype=float)
        self._check_rows(p)
        out = np.full(p.shape, REJECT, dtype="<U6")
        for k, pol in enumerate(self.policies):
            rows = self.fold == k
            out[rows] = pol.decide(p[rows], labels, review_cap=review_cap,
                                   tiebreak=None if tiebreak is None else tiebreak[rows],
                                   never_auto=None if never_auto is None else never_auto[rows])
        return out

    def f1_thresholds(self) -> np.ndarray:
        """[n] each stay's global F1 threshold on raw scores (nan where a fold has none)."""
        per_fold = np.array([np.nan if p.f1_threshold is None else p.f1_threshold for p in self.policies])
        return per_fold[self.fold]

    def with_review_cap(
        self, max_review_per_stay: int | None, min_review_probability: float,
        review_budget: float | Literal["same"] | None = "same",
    ) -> CrossFittedPolicy:
        return CrossFittedPolicy(
            [p.with_review_cap(max_review_per_stay, min_review_probability, review_budget)
             for p in self.policies],
            self.fold,
        )

    def subset(self, keep: np.ndarray) -> CrossFittedPolicy:
        """The same fold policies for a subset of the rows (a half of the data, say)."""
        return CrossFittedPolicy(self.policies, self.fold[np.asarray(keep)])
