"""The automation report: how many diagnoses cimcoder codes on its own, and how well.

`build_report(...)` computes the report (a `Report`, pydantic) from gold codes, raw scores
and a decision policy; `render_html(report)` turns it into one self-contained French HTML
page (templates in `templates/`: inline SVG, no script, no external resource);
`write_report(report, folder)` writes both, and logs them to MLflow when a tracker is given;
`read_report(path)` reads the JSON back.

The JSON (`Report.model_dump`) is a contract read outside cimcoder: field names, nesting and
the `p@k` keys stay as they are.
"""

from __future__ import annotations

import datetime
import functools
import html
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import jinja2
import numpy as np
from markupsafe import Markup
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from cimcoder.eval import metrics as M
from cimcoder.eval.calibration import reliability
from cimcoder.eval.hierarchy import Hierarchy
from cimcoder.eval.intervals import BoundMethod, lower_bound
from cimcoder.eval.policy import AUTO, REJECT, REVIEW, CrossFittedPolicy, DecisionPolicy

logger = logging.getLogger(__name__)

NATIONAL_GOAL = 0.90
REPORT_JSON = "automation_report.json"
REPORT_HTML = "automation_report.html"
TRADEOFF_CAPS = (5, 10, 20, 50, None)  # review codes per stay shown to the DIM (None: no cap)
MAX_LISTED_ERRORS = 200
BAND_ORDER = ("frequent", "rare", "unseen")
BAND_FR = {"frequent": "fréquents", "rare": "rares", "unseen": "jamais vus", "?": "inconnus"}
# Decision figures left unknown (None) when no F1 threshold exists to apply.
THRESHOLDED_KEYS = ("micro_precision", "micro_recall", "micro_f1",
                    "macro_precision", "macro_recall", "macro_f1")


class Tracker(Protocol):
    """What the report needs of `cimcoder.training.tracking.RunTracker`."""

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None: ...
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None: ...


# --------------------------------------------------------------------------- the report


class _Part(BaseModel):
    # JSON keys such as "p@5" are aliases of Python names (p_at_5).
    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True,
                              validate_by_name=True, validate_by_alias=True)


class _GivenKeysOnly(_Part):
    """A row whose JSON holds only the keys it was given (rows passed in by callers)."""

    @model_serializer(mode="wrap")
    def _given_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


class CurvePoint(_Part):
    """One threshold of the automation curve."""

    threshold: float = Field(description="Calibrated probability threshold swept")
    precision: float = Field(description="Precision of the pairs at or above the threshold")
    share: float = Field(description="Correct auto-coded codes / all true codes")
    n_auto: int = Field(description="Pairs at or above the threshold")


class OperatingPoint(_Part):
    """What the auto-coding decisions give on a set of (stay, code) pairs."""

    n_true_codes: int = Field(
        description="True codes (the headline counts those outside the label space too)")
    n_auto: int = Field(description="Pairs auto-coded")
    n_auto_correct: int = Field(description="Auto-coded pairs that are true codes")
    n_auto_errors: int = Field(description="Auto-coded pairs that are not true codes")
    auto_precision: float | None = Field(
        description="n_auto_correct / n_auto; None if nothing is auto-coded")
    auto_precision_lower_bound: float | None = Field(
        description="One-sided lower confidence bound of auto_precision (the policy's bound)")
    automation_rate: float | None = Field(description="n_auto_correct / n_true_codes")
    n_review: int = Field(description="Pairs sent to review")
    n_true_in_review: int = Field(description="True codes among the pairs sent to review")
    n_true_rejected: int = Field(description="True codes rejected (the coder must add them)")


class TradeoffRow(_Part):
    """Coder workload and recall under one review cap."""

    max_review_per_stay: int | None = Field(description="Review cap per stay (None: no cap)")
    review_per_stay_mean: float = Field(description="Codes to review per stay, mean")
    review_per_stay_p90: float = Field(description="Codes to review per stay, 90th percentile")
    recall_auto_or_review: float | None = Field(description="True codes found by auto + review")
    min_review_probability: float = Field(description="Probability floor of a review proposal")
    review_budget: float | None = Field(
        None, description="Auto + review per stay <= ceil(budget x expected codes) + 1 (None: off)")
    policy: bool = Field(description="These are the shipped policy's settings")


class TargetSweepRow(_GivenKeysOnly):
    """The policy refitted at one target precision, measured where it was not fitted."""

    data: str | None = Field(default=None, description="Measured stays")
    n_stays: int | None = Field(default=None, description="Stays measured")
    target_precision: float = Field(description="Target precision of the refitted policy")
    measured_precision: float | None = Field(default=None, description="Measured auto precision")
    n_auto: int | None = Field(default=None, description="Pairs auto-coded")
    automation_rate: float | None = Field(
        default=None, description="Share of true codes auto-coded")
    review_per_stay_mean: float | None = Field(
        default=None, description="Codes to review per stay, mean")
    review_per_stay_p90: float | None = Field(
        default=None, description="Codes to review per stay, 90th percentile")
    recall_auto_or_review: float | None = Field(
        default=None, description="True codes found by auto + review")
    f1_threshold: float | None = Field(
        default=None, description="Global F1 threshold of the refitted policy")
    micro_f1: float | None = Field(
        default=None, description="Micro-F1 at that threshold on raw scores")
    cross_fitted_folds: int | None = Field(
        default=None, description="Folds when cross-fitted, else None")


class BestTarget(_Part):
    """The highest lower target at which something would be auto-coded."""

    target_precision: float = Field(description="That lower target")
    measured_precision: float | None = Field(description="Precision measured at it")
    automation_rate: float | None = Field(description="Share of true codes auto-coded at it")
    source: Literal["target_sweep", "curve"] = Field(
        description="target_sweep: refitted, measured elsewhere; curve: these stays (indicative)")


class LowestTarget(_Part):
    """The lowest target of the sweep and what it gave."""

    target_precision: float = Field(description="Lowest target tried")
    measured_precision: float | None = Field(description="Precision measured at it")
    automation_rate: float | None = Field(description="Share of true codes auto-coded at it")
    n_auto: int | None = Field(description="Pairs auto-coded at it")


class _Aims(_Part):
    goal: float = Field(description="National goal: share of diagnoses auto-coded")
    target_precision: float = Field(description="Auto precision the DIM asked for")


# Fields of the rightmost base come first: the JSON keeps the key order it always had.
class Headline(OperatingPoint, _Aims):
    """The figures the DIM reads first: automation, precision, workload, and why not more."""

    automation_rate_in_space: float | None = Field(
        description="Correct auto-coded codes / true codes inside the label space")
    n_stays: int = Field(description="Stays measured")
    n_codes_outside_label_space: int = Field(description="True codes the model can never propose")
    stays_without_review: int = Field(description="Stays with nothing to review")
    share_stays_without_review: float | None = Field(description="Their share of the stays")
    stays_fully_auto_coded: int = Field(
        description="Stays with nothing to review, no auto-coded error and no true code missed")
    share_stays_fully_auto_coded: float | None = Field(description="Their share of the stays")
    review_per_stay_mean: float = Field(description="Codes to review per stay, mean")
    review_per_stay_median: float = Field(description="Codes to review per stay, median")
    review_per_stay_p90: float = Field(description="Codes to review per stay, 90th percentile")
    max_review_per_stay: int | None = Field(description="The policy's review cap per stay")
    min_review_probability: float = Field(description="The policy's probability floor of review")
    review_budget: float | None = Field(
        None, description="The policy's review budget (x the stay's expected codes, + 1)")
    recall_auto_or_review: float | None = Field(description="True codes found by auto + review")
    recall_auto_or_review_uncapped: float | None = Field(
        description="The same without the review cap")
    review_per_stay_mean_uncapped: float = Field(
        description="Review per stay without the cap, mean")
    review_per_stay_p90_uncapped: float = Field(
        description="Review per stay without the cap, 90th percentile")
    recall_kept_out_of_reject: float | None = Field(
        description="In-space true codes not rejected (the policy's target recall)")
    meets_target: bool = Field(description="Auto precision within 2 points of the target")
    review_cap_tradeoff: list[TradeoffRow] = Field(description="Workload and recall per review cap")
    nothing_auto_reason: Literal["model_precision_too_low", "too_few_stays"] | None = Field(
        description="Why nothing is auto-coded; None when something is")
    min_auto_for_margin: int | None = Field(
        description="Fewest auto-coded codes, all correct, whose lower bound reaches the target")
    top_precision_at_margin: float | None = Field(
        description="Precision of the model's top_precision_n most confident proposals")
    top_precision_n: int = Field(description="How many proposals top_precision_at_margin reads")
    best_target_with_automation: BestTarget | None = Field(
        description="A lower target that would auto-code something")
    lowest_target_tried: float | None = Field(description="Lowest target of the sweep")
    lowest_target_row: LowestTarget | None = Field(description="What that lowest target gave")
    statement_fr: str = Field(default="", description="The headline in plain French")


class Automation(_Part):
    """The automation figures, under the name earlier readers of the JSON know."""

    headline: Headline = Field(description="Same as the report's headline")


class GroupCurve(_Part):
    """Decisions and automation curve restricted to the codes of one group."""

    n_codes: int = Field(description="Codes of the label space in the group")
    operating_point: OperatingPoint = Field(description="The policy's decisions on these codes")
    curve: list[CurvePoint] = Field(description="Automation curve of these codes")


class ChapterCurve(GroupCurve):
    title: str = Field(description="Chapter title")


class AutomationCurves(_Part):
    overall: list[CurvePoint] = Field(description="All codes (share of all true codes)")
    by_chapter: dict[str, ChapterCurve] = Field(description="Per chapter, in chapter order")
    by_band: dict[str, GroupCurve] = Field(description="Per training-frequency band")


class ReliabilityBin(_Part):
    lo: float = Field(description="Lower edge of the probability bin")
    hi: float = Field(description="Upper edge of the probability bin")
    count: int = Field(description="Pairs in the bin")
    mean_predicted: float | None = Field(description="Mean announced probability; None if empty")
    observed: float | None = Field(description="Observed frequency of true codes; None if empty")


class Reliability(_Part):
    bins: list[ReliabilityBin] = Field(description="Equal-width probability bins")
    ece: float = Field(description="Expected calibration error")
    n_pairs: int = Field(description="(stay, code) pairs")


class ReliabilityPair(_Part):
    before: Reliability = Field(description="Raw scores")
    after: Reliability = Field(description="Calibrated probabilities")


class RankingSummary(_Part):
    """`cimcoder.eval.metrics.summarize` with k = 1 and 5."""

    n_stays: int = Field(description="Stays")
    n_labels: int = Field(description="Codes of the label space counted")
    n_gold: int = Field(description="True codes, including those outside the label space")
    n_gold_in_space: int = Field(description="True codes inside the label space")
    micro_precision: float | None = Field(description="Micro precision of the decisions")
    micro_recall: float | None = Field(description="Micro recall of the decisions")
    micro_f1: float | None = Field(description="Micro F1 of the decisions")
    macro_precision: float | None = Field(description="Macro precision of the decisions")
    macro_recall: float | None = Field(description="Macro recall of the decisions")
    macro_f1: float | None = Field(description="Macro F1 of the decisions")
    map: float = Field(description="Mean average precision of the ranking")
    micro_auc: float | None = Field(description="Micro ROC AUC")
    macro_auc: float | None = Field(description="Macro ROC AUC")
    p_at_1: float = Field(alias="p@1", description="Precision at 1")
    r_at_1: float = Field(alias="r@1", description="Recall at 1")
    p_at_5: float = Field(alias="p@5", description="Precision at 5")
    r_at_5: float = Field(alias="r@5", description="Recall at 5")


class Summary(RankingSummary):
    """`cimcoder.eval.metrics.summarize` with k = 1, 5 and 10."""

    p_at_10: float = Field(alias="p@10", description="Precision at 10")
    r_at_10: float = Field(alias="r@10", description="Recall at 10")


class GroupSummary(RankingSummary):
    """`cimcoder.eval.metrics.breakdown`: the figures of one group's codes."""

    n_codes: int = Field(description="Codes of the label space in the group")


class _Decisions(_Part):
    decisions: str = Field(description="What the decisions are")


class AutoMetrics(Summary, _Decisions):
    """The figures of the auto-coded decisions."""

    category_level: Summary = Field(description="Codes collapsed to their 3-character category")
    by_chapter: dict[str, GroupSummary] = Field(description="Per chapter")
    by_band: dict[str, GroupSummary] = Field(description="Per training-frequency band")


class _ThresholdDecisions(_Decisions):
    f1_threshold: float | None = Field(description="The global F1 threshold; None if unknown")


class Metrics(Summary, _ThresholdDecisions):
    """Model-comparison figures: raw-score rankings, P/R/F1 at one global F1 threshold."""

    category_level: Summary = Field(description="Codes collapsed to their 3-character category")
    by_chapter: dict[str, GroupSummary] = Field(description="Per chapter")
    by_band: dict[str, GroupSummary] = Field(description="Per training-frequency band")
    auto: AutoMetrics = Field(description="The auto-coded decisions")
    auto_or_review: Summary = Field(description="Auto-coded or sent to review")
    n_categories: int = Field(description="3-character categories of the label space")
    principal_diagnosis_accuracy: float | None = Field(
        None, description="Stays whose top-ranked code is the DP, over stays with a known DP")
    n_stays_with_principal: int | None = Field(
        None, description="Stays with a known DP; None (and both keys absent) without DPs")

    @model_serializer(mode="wrap")
    def _principal_only_when_known(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.n_stays_with_principal is None:
            data.pop("principal_diagnosis_accuracy", None)
            data.pop("n_stays_with_principal", None)
        return data


class BandFigures(_Part):
    """One frequency band for model comparisons: F1-threshold figures and auto-coded ones."""

    recall: float | None = Field(description="Micro recall at the global F1 threshold")
    precision: float | None = Field(description="Micro precision at the global F1 threshold")
    f1: float | None = Field(description="Micro F1 at the global F1 threshold")
    map: float = Field(description="MAP of the band's codes")
    n_codes: int = Field(description="Codes of the label space in the band")
    auto_recall: float | None = Field(description="Micro recall of the auto-coded decisions")
    auto_precision: float | None = Field(description="Micro precision of the auto-coded decisions")


class AutoError(_Part):
    """A code auto-coded although not a true code of the stay."""

    stay_id: str = Field(description="Stay id")
    code: str = Field(description="Code auto-coded")
    label: str | None = Field(description="Its title, when the terminology is at hand")
    score: float = Field(description="Calibrated probability")
    raw_score: float = Field(description="Raw score of the model")


class PolicyVersion(_Part):
    hash: str = Field(description="Content hash of policy.json")
    created_at: str = Field(description="When the policy was fitted")


class PolicySummary(_Part):
    """The shipped decision policy the report describes."""

    version: PolicyVersion = Field(description="Which policy")
    target_precision: float = Field(description="Target auto precision")
    target_recall: float = Field(description="Share of true codes to keep out of reject")
    confidence: float = Field(description="Confidence of the precision lower bound")
    bound: BoundMethod = Field(description="Lower-bound method")
    calibration: str = Field(description="Calibration method")
    fitted_on: dict[str, Any] = Field(description="What the policy was fitted on")
    levels: dict[str, dict[str, int]] = Field(
        description="Codes per hierarchy level their thresholds come from")
    max_review_per_stay: int | None = Field(description="Review cap per stay")
    min_review_probability: float = Field(description="Probability floor of review")
    review_budget: float | None = Field(None, description="Review budget (x expected codes, + 1)")
    f1_threshold: float | None = Field(description="Global F1 threshold on raw scores")


class Report(_Part):
    """The automation report of one scored data set under one decision policy."""

    report: Literal["cimcoder automation report"] = Field(
        default="cimcoder automation report", description="What this file is")
    format: Literal[1] = Field(default=1, description="Version of this JSON layout")
    created_at: str = Field(description="UTC time the report was computed")
    dataset: str = Field(description="Measured stays (a data set, or one half of it)")
    run: str = Field(description="Model run folder")
    policy: PolicySummary
    headline: Headline
    target_sweep: list[TargetSweepRow] = Field(
        description="Targets refitted and measured elsewhere")
    auto_errors: list[AutoError] = Field(description="Auto-coded errors, most confident first")
    n_auto_errors_listed: int = Field(description="Length of auto_errors")
    automation_curve: AutomationCurves
    reliability: ReliabilityPair
    metrics: Metrics
    bands: dict[str, BandFigures] = Field(description="Per frequency band, for model comparisons")
    automation: Automation
    notes: list[str] = Field(description="What the reader must know (in French)")
    folder: str | None = Field(default=None, exclude=True,
                               description="Where write_report put it (not part of the JSON)")


# --------------------------------------------------------------------------- computing


@dataclass(frozen=True)
class _Decided:
    """The arrays every section of the report reads, [n stays, L codes] unless said."""

    labels: list[str]
    y: np.ndarray  # gold codes inside the label space
    scores: np.ndarray  # raw scores
    probs: np.ndarray  # calibrated probabilities
    decisions: np.ndarray  # AUTO / REVIEW / REJECT
    n_gold: np.ndarray  # [n]: all gold codes of each stay, outside the label space too

    @property
    def auto(self) -> np.ndarray:
        return self.decisions == AUTO

    @property
    def review(self) -> np.ndarray:
        return self.decisions == REVIEW


def _share(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _p90(x: np.ndarray) -> float:
    return float(np.percentile(x, 90)) if x.size else 0.0


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else 0.0


def automation_curve(
    y: np.ndarray, probs: np.ndarray, *, n_gold: float | None = None, n_points: int = 60
) -> list[CurvePoint]:
    """Auto-coded share against auto precision, sweeping one threshold over the pairs.

    `share` = correct auto-coded codes / all true codes (`n_gold`, default the in-space
    gold count).
    """
    yv = np.asarray(y, dtype=bool).ravel()
    pv = np.asarray(probs, dtype=float).ravel()
    total = float(yv.sum() if n_gold is None else n_gold)
    if total <= 0 or pv.size == 0:
        return []
    order = np.argsort(-pv, kind="stable")
    ps, tp = pv[order], np.cumsum(yv[order])
    # Thresholds at quantiles of the positive pairs' probabilities, plus the top ones.
    pos = np.sort(pv[yv])[::-1] if yv.any() else ps[:1]
    qs = np.unique(np.r_[np.quantile(pos, np.linspace(0, 1, n_points)), ps[: min(5, ps.size)]])
    points = []
    for t in sorted(qs, reverse=True):
        k = int(np.searchsorted(-ps, -t, side="right"))  # pairs with p >= t
        if k == 0:
            continue
        points.append(CurvePoint(threshold=float(t), precision=float(tp[k - 1] / k),
                                 share=float(tp[k - 1] / total), n_auto=k))
    return points


def _operating_point(
    y: np.ndarray, d: np.ndarray, *, n_gold: float | None = None, confidence: float = 0.95
) -> OperatingPoint:
    auto = d == AUTO
    n_auto = int(auto.sum())
    n_right = int((y & auto).sum())
    total = float(y.sum() if n_gold is None else n_gold)
    return OperatingPoint(
        n_true_codes=int(total),
        n_auto=n_auto,
        n_auto_correct=n_right,
        n_auto_errors=n_auto - n_right,
        auto_precision=_share(n_right, n_auto),
        auto_precision_lower_bound=float(lower_bound(n_right, n_auto, confidence=confidence))
        if n_auto else None,
        automation_rate=_share(n_right, total),
        n_review=int((d == REVIEW).sum()),
        n_true_in_review=int((y & (d == REVIEW)).sum()),
        n_true_rejected=int((y & (d == REJECT)).sum()),
    )


def build_report(
    y_true: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    policy: DecisionPolicy,
    *,
    stay_ids: Sequence[str],
    n_gold: np.ndarray | Sequence[int] | None = None,
    principal: Sequence[str | None] | None = None,
    bands: Mapping[str, str] | None = None,
    code_titles: Mapping[str, str] | Callable[[str], str | None] | None = None,
    dataset: str = "",
    run: str = "",
    target_sweep: Sequence[Mapping[str, Any]] | None = None,
    notes: Sequence[str] = (),
    f1_threshold: float | None = None,
    held_out: CrossFittedPolicy | None = None,
    never_auto: np.ndarray | None = None,
) -> Report:
    """The automation report of one scored data set under `policy`.

    With `held_out` (the policy's data set itself, cross-fitted), each stay is calibrated
    and decided by the fold policy fitted without it, F1 decisions use that fold's F1
    threshold, and `policy` only describes what is shipped.

    `y_true`: gold codes inside the label space; `n_gold`: per-stay count of all gold
    codes, including those outside the label space (they count as not auto-coded).

    `metrics` holds the model-comparison figures: ranking metrics (MAP, P@k, AUC) on raw
    scores, and micro/macro P/R/F1 of `raw score >= f1_threshold`, one global threshold
    chosen on the policy's fitting data (default `policy.f1_threshold`), never on these
    stays. The figures of the auto-coded decisions are under `metrics.auto`.
    """
    labels = list(labels)
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape or y.shape[1] != len(labels) or y.shape[0] != len(stay_ids):
        raise M.MetricInputError(
            f"gold {y.shape}, scores {s.shape}, {len(labels)} labels, {len(stay_ids)} stays"
        )
    decider: DecisionPolicy | CrossFittedPolicy = policy if held_out is None else held_out
    probs = decider.calibrate(s, labels)
    dec = _Decided(
        labels=labels, y=y, scores=s, probs=probs,
        decisions=decider.decide(probs, labels, tiebreak=s, never_auto=never_auto),
        n_gold=np.asarray(n_gold, dtype=float) if n_gold is not None else y.sum(axis=1).astype(float),
    )
    uncapped = decider.decide(probs, labels, review_cap=False, never_auto=never_auto)
    sweep = [TargetSweepRow.model_validate(dict(r)) for r in (target_sweep or [])]

    headline = _headline(dec, uncapped, policy, sweep, held_out, never_auto)
    hierarchy = Hierarchy(policy.terminology)
    chapters = [hierarchy.chapter(c) for c in labels]
    band_of = [str(bands.get(c, "?")) for c in labels] if bands else None
    metrics = _metrics(dec, chapters, band_of, hierarchy, policy, f1_threshold, held_out, principal)
    auto_errors = _auto_errors(dec, stay_ids, code_titles)
    curves = AutomationCurves(
        overall=automation_curve(y, probs, n_gold=float(dec.n_gold.sum())),
        by_chapter={
            key: ChapterCurve(**dict(block), title=hierarchy.chapter_title(key))
            for key, block in _group_curves(dec, chapters, policy.confidence).items()
        },
        by_band={} if band_of is None else _group_curves(dec, band_of, policy.confidence),
    )
    return Report(
        created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        dataset=dataset,
        run=run,
        policy=_policy_summary(policy),
        headline=headline,
        target_sweep=sweep,
        auto_errors=auto_errors,
        n_auto_errors_listed=len(auto_errors),
        automation_curve=curves,
        reliability=ReliabilityPair(before=Reliability.model_validate(reliability(y, s)),
                                    after=Reliability.model_validate(reliability(y, probs))),
        metrics=metrics,
        bands=_band_figures(metrics),
        automation=Automation(headline=headline),
        notes=list(notes),
    )


def _headline(
    dec: _Decided, uncapped: np.ndarray, policy: DecisionPolicy, sweep: Sequence[TargetSweepRow],
    held_out: CrossFittedPolicy | None, never_auto: np.ndarray | None,
) -> Headline:
    """`uncapped`: the decisions without review cap, floor or budget (what the limits cost)."""
    y, g, auto, review = dec.y, dec.n_gold, dec.auto, dec.review
    op = _operating_point(y, dec.decisions, n_gold=float(g.sum()), confidence=policy.confidence)
    review_per_stay = review.sum(axis=1)
    review_uncapped = uncapped == REVIEW
    review_per_stay_uncapped = review_uncapped.sum(axis=1)
    total_true = float(g.sum())
    missed_per_stay = g - (y & auto).sum(axis=1)  # true codes a coder must still add/confirm
    errors_per_stay = (~y & auto).sum(axis=1)
    no_review = review_per_stay == 0
    fully_right = no_review & (errors_per_stay == 0) & (missed_per_stay == 0)
    headline = Headline(
        goal=NATIONAL_GOAL,
        target_precision=policy.target_precision,
        **dict(op),
        automation_rate_in_space=_share(op.n_auto_correct, y.sum()),
        n_stays=int(y.shape[0]),
        n_codes_outside_label_space=int(g.sum() - y.sum()),
        stays_without_review=int(no_review.sum()),
        share_stays_without_review=_share(no_review.sum(), y.shape[0]),
        stays_fully_auto_coded=int(fully_right.sum()),
        share_stays_fully_auto_coded=_share(fully_right.sum(), y.shape[0]),
        review_per_stay_mean=_mean(review_per_stay),
        review_per_stay_median=float(np.median(review_per_stay)) if y.shape[0] else 0.0,
        review_per_stay_p90=_p90(review_per_stay),
        max_review_per_stay=policy.max_review_per_stay,
        min_review_probability=policy.min_review_probability,
        review_budget=policy.review_budget,
        # What the workload cap costs: true codes found by auto + review, with and without it.
        recall_auto_or_review=_share(float((y & (auto | review)).sum()), total_true),
        recall_auto_or_review_uncapped=_share(float((y & (auto | review_uncapped)).sum()), total_true),
        review_per_stay_mean_uncapped=_mean(review_per_stay_uncapped),
        review_per_stay_p90_uncapped=_p90(review_per_stay_uncapped),
        recall_kept_out_of_reject=_share(y.sum() - op.n_true_rejected, y.sum()),
        meets_target=bool(op.auto_precision is not None
                          and op.auto_precision >= policy.target_precision - 0.02),
        review_cap_tradeoff=review_cap_tradeoff(y, dec.probs, policy, total_true, scores=dec.scores,
                                                decider=held_out, never_auto=never_auto),
        **_automation_diagnosis(y, dec.probs, policy, sweep, total_true, op.n_auto),
    )
    return headline.model_copy(update={"statement_fr": headline_statement(headline, policy)})


def _auto_errors(
    dec: _Decided, stay_ids: Sequence[str],
    code_titles: Mapping[str, str] | Callable[[str], str | None] | None,
) -> list[AutoError]:
    """Auto-coded errors, most confident first."""
    title_of: Callable[[str], str | None]
    if code_titles is None:
        title_of = lambda c: None  # noqa: E731
    elif isinstance(code_titles, Mapping):
        title_of = code_titles.get
    else:
        title_of = code_titles
    rows, cols = np.nonzero(~dec.y & dec.auto)
    order = np.argsort(-dec.probs[rows, cols], kind="stable")
    return [
        AutoError(
            stay_id=str(stay_ids[int(rows[i])]),
            code=dec.labels[int(cols[i])],
            label=title_of(dec.labels[int(cols[i])]),
            score=float(dec.probs[rows[i], cols[i]]),
            raw_score=float(dec.scores[rows[i], cols[i]]),
        )
        for i in order[:MAX_LISTED_ERRORS]
    ]


def _group_curves(dec: _Decided, groups: list[str], confidence: float) -> dict[str, GroupCurve]:
    """Decisions and curve of each group (chapter, band) with a true or auto-coded code."""
    out: dict[str, GroupCurve] = {}
    for key in sorted(set(groups), key=_roman_key):
        idx = np.array([j for j, gk in enumerate(groups) if gk == key], dtype=int)
        y, d = dec.y[:, idx], dec.decisions[:, idx]
        if not y.any() and not (d == AUTO).any():
            continue
        out[key] = GroupCurve(
            n_codes=len(idx),
            operating_point=_operating_point(y, d, confidence=confidence),
            curve=automation_curve(y, dec.probs[:, idx], n_points=25),
        )
    return out


def _metrics(
    dec: _Decided, chapters: list[str], band_of: list[str] | None, hierarchy: Hierarchy,
    policy: DecisionPolicy, f1_threshold: float | None, held_out: CrossFittedPolicy | None,
    principal: Sequence[str | None] | None,
) -> Metrics:
    """Flat figures compare models: raw-score rankings, and P/R/F1 at one global threshold
    fitted on the policy's data (the usual micro-F1). Auto-coded figures live in `auto`."""
    y, s, probs, g, labels = dec.y, dec.scores, dec.probs, dec.n_gold, dec.labels
    auto, review = dec.auto, dec.review
    t_f1 = policy.f1_threshold if f1_threshold is None else float(f1_threshold)
    # One threshold per stay: the fold policy's under cross-fitting, else the global one.
    row_t = held_out.f1_thresholds() if held_out is not None else np.full(
        y.shape[0], np.nan if t_f1 is None else t_f1)
    if np.isnan(row_t).all():
        t_f1 = None
    at_f1 = s >= row_t[:, None]  # nan: never

    def thresholded(figures: Mapping[str, Any]) -> dict[str, Any]:
        # No threshold to apply: say "unknown", not a misleading 0.
        return {**figures, **dict.fromkeys(THRESHOLDED_KEYS)} if t_f1 is None else dict(figures)

    chapter_of = dict(zip(labels, chapters, strict=True))
    band_map = dict(zip(labels, band_of, strict=True)) if band_of is not None else None
    cy, cs, cats = M.collapse_to_groups(y, s, labels, hierarchy.category)
    cy_p, cs_p, _ = M.collapse_to_groups(y, probs, labels, hierarchy.category)
    _, cauto, _ = M.collapse_to_groups(y, auto.astype(float), labels, hierarchy.category)
    principal_figures: dict[str, Any] = {}
    if principal is not None:
        acc, n_dp = M.principal_diagnosis_accuracy(s, labels, principal)
        principal_figures = {"principal_diagnosis_accuracy": acc if n_dp else None,
                             "n_stays_with_principal": n_dp}
    return Metrics.model_validate({
        "decisions": "raw score >= f1_threshold (one global threshold fitted on the policy's data)"
        if held_out is None else
        "raw score >= the F1 threshold of the fold policy fitted without the stay (cross-fitted)",
        "f1_threshold": t_f1,
        **thresholded(M.summarize(y, s, at_f1, n_gold=g)),
        "category_level": thresholded(M.summarize(cy, cs, cs >= row_t[:, None])),
        "by_chapter": {k: thresholded(v)
                       for k, v in M.breakdown(y, s, labels, chapter_of, at_f1).items()},
        "by_band": {k: thresholded(v) for k, v in M.breakdown(y, s, labels, band_map, at_f1).items()}
        if band_map is not None else {},
        "auto": {
            "decisions": "auto (calibrated probabilities, per-code thresholds)",
            **M.summarize(y, probs, auto, n_gold=g),
            "category_level": M.summarize(cy_p, cs_p, cauto >= 1.0),
            "by_chapter": M.breakdown(y, probs, labels, chapter_of, auto),
            "by_band": M.breakdown(y, probs, labels, band_map, auto) if band_map is not None else {},
        },
        "auto_or_review": M.summarize(y, probs, auto | review, n_gold=g),
        "n_categories": len(cats),
        **principal_figures,
    })


def _band_figures(metrics: Metrics) -> dict[str, BandFigures]:
    """Per frequency band, for model comparisons: recall/precision/F1 at the global F1
    threshold on raw scores, and the auto-coded figures beside them."""
    return {
        b: BandFigures(recall=m.micro_recall, precision=m.micro_precision, f1=m.micro_f1,
                       map=m.map, n_codes=m.n_codes,
                       auto_recall=metrics.auto.by_band[b].micro_recall,
                       auto_precision=metrics.auto.by_band[b].micro_precision)
        for b, m in metrics.by_band.items()
    }


def _policy_summary(policy: DecisionPolicy) -> PolicySummary:
    return PolicySummary(
        version=PolicyVersion(**policy.version),
        target_precision=policy.target_precision,
        target_recall=policy.target_recall,
        confidence=policy.confidence,
        bound=policy.bound,
        calibration=policy.calibrator.method,
        fitted_on=policy.fitted_on,
        levels=policy.level_counts(),
        max_review_per_stay=policy.max_review_per_stay,
        min_review_probability=policy.min_review_probability,
        review_budget=policy.review_budget,
        f1_threshold=policy.f1_threshold,
    )


def review_cap_tradeoff(
    y: np.ndarray, probs: np.ndarray, policy: DecisionPolicy, total_true: float,
    caps: Sequence[int | None] = TRADEOFF_CAPS, *, scores: np.ndarray | None = None,
    decider: CrossFittedPolicy | None = None, never_auto: np.ndarray | None = None,
) -> list[TradeoffRow]:
    """Coder workload against recall of auto + review, for several per-stay review caps.

    Every row keeps the policy's probability floor and review budget, except: the policy's cap
    without its budget (what the budget costs), and the last one (no cap, no floor, no budget:
    the uncapped band). `decider` (cross-fitted fold policies) decides instead of `policy`.
    """
    rows = []
    budget = policy.review_budget
    settings: list[tuple[int | None, float, float | None]] = [
        (cap, policy.min_review_probability, budget)
        for cap in sorted({*caps, policy.max_review_per_stay}, key=lambda c: math.inf if c is None else c)
    ]
    if budget is not None:
        settings.append((policy.max_review_per_stay, policy.min_review_probability, None))
    if policy.min_review_probability > 0 or budget is not None:
        settings.append((None, 0.0, None))
    for cap, floor, row_budget in settings:
        d = (decider or policy).with_review_cap(cap, floor, row_budget).decide(
            probs, policy.labels, tiebreak=scores, never_auto=never_auto
        )
        review = d == REVIEW
        per_stay = review.sum(axis=1)
        rows.append(TradeoffRow(
            max_review_per_stay=cap,
            review_per_stay_mean=_mean(per_stay),
            review_per_stay_p90=_p90(per_stay),
            recall_auto_or_review=_share(float((y & ((d == AUTO) | review)).sum()), total_true),
            min_review_probability=floor,
            review_budget=row_budget,
            policy=(cap, floor, row_budget) == (policy.max_review_per_stay, policy.min_review_probability,
                                                budget),
        ))
    return rows


def min_auto_for_margin(target: float, *, confidence: float = 0.95, method: BoundMethod = "wilson",
                        limit: int = 100_000) -> int | None:
    """Fewest auto-coded codes, all correct, whose precision lower bound reaches `target`."""
    n = np.arange(1, limit + 1)
    ok = np.flatnonzero(lower_bound(n, n, confidence=confidence, method=method) >= target)
    return int(n[ok[0]]) if ok.size else None


def _automation_diagnosis(
    y: np.ndarray, probs: np.ndarray, policy: DecisionPolicy,
    sweep: Sequence[TargetSweepRow], total_true: float, n_auto: int,
) -> dict[str, Any]:
    """Why nothing is auto-coded (if so) and what lower targets would give (Headline fields)."""
    target = policy.target_precision
    n_min = min_auto_for_margin(target, confidence=policy.confidence, method=policy.bound)
    # Precision of the model's n_min most confident proposals on these stays (fewer when
    # there are fewer true codes: then the data, not the model, is the limit).
    pv, yv = probs.ravel(), y.ravel()
    top_precision, k = None, 0
    if n_min is not None and pv.size:
        k = max(1, min(n_min, int(yv.sum()), pv.size))
        top = np.argsort(-pv, kind="stable")[:k]
        top_precision = float(yv[top].mean())
    reason = None
    if n_auto == 0:
        reason = ("model_precision_too_low"
                  if top_precision is None or top_precision < target else "too_few_stays")
    best = None
    automated = [r for r in sweep if r.n_auto]
    if automated:
        r = max(automated, key=lambda r: r.target_precision)
        best = BestTarget(target_precision=r.target_precision, measured_precision=r.measured_precision,
                          automation_rate=r.automation_rate, source="target_sweep")
    elif not sweep and total_true > 0:
        # No refit on another half: read the curve of these stays (indicative, in-sample).
        curve = automation_curve(y, probs, n_gold=total_true)
        for level in (0.9, 0.8, 0.7, 0.6, 0.5):
            if level >= target:
                continue
            pts = [p for p in curve if p.precision >= level and p.n_auto >= 1]
            if pts:
                p = max(pts, key=lambda q: q.share)
                best = BestTarget(target_precision=level, measured_precision=p.precision,
                                  automation_rate=p.share, source="curve")
                break
    lowest = min(sweep, key=lambda r: r.target_precision) if sweep else None
    return {
        "nothing_auto_reason": reason,
        "min_auto_for_margin": n_min,
        "top_precision_at_margin": top_precision,
        "top_precision_n": k,
        "best_target_with_automation": best,
        "lowest_target_tried": None if lowest is None else lowest.target_precision,
        "lowest_target_row": None if lowest is None else LowestTarget(
            target_precision=lowest.target_precision, measured_precision=lowest.measured_precision,
            automation_rate=lowest.automation_rate, n_auto=lowest.n_auto),
    }


def headline_statement(h: Headline, policy: DecisionPolicy) -> str:
    """The headline in plain French: rate, measured precision, target, and why not more."""
    target, goal, rate = policy.target_precision, h.goal, h.automation_rate
    parts: list[str] = []
    if h.n_auto:
        parts.append(
            f"À la précision cible fixée par le DIM ({_pct(target, 0)}), cimcoder auto-code "
            f"{_pct(rate)} des diagnostics attendus, avec une précision mesurée de "
            f"{_pct(h.auto_precision)} (borne basse {_pct(h.auto_precision_lower_bound)})."
        )
        gap = goal - (rate or 0.0)
        parts.append(f"L'objectif national est de {_pct(goal, 0)} : "
                     + ("atteint." if gap <= 0 else f"il manque {_num(100 * gap, 1)} points."))
    else:
        parts.append(
            f"À la précision cible fixée par le DIM ({_pct(target, 0)}), rien n'est auto-codé "
            f"(taux d'automatisation 0 %) : aucun seuil n'atteint cette précision avec la marge "
            f"statistique requise (borne basse de confiance à {_pct(policy.confidence, 0)})."
        )
        n_min, top = h.min_auto_for_margin, h.top_precision_at_margin
        fitted = policy.fitted_on or {}
        if h.nothing_auto_reason == "model_precision_too_low":
            parts.append(
                "Raison : la précision du modèle est trop faible. "
                + (f"Même ses {n_min} propositions les plus sûres ne sont justes qu'à {_pct(top)} "
                   f"ici, alors qu'il faut au moins {n_min} codes justes sans erreur pour "
                   f"garantir {_pct(target, 0)}." if n_min and top is not None else "")
            )
        else:
            parts.append(
                "Raison : trop peu de séjours pour la marge statistique. "
                + (f"Les {h.top_precision_n} propositions les plus sûres du modèle sont justes à {_pct(top)} "
                   "ici, mais " if n_min and top is not None else "")
                + (f"l'ajustement ne disposait que de {fitted.get('n_stays')} séjours "
                   f"({fitted.get('n_gold_in_space')} codes vrais) ; " if fitted.get("n_stays") else "")
                + f"garantir {_pct(target, 0)} demande au moins {n_min} codes auto-codés sans "
                f"erreur, et {policy.min_positives} codes vrais par code, catégorie ou chapitre "
                "pour en fixer le seuil."
            )
        best = h.best_target_with_automation
        if best:
            where = ("seuils ajustés sur l'autre moitié, mesurés ici" if best.source == "target_sweep"
                     else "lu sur la courbe de ces séjours, indicatif")
            parts.append(
                f"À une cible plus basse de {_pct(best.target_precision, 0)}, "
                f"{_pct(best.automation_rate)} des diagnostics seraient auto-codés, avec une "
                f"précision mesurée de {_pct(best.measured_precision)} ({where})."
            )
            low = h.lowest_target_row
            if low and low.target_precision < best.target_precision and low.n_auto:
                parts.append(
                    f"À {_pct(low.target_precision, 0)}, ce serait {_pct(low.automation_rate)} "
                    f"(précision mesurée {_pct(low.measured_precision)})."
                )
        elif h.lowest_target_tried is not None:
            parts.append(f"Même à la cible la plus basse essayée ({_pct(h.lowest_target_tried, 0)}), "
                         "rien ne serait auto-codé.")
        parts.append(f"L'objectif national est de {_pct(goal, 0)} des diagnostics auto-codés.")
    cap = policy.max_review_per_stay
    parts.append(
        f"Revue : {_num(h.review_per_stay_mean, 1)} codes par séjour en moyenne "
        f"(90e centile {_num(h.review_per_stay_p90, 0)}"
        + (f", plafond {cap}" if cap is not None else ", sans plafond")
        + f") ; auto + revue retrouvent {_pct(h.recall_auto_or_review)} des diagnostics "
        f"({_pct(h.recall_auto_or_review_uncapped)} sans plafond ni plancher)."
    )
    return " ".join(parts)


def _roman_key(key: str) -> tuple[int, str]:
    values = {"I": 1, "V": 5, "X": 10, "L": 50}
    if key and all(ch in values for ch in key):
        total = 0
        for a, b in zip(key, [*key[1:], ""], strict=True):
            v = values[a]
            total += -v if b and values[b] > v else v
        return total, key
    if key in BAND_ORDER:
        return BAND_ORDER.index(key), key
    return (int(key), key) if key.isdigit() else (999, key)


# --------------------------------------------------------------------------- HTML


def _pct(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.{digits}f} %".replace(".", ",")


def _num(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}".replace(".", ",")


def _text(x: str) -> Markup:
    # Element text: &, < and > escaped, apostrophes left readable in the page source.
    return Markup(html.escape(x, quote=False))


def _json_fr(x: Any) -> str:
    return json.dumps(x, ensure_ascii=False)


@functools.cache
def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cimcoder.eval", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=_pct, num=_num, text=_text, json_fr=_json_fr)
    env.globals.update(BAND_ORDER=BAND_ORDER, BAND_FR=BAND_FR)
    return env


def render_html(report: Report) -> str:
    """One self-contained HTML page (French): no script, no external resource."""
    return _templates().get_template("automation_report.html").render(report=report)


def write_report(
    report: Report, folder: str | Path, *, tracker: Tracker | None = None,
    artifact_path: str | None = None,
) -> tuple[Path, Path]:
    """Write `automation_report.json` and `.html` into `folder`; log them when tracked."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / REPORT_JSON
    html_path = out / REPORT_HTML
    json_path.write_text(json.dumps(report.model_dump(mode="json"), ensure_ascii=False, indent=1,
                                    allow_nan=False), encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    if tracker is not None:
        flat = {f"auto.{k}": v for k, v in _numbers(report.headline).items()}
        flat.update({f"eval.{k}": v for k, v in _numbers(report.metrics).items()})
        flat.update({f"eval.auto.{k}": v for k, v in _numbers(report.metrics.auto).items()})
        tracker.log_metrics(flat)
        tracker.log_artifacts(out, artifact_path)
    logger.info("automation report written to %s", out)
    return json_path, html_path


def read_report(path: str | Path) -> Report:
    """A report written by `write_report` (its JSON file, or the folder holding it)."""
    file = Path(path)
    if file.is_dir():
        file = file / REPORT_JSON
    return Report.model_validate_json(file.read_text(encoding="utf-8"))


def _numbers(part: BaseModel) -> dict[str, int | float]:
    """The top-level numeric figures of a section, under their JSON names (MLflow metrics)."""
    return {k: v for k, v in part.model_dump().items()
            if isinstance(v, int | float) and not isinstance(v, bool)}
