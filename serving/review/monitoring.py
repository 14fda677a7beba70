"""Monitoring of auto-coding in production, from the review store.

- weekly auto-coding rate (stays whose every kept suggestion was 'auto');
- observed precision of auto-coded codes, measured on the quality-control sample;
- codes most often corrected by the coders (rejected, changed, added as missed);
- drift: PSI of the score distribution of each week against the first week (reference),
  and of the suggested-code frequencies against the model's training counts (labels.json).
"""

from __future__ import annotations

import datetime
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select

from cimcoder.run_folder import LABELS_FILE, read_json
from cimcoder.serving.review.store import (
    Prediction,
    Review,
    ReviewCode,
    ReviewStay,
    ReviewStore,
)

logger = logging.getLogger(__name__)

SCORE_BINS = tuple(i / 10 for i in range(11))
PSI_EPS = 1e-4
# Usual reading of PSI: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.
PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
TOP_CODES = 15


def psi(reference: Sequence[float], current: Sequence[float]) -> float:
    """Population stability index between two distributions given as proportions."""
    total = 0.0
    for ref, cur in zip(reference, current, strict=True):
        r = max(ref, PSI_EPS)
        c = max(cur, PSI_EPS)
        total += (c - r) * math.log(c / r)
    return total


def histogram(scores: Sequence[float], bins: Sequence[float] = SCORE_BINS) -> list[float]:
    """Proportions of `scores` in the bins [b0, b1), ..., [b_{n-1}, b_n] (last bin closed)."""
    counts = [0] * (len(bins) - 1)
    for s in scores:
        i = min(max(math.floor(s * (len(bins) - 1)), 0), len(bins) - 2)
        counts[i] += 1
    n = sum(counts)
    return [c / n for c in counts] if n else [0.0] * len(counts)


def psi_level(value: float) -> str:
    if value >= PSI_MAJOR:
        return "majeure"
    if value >= PSI_MODERATE:
        return "modérée"
    return "stable"


def week_of(moment: datetime.datetime | datetime.date) -> str:
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def labels_for_app(app: Any) -> dict[str, int] | None:
    """Training code counts of the served model (its labels.json), when one is loaded."""
    predictor = getattr(app.state, "predictor", None)
    for holder in (predictor, getattr(predictor, "scorer", None)):
        space = getattr(holder, "label_space", None)
        counts = getattr(space, "train_counts", None)
        if counts:
            return {str(k): int(v) for k, v in counts.items()}
    return None


def load_train_counts(path: Path) -> dict[str, int]:
    """`train_counts` of a labels.json (or of the labels.json inside a run folder)."""
    if path.is_dir():
        path = path / LABELS_FILE
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("train_counts", {}), dict):
        raise ValueError(f"{path} is not a {LABELS_FILE} (no 'train_counts' object)")
    return {str(k): int(v) for k, v in data.get("train_counts", {}).items()}


def _code_drift(suggested: Counter[str], train: Mapping[str, int]) -> dict[str, Any]:
    """Compare the share of each code among suggestions with its share in training."""
    n_prod = sum(suggested.values())
    n_train = sum(train.values())
    if not n_prod or not n_train:
        return {"psi": None, "level": None, "codes": []}
    top = [c for c, _ in Counter(train).most_common(TOP_CODES)]
    top += [c for c, _ in suggested.most_common(TOP_CODES) if c not in top]
    ref = [train.get(c, 0) / n_train for c in top]
    cur = [suggested.get(c, 0) / n_prod for c in top]
    ref.append(max(0.0, 1 - sum(ref)))
    cur.append(max(0.0, 1 - sum(cur)))
    value = psi(ref, cur)
    rows: list[dict[str, Any]] = [
        {
            "code": c,
            "train_share": round(r, 4),
            "production_share": round(p, 4),
            "ratio": round(p / r, 2) if r > 0 else None,
        }
        for c, r, p in zip(top, ref, cur, strict=False)
    ]
    rows.sort(key=lambda row: abs(row["production_share"] - row["train_share"]), reverse=True)
    return {"psi": round(value, 4), "level": psi_level(value), "codes": rows[:TOP_CODES]}


def compute(store: ReviewStore, labels: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The monitoring report (the JSON of `GET /v1/monitoring`)."""
    # Imported here: scipy is only needed once a report is built, not when the app starts.
    from cimcoder.eval.intervals import proportion_interval

    with store.session() as session:
        stays = session.execute(
            select(
                ReviewStay.id,
                ReviewStay.created_at,
                ReviewStay.auto_coded,
                ReviewStay.qc_sampled,
                ReviewStay.status,
            )
        ).all()
        preds = session.execute(
            select(Prediction.stay_id, Prediction.code, Prediction.score, Prediction.decision)
        ).all()
        reviews = session.execute(
            select(Review.id, Review.stay_id, Review.new_version, Review.qc).order_by(
                Review.new_version
            )
        ).all()
        review_codes = session.execute(
            select(
                ReviewCode.review_id,
                ReviewCode.code,
                ReviewCode.action,
                ReviewCode.suggested_decision,
            )
        ).all()

    week_by_stay = {s.id: week_of(s.created_at) for s in stays}
    weekly: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"stays": 0, "auto_coded": 0, "qc_sampled": 0, "validated": 0,
                 "codes_kept": 0, "codes_auto": 0}
    )
    for s in stays:
        w = weekly[week_by_stay[s.id]]
        w["stays"] += 1
        w["auto_coded"] += int(s.auto_coded)
        w["qc_sampled"] += int(s.qc_sampled)
        w["validated"] += int(s.status == "validated")
    scores_by_week: dict[str, list[float]] = defaultdict(list)
    suggested: Counter[str] = Counter()
    for p in preds:
        week = week_by_stay.get(p.stay_id)
        if week is None:
            continue
        scores_by_week[week].append(float(p.score))
        if p.decision != "reject":
            suggested[p.code] += 1
            weekly[week]["codes_kept"] += 1
            weekly[week]["codes_auto"] += int(p.decision == "auto")

    weeks = sorted(weekly)
    reference_week = weeks[0] if weeks else None
    reference = histogram(scores_by_week[reference_week]) if reference_week else None
    weekly_rows = []
    for week in weeks:
        w = weekly[week]
        value = psi(reference, histogram(scores_by_week[week])) if reference else None
        weekly_rows.append(
            {
                "week": week,
                **w,
                "auto_rate": round(w["auto_coded"] / w["stays"], 4) if w["stays"] else None,
                "auto_code_rate": round(w["codes_auto"] / w["codes_kept"], 4)
                if w["codes_kept"]
                else None,
                "score_psi": round(value, 4) if value is not None else None,
                "score_drift": psi_level(value) if value is not None else None,
            }
        )

    # Only the last save of each stay counts (earlier drafts were superseded).
    last_review: dict[str, tuple[str, bool]] = {}
    for r in reviews:
        last_review[r.stay_id] = (r.id, bool(r.qc))
    wanted = {rid: qc for rid, qc in last_review.values()}
    qc_total = qc_confirmed = 0
    qc_stays: set[str] = set()
    corrections: dict[str, Counter[str]] = defaultdict(Counter)
    stay_of_review = {rid: sid for sid, (rid, _) in last_review.items()}
    for rc in review_codes:
        if rc.review_id not in wanted:
            continue
        if wanted[rc.review_id] and rc.suggested_decision == "auto":
            qc_total += 1
            qc_confirmed += int(rc.action == "accept")
            qc_stays.add(stay_of_review[rc.review_id])
        if rc.action in ("reject", "change") and rc.suggested_decision in ("auto", "review"):
            corrections[rc.code][rc.action] += 1
        elif rc.action == "add":
            corrections[rc.code]["add"] += 1
        elif rc.action == "accept":
            corrections[rc.code]["accept"] += 1
    corrected: list[dict[str, Any]] = [
        {
            "code": code,
            "rejected": c["reject"],
            "changed": c["change"],
            "added": c["add"],
            "accepted": c["accept"],
            "corrections": c["reject"] + c["change"] + c["add"],
        }
        for code, c in corrections.items()
        if c["reject"] + c["change"] + c["add"] > 0
    ]
    corrected.sort(key=lambda row: (-row["corrections"], row["code"]))
    interval = proportion_interval(qc_confirmed, qc_total, confidence=0.95, method="wilson")
    status_counts = Counter(s.status for s in stays)
    return {
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "totals": {
            "stays": len(stays),
            "auto_coded": sum(int(s.auto_coded) for s in stays),
            "by_status": dict(sorted(status_counts.items())),
        },
        "weekly": weekly_rows,
        "qc": {
            "stays_reviewed": len(qc_stays),
            "auto_codes_checked": qc_total,
            "auto_codes_confirmed": qc_confirmed,
            "precision": round(qc_confirmed / qc_total, 4) if qc_total else None,
            "precision_ci95": [round(v, 4) for v in interval] if interval else None,
        },
        "most_corrected": corrected[:TOP_CODES],
        "drift": {
            "score_reference_week": reference_week,
            "score_bins": list(SCORE_BINS),
            "code_frequency": _code_drift(suggested, labels)
            if labels
            else {"psi": None, "level": None, "codes": [], "note": f"no {LABELS_FILE} train_counts"},
        },
    }
