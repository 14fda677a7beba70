"""The automation report: how many diagnoses cimcoder codes on its own, and how well.

`build_report(...)` computes the JSON report from gold codes, raw scores and a decision
policy; `render_html(report)` turns it into one self-contained French HTML page (inline SVG,
no script, no external resource); `write_report(report, folder)` writes both, and logs them
to MLflow when a tracker is given.
"""

from __future__ import annotations

import datetime
import html
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cimcoder.eval import metrics as M
from cimcoder.eval.calibration import reliability
from cimcoder.eval.hierarchy import Hierarchy
from cimcoder.eval.policy import (
    AUTO,
    REJECT,
    REVIEW,
    CrossFittedPolicy,
    DecisionPolicy,
    lower_bound,
)

logger = logging.getLogger(__name__)

NATIONAL_GOAL = 0.90
REPORT_JSON = "automation_report.json"
REPORT_HTML = "automation_report.html"
TRADEOFF_CAPS = (5, 10, 20, 50, None)  # review codes per stay shown to the DIM (None: no cap)
MAX_LISTED_ERRORS = 200
BAND_ORDER = ("frequent", "rare", "unseen")
BAND_FR = {"frequent": "fréquents", "rare": "rares", "unseen": "jamais vus", "?": "inconnus"}


class Tracker(Protocol):
    """What the report needs of `cimcoder.training.tracking.RunTracker`."""

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None: ...
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None: ...


# --------------------------------------------------------------------------- computing


def _share(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def automation_curve(
    y: np.ndarray, probs: np.ndarray, *, n_gold: float | None = None, n_points: int = 60
) -> list[dict[str, float]]:
    """Auto-coded share against auto precision, sweeping one threshold over the pairs.

    Each point: `threshold`, `precision` of the pairs at or above it, `share` = correct
    auto-coded codes / all true codes (`n_gold`, default the in-space gold count).
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
        points.append({"threshold": float(t), "precision": float(tp[k - 1] / k),
                       "share": float(tp[k - 1] / total), "n_auto": k})
    return points


def _operating_point(
    y: np.ndarray, d: np.ndarray, *, n_gold: float | None = None, confidence: float = 0.95
) -> dict[str, Any]:
    auto = d == AUTO
    n_auto = int(auto.sum())
    n_right = int((y & auto).sum())
    total = float(y.sum() if n_gold is None else n_gold)
    return {
        "n_true_codes": int(total),
        "n_auto": n_auto,
        "n_auto_correct": n_right,
        "n_auto_errors": n_auto - n_right,
        "auto_precision": _share(n_right, n_auto),
        "auto_precision_lower_bound": float(lower_bound(n_right, n_auto, confidence=confidence))
        if n_auto else None,
        "automation_rate": _share(n_right, total),
        "n_review": int((d == REVIEW).sum()),
        "n_true_in_review": int((y & (d == REVIEW)).sum()),
        "n_true_rejected": int((y & (d == REJECT)).sum()),
    }


def build_report(
    y_true: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    policy: DecisionPolicy,
    *,
    stay_ids: Sequence[str],
    n_gold: Sequence[int] | None = None,
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
) -> dict[str, Any]:
    """The automation report (a JSON-ready dict) of one scored data set under `policy`.

    With `held_out` (the policy's data set itself, cross-fitted), each stay is calibrated
    and decided by the fold policy fitted without it, F1 decisions use that fold's F1
    threshold, and `policy` only describes what is shipped.

    `y_true`: gold codes inside the label space; `n_gold`: per-stay count of all gold
    codes, including those outside the label space (they count as not auto-coded).

    `metrics` holds the model-comparison figures: ranking metrics (MAP, P@k, AUC) on raw
    scores, and micro/macro P/R/F1 of `raw score >= f1_threshold`, one global threshold
    chosen on the policy's fitting data (default `policy.f1_threshold`), never on these
    stays. The figures of the auto-coded decisions are under `metrics["auto"]`.
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
    d = decider.decide(probs, labels, tiebreak=s, never_auto=never_auto)
    d_uncapped = decider.decide(probs, labels, review_cap=False, never_auto=never_auto)
    hierarchy = Hierarchy(policy.terminology)
    g = np.asarray(n_gold, dtype=float) if n_gold is not None else y.sum(axis=1).astype(float)
    title_of: Callable[[str], str | None]
    if code_titles is None:
        title_of = lambda c: None  # noqa: E731
    elif isinstance(code_titles, Mapping):
        title_of = code_titles.get
    else:
        title_of = code_titles

    # -- headline
    op = _operating_point(y, d, n_gold=float(g.sum()), confidence=policy.confidence)
    auto, review = d == AUTO, d == REVIEW
    review_per_stay = review.sum(axis=1)
    review_uncapped = d_uncapped == REVIEW
    review_per_stay_uncapped = review_uncapped.sum(axis=1)
    total_true = float(g.sum())
    missed_per_stay = g - (y & auto).sum(axis=1)  # true codes a coder must still add/confirm
    errors_per_stay = (~y & auto).sum(axis=1)
    no_review = review_per_stay == 0
    fully_right = no_review & (errors_per_stay == 0) & (missed_per_stay == 0)
    headline = {
        "goal": NATIONAL_GOAL,
        "target_precision": policy.target_precision,
        **op,
        "automation_rate_in_space": _share(op["n_auto_correct"], y.sum()),
        "n_stays": int(y.shape[0]),
        "n_codes_outside_label_space": int(g.sum() - y.sum()),
        "stays_without_review": int(no_review.sum()),
        "share_stays_without_review": _share(no_review.sum(), y.shape[0]),
        "stays_fully_auto_coded": int(fully_right.sum()),
        "share_stays_fully_auto_coded": _share(fully_right.sum(), y.shape[0]),
        "review_per_stay_mean": float(review_per_stay.mean()) if y.shape[0] else 0.0,
        "review_per_stay_median": float(np.median(review_per_stay)) if y.shape[0] else 0.0,
        "review_per_stay_p90": float(np.percentile(review_per_stay, 90)) if y.shape[0] else 0.0,
        "max_review_per_stay": policy.max_review_per_stay,
        "min_review_probability": policy.min_review_probability,
        # What the workload cap costs: true codes found by auto + review, with and without it.
        "recall_auto_or_review": _share(float((y & (auto | review)).sum()), total_true),
        "recall_auto_or_review_uncapped": _share(float((y & (auto | review_uncapped)).sum()), total_true),
        "review_per_stay_mean_uncapped": float(review_per_stay_uncapped.mean()) if y.shape[0] else 0.0,
        "review_per_stay_p90_uncapped": float(np.percentile(review_per_stay_uncapped, 90))
        if y.shape[0] else 0.0,
        "recall_kept_out_of_reject": _share(y.sum() - op["n_true_rejected"], y.sum()),
        "meets_target": bool(op["auto_precision"] is not None
                             and op["auto_precision"] >= policy.target_precision - 0.02),
    }
    headline["review_cap_tradeoff"] = review_cap_tradeoff(y, probs, policy, total_true, scores=s,
                                                          decider=held_out, never_auto=never_auto)
    headline.update(_automation_diagnosis(y, probs, policy, target_sweep or [], total_true,
                                          op["n_auto"]))
    headline["statement_fr"] = headline_statement(headline, policy)

    # -- auto-coded errors, most confident first
    rows, cols = np.nonzero(~y & auto)
    order = np.argsort(-probs[rows, cols], kind="stable")
    auto_errors = [
        {
            "stay_id": str(stay_ids[int(rows[i])]),
            "code": labels[int(cols[i])],
            "label": title_of(labels[int(cols[i])]),
            "score": float(probs[rows[i], cols[i]]),
            "raw_score": float(s[rows[i], cols[i]]),
        }
        for i in order[:MAX_LISTED_ERRORS]
    ]

    # -- groups: chapters and bands
    chapters = [hierarchy.chapter(c) for c in labels]
    band_of = [str((bands or {}).get(c, "?")) for c in labels] if bands else ["?"] * len(labels)

    def group_block(groups: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in sorted(set(groups), key=_roman_key):
            idx = np.array([j for j, gk in enumerate(groups) if gk == key], dtype=int)
            if not y[:, idx].any() and not auto[:, idx].any():
                continue
            out[key] = {
                "n_codes": len(idx),
                "operating_point": _operating_point(y[:, idx], d[:, idx],
                                                    confidence=policy.confidence),
                "curve": automation_curve(y[:, idx], probs[:, idx], n_points=25),
            }
        return out

    by_chapter = group_block(chapters)
    for key, block in by_chapter.items():
        block["title"] = hierarchy.chapter_title(key)
    by_band = group_block(band_of) if bands else {}

    # -- metrics
    # Flat figures compare models: raw-score rankings, and P/R/F1 at one global threshold
    # fitted on the policy's data (the usual micro-F1). Auto-coded figures live in "auto".
    t_f1 = policy.f1_threshold if f1_threshold is None else float(f1_threshold)
    # One threshold per stay: the fold policy's under cross-fitting, else the global one.
    row_t = held_out.f1_thresholds() if held_out is not None else np.full(y.shape[0], np.nan if t_f1 is None else t_f1)
    if np.isnan(row_t).all():
        t_f1 = None
    at_f1 = s >= row_t[:, None]  # nan: never
    chapter_of = dict(zip(labels, chapters, strict=True))
    band_map = dict(zip(labels, band_of, strict=True))
    cy, cs, cats = M.collapse_to_groups(y, s, labels, hierarchy.category)
    cy_p, cs_p, _ = M.collapse_to_groups(y, probs, labels, hierarchy.category)
    _, cauto, _ = M.collapse_to_groups(y, auto.astype(float), labels, hierarchy.category)
    metrics: dict[str, Any] = {
        "decisions": "raw score >= f1_threshold (one global threshold fitted on the policy's data)"
        if held_out is None else
        "raw score >= the F1 threshold of the fold policy fitted without the stay (cross-fitted)",
        "f1_threshold": t_f1,
        **M.summarize(y, s, at_f1, n_gold=g),
        "category_level": M.summarize(cy, cs, cs >= row_t[:, None]),
        "by_chapter": M.breakdown(y, s, labels, chapter_of, at_f1),
        "by_band": M.breakdown(y, s, labels, band_map, at_f1) if bands else {},
        "auto": {
            "decisions": "auto (calibrated probabilities, per-code thresholds)",
            **M.summarize(y, probs, auto, n_gold=g),
            "category_level": M.summarize(cy_p, cs_p, cauto >= 1.0),
            "by_chapter": M.breakdown(y, probs, labels, chapter_of, auto),
            "by_band": M.breakdown(y, probs, labels, band_map, auto) if bands else {},
        },
        "auto_or_review": M.summarize(y, probs, auto | review, n_gold=g),
    }
    if t_f1 is None:  # no threshold to apply: say "unknown", not a misleading 0
        for key in ("micro_precision", "micro_recall", "micro_f1",
                    "macro_precision", "macro_recall", "macro_f1"):
            metrics[key] = None
            metrics["category_level"][key] = None
            for block in (*metrics["by_chapter"].values(), *metrics["by_band"].values()):
                block[key] = None
    metrics["n_categories"] = len(cats)
    if principal is not None:
        acc, n_dp = M.principal_diagnosis_accuracy(s, labels, principal)
        metrics["principal_diagnosis_accuracy"] = acc if n_dp else None
        metrics["n_stays_with_principal"] = n_dp

    rel_before = reliability(y, s)
    rel_after = reliability(y, probs)
    return {
        "report": "cimcoder automation report",
        "format": 1,
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "dataset": dataset,
        "run": run,
        "policy": {
            "version": policy.version,
            "target_precision": policy.target_precision,
            "target_recall": policy.target_recall,
            "confidence": policy.confidence,
            "bound": policy.bound,
            "calibration": policy.calibrator.method,
            "fitted_on": policy.fitted_on,
            "levels": policy.level_counts(),
            "max_review_per_stay": policy.max_review_per_stay,
            "min_review_probability": policy.min_review_probability,
            "f1_threshold": policy.f1_threshold,
        },
        "headline": headline,
        "target_sweep": [dict(r) for r in (target_sweep or [])],
        "auto_errors": auto_errors,
        "n_auto_errors_listed": len(auto_errors),
        "automation_curve": {
            "overall": automation_curve(y, probs, n_gold=float(g.sum())),
            "by_chapter": by_chapter,
            "by_band": by_band,
        },
        "reliability": {"before": rel_before, "after": rel_after},
        "metrics": metrics,
        # Per frequency band, for model comparisons: recall/precision/F1 at the global F1
        # threshold on raw scores, and the auto-coded figures beside them.
        "bands": {
            b: {"recall": m["micro_recall"], "precision": m["micro_precision"], "f1": m["micro_f1"],
                "map": m["map"], "n_codes": m["n_codes"],
                "auto_recall": metrics["auto"]["by_band"][b]["micro_recall"],
                "auto_precision": metrics["auto"]["by_band"][b]["micro_precision"]}
            for b, m in metrics["by_band"].items()
        },
        "automation": {"headline": headline},
        "notes": list(notes),
    }


def review_cap_tradeoff(
    y: np.ndarray, probs: np.ndarray, policy: DecisionPolicy, total_true: float,
    caps: Sequence[int | None] = TRADEOFF_CAPS, *, scores: np.ndarray | None = None,
    decider: CrossFittedPolicy | None = None, never_auto: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Coder workload against recall of auto + review, for several per-stay review caps.

    Every row keeps the policy's probability floor, except the last one (no cap, no floor).
    `decider` (cross-fitted fold policies) decides instead of `policy` when given.
    """
    rows = []
    settings: list[tuple[int | None, float]] = [
        (cap, policy.min_review_probability)
        for cap in sorted({*caps, policy.max_review_per_stay}, key=lambda c: math.inf if c is None else c)
    ]
    if policy.min_review_probability > 0:
        settings.append((None, 0.0))
    for cap, floor in settings:
        d = (decider or policy).with_review_cap(cap, floor).decide(
            probs, policy.labels, tiebreak=scores, never_auto=never_auto
        )
        review = d == REVIEW
        per_stay = review.sum(axis=1)
        rows.append({
            "max_review_per_stay": cap,
            "review_per_stay_mean": float(per_stay.mean()) if per_stay.size else 0.0,
            "review_per_stay_p90": float(np.percentile(per_stay, 90)) if per_stay.size else 0.0,
            "recall_auto_or_review": _share(float((y & ((d == AUTO) | review)).sum()), total_true),
            "min_review_probability": floor,
            "policy": cap == policy.max_review_per_stay and floor == policy.min_review_probability,
        })
    return rows


def min_auto_for_margin(target: float, *, confidence: float = 0.95, method: str = "wilson",
                        limit: int = 100_000) -> int | None:
    """Fewest auto-coded codes, all correct, whose precision lower bound reaches `target`."""
    n = np.arange(1, limit + 1)
    ok = np.flatnonzero(lower_bound(n, n, confidence=confidence, method=method) >= target)  # type: ignore[arg-type]
    return int(n[ok[0]]) if ok.size else None


def _automation_diagnosis(
    y: np.ndarray, probs: np.ndarray, policy: DecisionPolicy,
    sweep: Sequence[Mapping[str, Any]], total_true: float, n_auto: int,
) -> dict[str, Any]:
    """Why nothing is auto-coded (if so) and what lower targets would give."""
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
    automated = [r for r in sweep if r.get("n_auto")]
    if automated:
        r = max(automated, key=lambda r: r["target_precision"])
        best = {"target_precision": r["target_precision"],
                "measured_precision": r.get("measured_precision"),
                "automation_rate": r.get("automation_rate"), "source": "target_sweep"}
    elif not sweep and total_true > 0:
        # No refit on another half: read the curve of these stays (indicative, in-sample).
        curve = automation_curve(y, probs, n_gold=total_true)
        for level in (0.9, 0.8, 0.7, 0.6, 0.5):
            if level >= target:
                continue
            pts = [p for p in curve if p["precision"] >= level and p["n_auto"] >= 1]
            if pts:
                p = max(pts, key=lambda q: q["share"])
                best = {"target_precision": level, "measured_precision": p["precision"],
                        "automation_rate": p["share"], "source": "curve"}
                break
    return {
        "nothing_auto_reason": reason,
        "min_auto_for_margin": n_min,
        "top_precision_at_margin": top_precision,
        "top_precision_n": k,
        "best_target_with_automation": best,
        "lowest_target_tried": min((r["target_precision"] for r in sweep), default=None),
        "lowest_target_row": _slim(min(sweep, key=lambda r: r["target_precision"])) if sweep else None,
    }


def _slim(row: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("target_precision", "measured_precision", "automation_rate", "n_auto")
    return {k: row.get(k) for k in keys}


def headline_statement(h: Mapping[str, Any], policy: DecisionPolicy) -> str:
    """The headline in plain French: rate, measured precision, target, and why not more."""
    target, goal, rate = policy.target_precision, h.get("goal", NATIONAL_GOAL), h.get("automation_rate")
    parts: list[str] = []
    if h.get("n_auto"):
        parts.append(
            f"À la précision cible fixée par le DIM ({_pct(target, 0)}), cimcoder auto-code "
            f"{_pct(rate)} des diagnostics attendus, avec une précision mesurée de "
            f"{_pct(h.get('auto_precision'))} (borne basse {_pct(h.get('auto_precision_lower_bound'))})."
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
        n_min, top = h.get("min_auto_for_margin"), h.get("top_precision_at_margin")
        fitted = policy.fitted_on or {}
        if h.get("nothing_auto_reason") == "model_precision_too_low":
            parts.append(
                "Raison : la précision du modèle est trop faible. "
                + (f"Même ses {n_min} propositions les plus sûres ne sont justes qu'à {_pct(top)} "
                   f"ici, alors qu'il faut au moins {n_min} codes justes sans erreur pour "
                   f"garantir {_pct(target, 0)}." if n_min and top is not None else "")
            )
        else:
            parts.append(
                "Raison : trop peu de séjours pour la marge statistique. "
                + (f"Les {h.get('top_precision_n')} propositions les plus sûres du modèle sont justes à {_pct(top)} "
                   "ici, mais " if n_min and top is not None else "")
                + (f"l'ajustement ne disposait que de {fitted.get('n_stays')} séjours "
                   f"({fitted.get('n_gold_in_space')} codes vrais) ; " if fitted.get("n_stays") else "")
                + f"garantir {_pct(target, 0)} demande au moins {n_min} codes auto-codés sans "
                f"erreur, et {policy.min_positives} codes vrais par code, catégorie ou chapitre "
                "pour en fixer le seuil."
            )
        best = h.get("best_target_with_automation")
        if best:
            where = ("seuils ajustés sur l'autre moitié, mesurés ici" if best["source"] == "target_sweep"
                     else "lu sur la courbe de ces séjours, indicatif")
            parts.append(
                f"À une cible plus basse de {_pct(best['target_precision'], 0)}, "
                f"{_pct(best['automation_rate'])} des diagnostics seraient auto-codés, avec une "
                f"précision mesurée de {_pct(best['measured_precision'])} ({where})."
            )
            low = h.get("lowest_target_row")
            if low and low["target_precision"] < best["target_precision"] and low.get("n_auto"):
                parts.append(
                    f"À {_pct(low['target_precision'], 0)}, ce serait {_pct(low.get('automation_rate'))} "
                    f"(précision mesurée {_pct(low.get('measured_precision'))})."
                )
        elif h.get("lowest_target_tried") is not None:
            parts.append(f"Même à la cible la plus basse essayée ({_pct(h['lowest_target_tried'], 0)}), "
                         "rien ne serait auto-codé.")
        parts.append(f"L'objectif national est de {_pct(goal, 0)} des diagnostics auto-codés.")
    cap = policy.max_review_per_stay
    parts.append(
        f"Revue : {_num(h.get('review_per_stay_mean'), 1)} codes par séjour en moyenne "
        f"(90e centile {_num(h.get('review_per_stay_p90'), 0)}"
        + (f", plafond {cap}" if cap is not None else ", sans plafond")
        + f") ; auto + revue retrouvent {_pct(h.get('recall_auto_or_review'))} des diagnostics "
        f"({_pct(h.get('recall_auto_or_review_uncapped'))} sans plafond ni plancher)."
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

_PALETTE = ("#1f5fa8", "#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#a6761d")


def _pct(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.{digits}f} %".replace(".", ",")


def _num(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}".replace(".", ",")


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def svg_line_chart(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_range: tuple[float, float] = (0.0, 1.0),
    y_range: tuple[float, float] = (0.0, 1.0),
    vlines: Sequence[tuple[float, str]] = (),
    hlines: Sequence[tuple[float, str]] = (),
    markers: Sequence[tuple[float, float, str]] = (),
    diagonal: bool = False,
    css_id: str = "",
    width: int = 560,
    height: int = 360,
) -> str:
    """A small line chart as inline SVG (axes in percent)."""
    ml, mr, mt, mb = 58, 150, 30, 46
    pw, ph = width - ml - mr, height - mt - mb
    (x0, x1), (y0, y1) = x_range, y_range

    def X(v: float) -> float:
        return ml + (min(max(v, x0), x1) - x0) / (x1 - x0) * pw

    def Y(v: float) -> float:
        return mt + ph - (min(max(v, y0), y1) - y0) / (y1 - y0) * ph

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{_e(css_id)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{_e(title)}">',
        f"<title>{_e(title)}</title>",
        f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>',
    ]
    for i in range(6):
        fx = x0 + (x1 - x0) * i / 5
        fy = y0 + (y1 - y0) * i / 5
        parts.append(f'<line x1="{X(fx):.1f}" y1="{mt}" x2="{X(fx):.1f}" y2="{mt + ph}" stroke="#e3e3e3"/>')
        parts.append(f'<line x1="{ml}" y1="{Y(fy):.1f}" x2="{ml + pw}" y2="{Y(fy):.1f}" stroke="#e3e3e3"/>')
        parts.append(f'<text x="{X(fx):.1f}" y="{mt + ph + 16}" font-size="11" text-anchor="middle">'
                     f"{round(100 * fx)}</text>")
        parts.append(f'<text x="{ml - 6}" y="{Y(fy) + 4:.1f}" font-size="11" text-anchor="end">'
                     f"{round(100 * fy)}</text>")
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 8}" font-size="12" text-anchor="middle">'
                 f"{_e(x_label)}</text>")
    parts.append(f'<text transform="translate(14 {mt + ph / 2}) rotate(-90)" font-size="12" '
                 f'text-anchor="middle">{_e(y_label)}</text>')
    if diagonal:
        parts.append(f'<line x1="{X(x0):.1f}" y1="{Y(y0):.1f}" x2="{X(x1):.1f}" y2="{Y(y1):.1f}" '
                     'stroke="#888" stroke-dasharray="4 3"/>')
    for v, label in vlines:
        parts.append(f'<line x1="{X(v):.1f}" y1="{mt}" x2="{X(v):.1f}" y2="{mt + ph}" '
                     'stroke="#b00" stroke-dasharray="5 3"/>')
        parts.append(f'<text x="{X(v) + 3:.1f}" y="{mt + 12}" font-size="11" fill="#b00">{_e(label)}</text>')
    for v, label in hlines:
        parts.append(f'<line x1="{ml}" y1="{Y(v):.1f}" x2="{ml + pw}" y2="{Y(v):.1f}" '
                     'stroke="#555" stroke-dasharray="2 3"/>')
        parts.append(f'<text x="{ml + 4}" y="{Y(v) - 4:.1f}" font-size="11" fill="#555">{_e(label)}</text>')
    for i, (name, pts) in enumerate(series):
        color = _PALETTE[i % len(_PALETTE)]
        clean = [(a, b) for a, b in pts if a is not None and b is not None]
        if clean:
            path = " ".join(f"{X(a):.1f},{Y(b):.1f}" for a, b in clean)
            parts.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="2" '
                         f'points="{path}"/>')
        ly = mt + 14 + 18 * i
        parts.append(f'<line x1="{ml + pw + 10}" y1="{ly - 4}" x2="{ml + pw + 30}" y2="{ly - 4}" '
                     f'stroke="{color}" stroke-width="3"/>')
        parts.append(f'<text x="{ml + pw + 34}" y="{ly}" font-size="11">{_e(name)}</text>')
    for a, b, label in markers:
        parts.append(f'<circle cx="{X(a):.1f}" cy="{Y(b):.1f}" r="6" fill="#b00" stroke="white"/>')
        parts.append(f'<text x="{X(a) - 8:.1f}" y="{Y(b) - 10:.1f}" font-size="11" text-anchor="end" '
                     f'font-weight="bold" fill="#b00">{_e(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_bar_chart(
    rows: Sequence[tuple[str, float | None]], *, title: str, goal: float | None = None,
    css_id: str = "", width: int = 560,
) -> str:
    """Horizontal bars of shares (0-1), one per row, with an optional goal line."""
    ml, mr, bh, gap, mt = 250, 50, 16, 6, 24
    height = mt + len(rows) * (bh + gap) + 24
    pw = width - ml - mr
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{_e(css_id)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{_e(title)}"><title>{_e(title)}</title>'
    ]
    for i, (name, v) in enumerate(rows):
        y = mt + i * (bh + gap)
        parts.append(f'<text x="{ml - 6}" y="{y + bh - 4}" font-size="11" text-anchor="end">{_e(name)}</text>')
        w = 0.0 if v is None else max(0.0, min(1.0, v)) * pw
        parts.append(f'<rect class="bar" x="{ml}" y="{y}" width="{w:.1f}" height="{bh}" fill="#1f5fa8"/>')
        parts.append(f'<text x="{ml + w + 4:.1f}" y="{y + bh - 4}" font-size="11">{_e(_pct(v, 0))}</text>')
    if goal is not None:
        gx = ml + goal * pw
        parts.append(f'<line x1="{gx:.1f}" y1="{mt - 6}" x2="{gx:.1f}" y2="{height - 20}" '
                     'stroke="#b00" stroke-dasharray="5 3"/>')
        parts.append(f'<text x="{gx:.1f}" y="{mt - 10}" font-size="11" fill="#b00" '
                     f'text-anchor="middle">objectif {_e(_pct(goal, 0))}</text>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0;color:#1b1b1b;background:#fff}
main{max-width:1180px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:26px;margin:0 0 4px} h2{font-size:20px;margin:36px 0 8px;border-bottom:2px solid #1f5fa8;padding-bottom:4px}
h3{font-size:16px;margin:20px 0 6px}
.meta{color:#555;font-size:13px}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:14px;margin:20px 0}
.card{border:1px solid #d0d7de;border-radius:8px;padding:14px 16px;background:#f6f8fa}
.card .value{font-size:30px;font-weight:700;color:#1f5fa8}
.card .label{font-size:13px;color:#333;margin-top:4px}
.card.warn .value{color:#b05a00} .card.ok .value{color:#1b7f3b}
.verdict{font-size:16px;padding:12px 16px;border-left:5px solid #1f5fa8;background:#eef4fb;margin:12px 0}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:right}
th{background:#f0f3f6} td.l,th.l{text-align:left}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:18px}
.note{font-size:13px;color:#444}
svg.chart{max-width:100%;height:auto}
@media print{.cards{grid-template-columns:repeat(2,1fr)}}
"""


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained HTML page (French): no script, no external resource."""
    h = report["headline"]
    pol = report["policy"]
    rate = h.get("automation_rate")
    prec = h.get("auto_precision")
    goal = h.get("goal", NATIONAL_GOAL)
    target = pol["target_precision"]
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="fr"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>cimcoder : rapport d'automatisation – {_e(report.get('dataset'))}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<h1>Rapport d'automatisation du codage</h1>",
        f'<p class="meta">Jeu de données : <b>{_e(report.get("dataset"))}</b> · modèle : '
        f'{_e(report.get("run"))} · politique {_e(pol["version"]["hash"][:12])} '
        f'({_e(pol["version"]["created_at"])}) · généré le {_e(report.get("created_at"))}</p>',
    ]
    statement = h.get("statement_fr") or ""
    out.append(f'<p class="verdict" id="verdict">{html.escape(statement, quote=False)}</p>')

    def card(value: str, label: str, css: str = "", cid: str = "") -> str:
        return (f'<div class="card {css}" id="{cid}"><div class="value">{value}</div>'
                f'<div class="label">{label}</div></div>')

    prec_ok = prec is not None and prec >= target - 0.02
    out.append('<div class="cards">')
    out.append(card(_pct(rate), f"des codes vrais auto-codés (objectif {_pct(goal, 0)})",
                    "ok" if rate is not None and rate >= goal else "warn", "kpi-automation"))
    out.append(card(_pct(prec), f"précision des codes auto-codés (cible {_pct(target, 0)}, "
                    f"borne basse {_pct(h.get('auto_precision_lower_bound'))})",
                    "ok" if prec_ok else "warn", "kpi-precision"))
    out.append(card(_pct(h.get("share_stays_fully_auto_coded")),
                    f"des séjours entièrement auto-codés sans erreur ({h['stays_fully_auto_coded']} "
                    f"sur {h['n_stays']})", "", "kpi-stays"))
    cap = h.get("max_review_per_stay")
    out.append(card(_num(h.get("review_per_stay_mean"), 1),
                    f"codes à revoir par séjour en moyenne (90e centile {_num(h.get('review_per_stay_p90'), 0)}, "
                    + (f"plafond {cap})" if cap is not None else "sans plafond)"),
                    "", "kpi-workload"))
    out.append("</div>")
    out.append(
        '<table id="headline-table"><tr><th class="l">Indicateur</th><th>Valeur</th></tr>'
        f'<tr><td class="l">Codes vrais (tous, y compris hors du champ du modèle)</td><td>{h["n_true_codes"]}</td></tr>'
        f'<tr><td class="l">… dont hors du champ du modèle (jamais proposables)</td><td>{h["n_codes_outside_label_space"]}</td></tr>'
        f'<tr><td class="l">Codes auto-codés</td><td>{h["n_auto"]}</td></tr>'
        f'<tr><td class="l">… corrects / erronés</td><td>{h["n_auto_correct"]} / {h["n_auto_errors"]}</td></tr>'
        f'<tr><td class="l">Propositions envoyées en revue</td><td>{h["n_review"]} '
        f'(dont {h["n_true_in_review"]} vraies)</td></tr>'
        f'<tr><td class="l">Codes vrais rejetés (à ajouter par le codeur)</td><td>{h["n_true_rejected"]}</td></tr>'
        f'<tr><td class="l">Codes vrais gardés hors rejet (cible {_pct(pol["target_recall"], 0)})</td>'
        f'<td>{_pct(h.get("recall_kept_out_of_reject"))}</td></tr>'
        f'<tr><td class="l">Charge de revue : plafond par séjour / probabilité minimale</td>'
        f'<td>{_e("aucun" if cap is None else cap)} / {_pct(h.get("min_review_probability"))}</td></tr>'
        f'<tr><td class="l">Codes à revoir par séjour, moyenne / 90e centile (sans plafond)</td>'
        f'<td>{_num(h.get("review_per_stay_mean"), 1)} / {_num(h.get("review_per_stay_p90"), 0)} '
        f'({_num(h.get("review_per_stay_mean_uncapped"), 1)} / {_num(h.get("review_per_stay_p90_uncapped"), 0)})</td></tr>'
        f'<tr><td class="l">Diagnostics retrouvés par auto + revue (sans plafond)</td>'
        f'<td>{_pct(h.get("recall_auto_or_review"))} ({_pct(h.get("recall_auto_or_review_uncapped"))})</td></tr>'
        f'<tr><td class="l">Séjours sans aucune revue</td><td>{h["stays_without_review"]} '
        f'({_pct(h.get("share_stays_without_review"))})</td></tr></table>'
    )

    tradeoff = h.get("review_cap_tradeoff") or []
    if tradeoff:
        out.append("<h2>Charge de revue du codeur</h2>")
        out.append('<p class="note">Au-delà du plafond, les codes les moins probables sont rejetés '
                   "(les codes auto-codés ne sont jamais plafonnés) : moins de codes à revoir, mais "
                   "moins de diagnostics retrouvés. La ligne en gras est la politique appliquée.</p>")
        out.append('<table id="review-tradeoff"><tr><th>Plafond par séjour</th><th>Probabilité '
                   "minimale</th><th>Codes à revoir par séjour (moyenne)</th><th>90e centile</th>"
                   "<th>Diagnostics retrouvés par auto + revue</th></tr>")
        for r in tradeoff:
            cells = (f"<td>{_e('aucun' if r['max_review_per_stay'] is None else r['max_review_per_stay'])}</td>"
                     f"<td>{_pct(r.get('min_review_probability'))}</td>"
                     f"<td>{_num(r['review_per_stay_mean'], 1)}</td><td>{_num(r['review_per_stay_p90'], 0)}</td>"
                     f"<td>{_pct(r['recall_auto_or_review'])}</td>")
            out.append(f'<tr style="font-weight:bold">{cells}</tr>' if r.get("policy") else f"<tr>{cells}</tr>")
        out.append("</table>")

    sweep = report.get("target_sweep") or []
    if sweep:
        out.append("<h2>Cible du DIM contre précision mesurée</h2>")
        out.append('<p class="note">Seuils ajustés sur une partie des séjours, mesurés sur une autre '
                   "partie jamais vue pendant l'ajustement.</p>")
        out.append('<table id="target-sweep"><tr><th>Précision cible</th><th>Précision mesurée</th>'
                   "<th>Écart (points)</th><th>Codes vrais auto-codés</th><th>Revue par séjour</th>"
                   "<th>Auto + revue</th></tr>")
        for r in sweep:
            gap = None if r.get("measured_precision") is None else 100 * (r["measured_precision"] - r["target_precision"])
            out.append(f"<tr><td>{_pct(r['target_precision'], 0)}</td><td>{_pct(r.get('measured_precision'))}</td>"
                       f"<td>{_num(gap, 1)}</td><td>{_pct(r.get('automation_rate'))}</td>"
                       f"<td>{_num(r.get('review_per_stay_mean'), 1)}</td>"
                       f"<td>{_pct(r.get('recall_auto_or_review'))}</td></tr>")
        out.append("</table>")

    # automation curve
    curves = report["automation_curve"]
    series = [("Tous les codes", [(p["precision"], p["share"]) for p in curves["overall"]])]
    for band in BAND_ORDER:
        block = curves["by_band"].get(band)
        if block:
            series.append((f"Codes {BAND_FR[band]}", [(p["precision"], p["share"]) for p in block["curve"]]))
    out.append("<h2>Courbe d'automatisation</h2>")
    out.append('<p class="note">Part des codes vrais auto-codés selon la précision exigée '
               "(un seul seuil balayé sur les probabilités calibrées). Le point rouge est la "
               "politique appliquée.</p>")
    out.append(svg_line_chart(
        series, title="Part auto-codée selon la précision", x_label="Précision des codes auto-codés (%)",
        y_label="Codes vrais auto-codés (%)", x_range=(0.5, 1.0),
        vlines=[(target, f"cible {_pct(target, 0)}")], hlines=[(goal, f"objectif {_pct(goal, 0)}")],
        markers=[(prec, rate, "politique")] if prec is not None and rate is not None else [],
        css_id="automation-curve", width=720,
    ))

    # per chapter
    chap = curves["by_chapter"]
    if chap:
        out.append("<h2>Par chapitre de la CIM-10</h2>")
        bars = [(f"{k} {v.get('title', '')}"[:44], v["operating_point"]["automation_rate"])
                for k, v in chap.items()]
        out.append(svg_bar_chart(bars, title="Part auto-codée par chapitre", goal=goal,
                                 css_id="chapter-bars", width=720))
        out.append('<table id="chapter-table"><tr><th class="l">Chapitre</th><th>Codes</th>'
                   "<th>Codes vrais</th><th>Auto-codés</th><th>Précision auto</th>"
                   "<th>Part auto-codée</th><th>Rejetés vrais</th></tr>")
        for k, v in chap.items():
            op = v["operating_point"]
            out.append(f'<tr><td class="l">{_e(k)} – {_e(v.get("title"))}</td><td>{v["n_codes"]}</td>'
                       f"<td>{op['n_true_codes']}</td><td>{op['n_auto']}</td>"
                       f"<td>{_pct(op['auto_precision'])}</td><td>{_pct(op['automation_rate'])}</td>"
                       f"<td>{op['n_true_rejected']}</td></tr>")
        out.append("</table>")
    if curves["by_band"]:
        out.append("<h2>Par fréquence d'apprentissage</h2>")
        out.append('<table id="band-table"><tr><th class="l">Codes</th><th>Codes</th><th>Codes vrais</th>'
                   "<th>Auto-codés</th><th>Précision auto</th><th>Part auto-codée</th></tr>")
        for k, v in curves["by_band"].items():
            op = v["operating_point"]
            out.append(f'<tr><td class="l">{_e(BAND_FR.get(k, k))}</td><td>{v["n_codes"]}</td>'
                       f"<td>{op['n_true_codes']}</td><td>{op['n_auto']}</td>"
                       f"<td>{_pct(op['auto_precision'])}</td><td>{_pct(op['automation_rate'])}</td></tr>")
        out.append("</table>")
        out.append('<p class="note">fréquents : vus dans au moins 10 séjours d\'apprentissage ; '
                   "rares : 1 à 9 ; jamais vus : aucun.</p>")

    # reliability
    rel = report["reliability"]
    out.append("<h2>Calibration des scores</h2>")
    out.append(f'<p class="note">Erreur de calibration attendue (ECE) : {_num(rel["before"]["ece"], 4)} '
               f'avant, <b>{_num(rel["after"]["ece"], 4)}</b> après calibration '
               f'({_e(pol["calibration"])}).</p>')

    def rel_pts(block: Mapping[str, Any]) -> list[tuple[float, float]]:
        return [(b["mean_predicted"], b["observed"]) for b in block["bins"] if b["count"]]

    out.append(svg_line_chart(
        [("Scores bruts", rel_pts(rel["before"])), ("Calibrés", rel_pts(rel["after"]))],
        title="Diagramme de fiabilité", x_label="Probabilité annoncée (%)",
        y_label="Fréquence observée (%)", diagonal=True, css_id="reliability", width=560,
    ))

    # metrics
    met = report["metrics"]
    out.append("<h2>Métriques</h2>")
    out.append('<table id="metrics-table"><tr><th class="l">Décisions</th><th>Précision micro</th>'
               "<th>Rappel micro</th><th>F1 micro</th><th>F1 macro</th><th>MAP</th><th>P@5</th>"
               "<th>R@5</th><th>AUC micro</th></tr>")
    t_f1 = met.get("f1_threshold")
    f1_name = f"seuil F1 global sur scores bruts ({_num(t_f1, 3)})"
    for key, name in (("", f1_name), ("category_level", f"{f1_name}, catégorie (3 caractères)"),
                      ("auto", "auto-codés"), ("auto_or_review", "auto-codés + revue")):
        m = met[key] if key else met
        out.append(f'<tr><td class="l">{name}</td><td>{_pct(m["micro_precision"])}</td>'
                   f"<td>{_pct(m['micro_recall'])}</td><td>{_pct(m['micro_f1'])}</td>"
                   f"<td>{_pct(m['macro_f1'])}</td><td>{_num(m['map'], 3)}</td>"
                   f"<td>{_num(m['p@5'], 3)}</td><td>{_num(m['r@5'], 3)}</td>"
                   f"<td>{_num(m['micro_auc'], 3)}</td></tr>")
    out.append("</table>")
    out.append('<p class="note">Les deux premières lignes comparent les modèles : MAP, P@5 et AUC '
               "sur les scores bruts, F1 à un seul seuil global choisi sur les données "
               "d'ajustement de la politique (jamais sur ces séjours). Les lignes « auto-codés » "
               "décrivent les décisions de la politique.</p>")
    if "principal_diagnosis_accuracy" in met:
        out.append(f'<p class="note">Diagnostic principal classé en tête : '
                   f'{_pct(met["principal_diagnosis_accuracy"])} des {met["n_stays_with_principal"]} '
                   "séjours dont le DP est connu.</p>")

    # errors
    errors = report["auto_errors"]
    out.append("<h2>Erreurs d'auto-codage</h2>")
    n_err = h["n_auto_errors"]
    out.append(f'<p class="note">{n_err} code(s) auto-codé(s) à tort'
               + (f", les {len(errors)} plus confiants listés" if n_err > len(errors) else "")
               + ".</p>")
    if errors:
        out.append('<table id="errors-table"><tr><th class="l">Séjour</th><th class="l">Code</th>'
                   '<th class="l">Libellé</th><th>Probabilité</th></tr>')
        for r in errors:
            out.append(f'<tr><td class="l">{_e(r["stay_id"])}</td><td class="l">{_e(r["code"])}</td>'
                       f'<td class="l">{_e(r.get("label") or "")}</td><td>{_pct(r["score"])}</td></tr>')
        out.append("</table>")

    levels = pol["levels"]["auto"]
    out.append("<h2>Méthode</h2>")
    out.append(
        '<p class="note">Un code est <b>auto-codé</b> quand sa probabilité calibrée atteint son seuil '
        "automatique ; il part <b>en revue</b> entre les deux seuils, il est <b>rejeté</b> en dessous. "
        "Le seuil automatique est le plus bas dont la borne inférieure de confiance "
        f"({_e(pol['bound'])}, unilatérale {_pct(pol['confidence'], 0)}) de la précision atteint la "
        "cible ; un code sans assez de données hérite du seuil de sa catégorie, de son chapitre "
        f"ou du seuil global (codes au seuil propre : {levels['code']}, catégorie : "
        f"{levels['category']}, chapitre : {levels['chapter']}, global : {levels['global']}). "
        + ("Pour que la revue reste faisable, au plus "
           f"{_e(pol.get('max_review_per_stay'))} codes par séjour partent en revue (les plus "
           f"probables, de probabilité au moins {_pct(pol.get('min_review_probability'))}) ; "
           "les autres sont rejetés. " if pol.get("max_review_per_stay") is not None else "")
        + f"Calibration des scores : {_e(pol.get('calibration'))}. "
        + f"Politique ajustée sur : {_e(json.dumps(pol.get('fitted_on') or {}, ensure_ascii=False))}.</p>"
    )
    for note in report.get("notes") or []:
        out.append(f'<p class="note">{_e(note)}</p>')
    out.append("</main></body></html>")
    return "\n".join(out)


def write_report(
    report: Mapping[str, Any], folder: str | Path, *, tracker: Tracker | None = None,
    artifact_path: str | None = None,
) -> tuple[Path, Path]:
    """Write `automation_report.json` and `.html` into `folder`; log them when tracked."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / REPORT_JSON
    html_path = out / REPORT_HTML
    json_path.write_text(json.dumps(report, ensure_ascii=False, indent=1, allow_nan=False,
                                    default=_json_default), encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    if tracker is not None:
        h = report["headline"]
        flat = {f"auto.{k}": v for k, v in h.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and v is not None}
        flat.update({f"eval.{k}": v for k, v in report["metrics"].items()
                     if isinstance(v, int | float) and not isinstance(v, bool)})
        flat.update({f"eval.auto.{k}": v for k, v in report["metrics"].get("auto", {}).items()
                     if isinstance(v, int | float) and not isinstance(v, bool)})
        tracker.log_metrics(flat)
        tracker.log_artifacts(out, artifact_path)
    logger.info("automation report written to %s", out)
    return json_path, html_path


def _json_default(x: Any) -> Any:
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
