"""CLI of cimcoder.eval: `cimcoder calibrate` and `cimcoder evaluate`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from cimcoder.errors import CimcoderError
from cimcoder.eval.defaults import (
    DEFAULT_CALIBRATION,
    DEFAULT_CONFIDENCE,
    DEFAULT_FOLDS,
    DEFAULT_MAX_REVIEW,
    DEFAULT_MIN_REVIEW_PROBABILITY,
    DEFAULT_REVIEW_BUDGET,
)

if TYPE_CHECKING:
    from cimcoder.eval.report import Summary


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (e.g. 0.95), got {text}")
    return value


def _confidence(text: str) -> float:
    value = _fraction(text)
    if not 0.5 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0.5, 1), got {text}")
    return value


def _review_cap(text: str) -> int | None:
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r} (or 'none')") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _review_budget(text: str) -> float | None:
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (or 'none')") from None
    if not 0.0 < value <= 100.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 100], got {text}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (e.g. 0.05), got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `calibrate` and `evaluate`."""
    p = subparsers.add_parser(
        "calibrate",
        help="fit calibration + auto/review/reject thresholds of a run (writes RUN/policy.json)",
        description="Fit the decision policy of a model run on data kept apart from the test "
        "data. Default: the run's dev set (codiesp-fr/dev for a CodiEsp run), measured by "
        "cross-fitting (each stay decided by a policy fitted without it); with DATASET#A, "
        "fitted on half A and measured on half B. Target vs measured precision is printed.",
    )
    p.add_argument("run", metavar="RUN", help="model run folder (runs/<experiment>/<run_name>)")
    p.add_argument("--target-precision", type=_fraction, default=0.95,
                   help="precision the DIM requires of auto-coded codes (default 0.95)")
    p.add_argument("--data", default=None, metavar="DATASET",
                   help="fitting data; DATASET#A / DATASET#B selects a fixed half, the other "
                   "one measures (default: <run dev set>, cross-fitted)")
    p.add_argument("--folds", type=int, default=DEFAULT_FOLDS, metavar="K",
                   help="folds of the cross-fitted measurement on a whole data set "
                   f"(default {DEFAULT_FOLDS}; 0: not measured)")
    p.add_argument("--confidence", type=_confidence, default=DEFAULT_CONFIDENCE, metavar="C",
                   help="one-sided confidence of the lower bound on auto precision that an auto "
                   f"threshold must clear (default {DEFAULT_CONFIDENCE}; a lower one automates "
                   "more on less data, and certifies weak models more easily)")
    p.add_argument("--target-recall", type=_fraction, default=0.95,
                   help="share of true codes the review threshold keeps out of 'reject', before "
                   "the per-stay review limits (default 0.95)")
    p.add_argument("--calibration", choices=("isotonic", "platt", "temperature", "none"),
                   default=DEFAULT_CALIBRATION, help="score calibration: platt and temperature fit one "
                   "pooled map, which keeps the model's ranking of codes; isotonic one map per code "
                   f"or pooled node (default {DEFAULT_CALIBRATION})")
    p.add_argument("--bound", choices=("wilson", "clopper-pearson"), default="wilson",
                   help="confidence bound on auto precision: the lower bound an auto threshold must "
                   "clear, the upper bound that withdraws an inherited one (default wilson)")
    p.add_argument("--min-positives", type=int, default=50,
                   help="true codes a code (else its category, then its chapter) needs for its own "
                   "auto and review thresholds and, with isotonic calibration, its own map; "
                   "below that it inherits the pooled one (default 50)")
    p.add_argument("--max-review", type=_review_cap, default=DEFAULT_MAX_REVIEW, metavar="N",
                   help="at most N codes per stay go to review, the most probable; the others "
                   f"are rejected ('none': no cap; default {DEFAULT_MAX_REVIEW}). Auto-coding is never capped")
    p.add_argument("--min-review-probability", type=_probability,
                   default=DEFAULT_MIN_REVIEW_PROBABILITY, metavar="P",
                   help="calibrated probability below which a code is rejected rather than "
                   f"reviewed (default {DEFAULT_MIN_REVIEW_PROBABILITY})")
    p.add_argument("--review-budget", type=_review_budget, default=DEFAULT_REVIEW_BUDGET, metavar="B",
                   help="auto + review codes per stay at most ceil(B x the codes the model expects "
                   "for the stay) + 1, so that a short letter gets a short list ('none': off; "
                   f"default {DEFAULT_REVIEW_BUDGET:g})")
    p.set_defaults(handler=_calibrate)

    p = subparsers.add_parser(
        "evaluate",
        help="metrics + automation report (HTML + JSON) of a run on a data set",
        description="Score DATASET with the run's model and policy (a run without policy.json is "
        "calibrated the default way first); write automation_report.html/.json into "
        "RUN/eval/<dataset>/ (or --output) and print a summary. Decisions are never measured on "
        "the stays that fitted them: if the policy was fitted on one half of DATASET, only the "
        "other half is measured; if on all of DATASET, by cross-fitting (a policy fitted on all "
        "of DATASET without cross-fitting is refused there).",
    )
    p.add_argument("run", metavar="RUN", help="model run folder")
    p.add_argument("--data", required=True, metavar="DATASET",
                   help="data set name or path (e.g. codiesp-fr/dev), optionally #A or #B")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="report folder (default RUN/eval/<dataset>, '/' and '#' written '_')")
    p.set_defaults(handler=_evaluate)


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: Any, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def _prf(m: Summary) -> str:
    return " / ".join(_num(x, ".3f") for x in (m.micro_precision, m.micro_recall, m.micro_f1))


def _calibrate(args: argparse.Namespace) -> int:
    from cimcoder.eval.runner import calibrate_run

    if args.min_positives < 1:
        raise CimcoderError("--min-positives must be at least 1")
    if args.folds < 0 or args.folds == 1:
        raise CimcoderError("--folds must be 0 (no measurement) or at least 2")
    result = calibrate_run(
        args.run, data=args.data, target_precision=args.target_precision,
        target_recall=args.target_recall, calibration=args.calibration, bound=args.bound,
        min_positives=args.min_positives, max_review_per_stay=args.max_review,
        min_review_probability=args.min_review_probability, folds=args.folds,
        review_budget=args.review_budget,
        confidence=args.confidence,
    )
    pol = result.policy
    levels = pol.level_counts()
    print(f"policy {pol.version['hash'][:12]} written to {result.path}")
    print(f"fitted on {result.fitted_on.name}: {len(result.fitted_on.stay_ids)} stays, "
          f"{int(result.fitted_on.y.sum())} gold codes in the label space")
    print(f"calibration: {pol.calibrator.method}; auto thresholds by level: "
          + ", ".join(f"{k} {v}" for k, v in levels["auto"].items())
          + f"; never auto: {levels['never_auto']['codes']} codes")
    m = result.measured
    if m is not None:
        gap = None if m["measured_precision"] is None else 100 * (m["measured_precision"] - m["target_precision"])
        how = ("not used for fitting" if not m.get("cross_fitted_folds") else
               f"{m['cross_fitted_folds']}-fold cross-fitting: each stay decided by a policy fitted without it")
        print(f"measured on {m['data']} ({m['n_stays']} stays, {how}):")
        print(f"  target precision   {_pct(m['target_precision'])}")
        print(f"  measured precision {_pct(m['measured_precision'])} "
              f"({'n/a' if gap is None else f'{gap:+.1f} points'}, {m['n_auto']} codes auto-coded)")
        print(f"  automation rate    {_pct(m['automation_rate'])} of true codes (goal 90.0%)")
        cap = "no cap" if pol.max_review_per_stay is None else f"cap {pol.max_review_per_stay}"
        if pol.review_budget is not None:
            cap += f", budget {pol.review_budget:g} x expected codes + 1"
        print(f"  review per stay    {m['review_per_stay_mean']:.1f} mean, {m['review_per_stay_p90']:.0f} p90 "
              f"({cap}, floor {pol.min_review_probability:g}); auto+review keep "
              f"{_pct(m['recall_auto_or_review'])} of true codes")
        if m.get("micro_f1") is not None:
            print(f"  micro-F1           {m['micro_f1']:.3f} at the global F1 threshold "
                  f"{pol.f1_threshold:.4g} (raw scores, chosen on the fitting data)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cimcoder.eval.report import REPORT_HTML
    from cimcoder.eval.runner import evaluate_run

    report = evaluate_run(args.run, data=args.data, output=args.output)
    h, m = report.headline, report.metrics
    print(f"data: {report.dataset} ({h.n_stays} stays, {h.n_true_codes} true codes, "
          f"{h.n_codes_outside_label_space} outside the label space)")
    for note in report.notes:
        print(f"note: {note}")
    rows = [
        ("target auto precision", _pct(h.target_precision)),
        ("measured auto precision", f"{_pct(h.auto_precision)} "
         f"({report.policy.confidence:.0%} lower bound {_pct(h.auto_precision_lower_bound)})"),
        ("automation rate", f"{_pct(h.automation_rate)} of true codes (goal {_pct(h.goal)})"),
        ("stays fully auto-coded", _pct(h.share_stays_fully_auto_coded)),
        ("codes to review per stay", f"{h.review_per_stay_mean:.2f} (p90 {h.review_per_stay_p90:.0f}, "
         + ("no cap" if h.max_review_per_stay is None else f"cap {h.max_review_per_stay}")
         + f"; uncapped {h.review_per_stay_mean_uncapped:.1f})"),
        ("auto + review recall", f"{_pct(h.recall_auto_or_review)} of true codes "
         f"(uncapped {_pct(h.recall_auto_or_review_uncapped)})"),
        ("auto-coded errors", str(h.n_auto_errors)),
        ("MAP (raw scores)", f"{m.map:.3f}"),
        ("micro P / R / F1", _prf(m) + f" at F1 threshold {_num(m.f1_threshold, '.4g')}"),
        ("macro F1", _num(m.macro_f1, ".3f")),
        ("micro P / R / F1 (auto)", _prf(m.auto)),
        ("P@5 / R@5", f"{m.p_at_5:.3f} / {m.r_at_5:.3f}"),
        ("micro AUC", "n/a" if m.micro_auc is None else f"{m.micro_auc:.3f}"),
    ]
    if m.principal_diagnosis_accuracy is not None:
        rows.append(("DP ranked first", _pct(m.principal_diagnosis_accuracy)))
    width = max(len(k) for k, _ in rows)
    print(h.statement_fr)
    for k, v in rows:
        print(f"  {k.ljust(width)}  {v}")
    if report.target_sweep:
        print("target vs measured (each target refitted; never measured on its fitting stays):")
        for r in report.target_sweep:
            print(f"  target {_pct(r.target_precision)}  measured {_pct(r.measured_precision)}  "
                  f"automation {_pct(r.automation_rate)}  review/stay {r.review_per_stay_mean or 0:.1f}")
    print(f"report: {report.folder}/{REPORT_HTML}")
    return 0
