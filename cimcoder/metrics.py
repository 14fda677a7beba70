"""Multi-label coding metrics: pure functions on numpy arrays.

They sit below every area: training scores a baseline's validation split with them and eval
builds its reports on them (`cimcoder.eval.metrics` re-exports them under their old path).

Every function takes `y_true` (bool, shape [n_stays, n_labels]: gold codes inside the label
space) and `scores` (float, same shape) or `decisions` (bool, same shape: codes emitted).

Gold codes outside the model's label space cannot be predicted, but a coder still has to
find them. Recall-type metrics (recall, R@k, MAP) accept `n_gold`, the number of distinct
gold codes of each stay *including* those outside the label space; the missing ones then
count as missed. Without `n_gold`, only in-space gold codes are counted (say so in reports).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from cimcoder.errors import CimcoderError

logger = logging.getLogger(__name__)


class MetricInputError(CimcoderError):
    """Arrays given to a metric do not have matching, valid shapes."""


def _as_arrays(
    y_true: np.ndarray, other: np.ndarray, *, other_dtype: type = float
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(other)
    if y.ndim != 2 or s.ndim != 2:
        raise MetricInputError(
            f"expected 2-D arrays [stays, labels], got shapes {y.shape} and {s.shape}"
        )
    if y.shape != s.shape:
        raise MetricInputError(f"shape mismatch: gold {y.shape} vs scores {s.shape}")
    s = s.astype(other_dtype)
    if other_dtype is float and not np.all(np.isfinite(s)):
        raise MetricInputError("scores contain NaN or infinite values")
    return y.astype(bool), s


def _n_gold(y: np.ndarray, n_gold: np.ndarray | Sequence[int] | None) -> np.ndarray:
    in_space = y.sum(axis=1)
    if n_gold is None:
        return in_space.astype(float)
    g = np.asarray(n_gold, dtype=float)
    if g.shape != (y.shape[0],):
        raise MetricInputError(f"n_gold must have one entry per stay ({y.shape[0]}), got {g.shape}")
    if np.any(g < in_space):
        raise MetricInputError("n_gold is smaller than the number of in-space gold codes")
    return g


def _safe_div(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else 0.0


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class PRF:
    """Precision, recall, F1 with the counts they come from."""

    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _prf(tp: float, fp: float, fn: float) -> PRF:
    p = _safe_div(tp, tp + fp)
    r = _safe_div(tp, tp + fn)
    f = _safe_div(2 * p * r, p + r)
    return PRF(p, r, f, int(tp), int(fp), int(fn))


def decide(scores: np.ndarray, thresholds: float | np.ndarray) -> np.ndarray:
    """Boolean decisions `scores >= threshold` (one threshold, or one per label)."""
    s = np.asarray(scores, dtype=float)
    t = np.asarray(thresholds, dtype=float)
    if t.ndim == 1 and t.shape[0] != s.shape[1]:
        raise MetricInputError(f"{t.shape[0]} thresholds for {s.shape[1]} labels")
    return s >= t


def micro_prf(
    y_true: np.ndarray, decisions: np.ndarray, n_gold: np.ndarray | Sequence[int] | None = None
) -> PRF:
    """Micro-averaged precision/recall/F1 of boolean decisions.

    With `n_gold`, out-of-space gold codes are added to the false negatives.
    """
    y, d = _as_arrays(y_true, decisions, other_dtype=bool)
    tp = float(np.sum(y & d))
    fp = float(np.sum(~y & d))
    fn = float(_n_gold(y, n_gold).sum() - tp)
    return _prf(tp, fp, fn)


def per_label_prf(y_true: np.ndarray, decisions: np.ndarray) -> list[PRF]:
    """Precision/recall/F1 of each label column."""
    y, d = _as_arrays(y_true, decisions, other_dtype=bool)
    tp = np.sum(y & d, axis=0)
    fp = np.sum(~y & d, axis=0)
    fn = np.sum(y & ~d, axis=0)
    return [_prf(a, b, c) for a, b, c in zip(tp, fp, fn, strict=True)]


def macro_prf(y_true: np.ndarray, decisions: np.ndarray) -> PRF:
    """Macro average over the labels that have at least one gold or predicted occurrence.

    Labels never seen in gold nor predicted are left out (their P/R/F are undefined); F1 is
    the mean of per-label F1 (as scikit-learn's `average="macro"`), counts are totals.
    """
    y, d = _as_arrays(y_true, decisions, other_dtype=bool)
    per = per_label_prf(y, d)
    active = np.flatnonzero(y.any(axis=0) | d.any(axis=0))
    if active.size == 0:
        return PRF(0.0, 0.0, 0.0, 0, 0, 0)
    sel = [per[i] for i in active]
    return PRF(
        float(np.mean([m.precision for m in sel])),
        float(np.mean([m.recall for m in sel])),
        float(np.mean([m.f1 for m in sel])),
        sum(m.tp for m in sel),
        sum(m.fp for m in sel),
        sum(m.fn for m in sel),
    )


def best_f1_threshold(
    y_true: np.ndarray,
    scores: np.ndarray,
    n_gold: np.ndarray | Sequence[int] | None = None,
) -> tuple[float, float] | None:
    """One global threshold on `scores` maximising micro-F1 of `scores >= threshold`.

    Returns (threshold, micro-F1 there), or None when there is no gold code. The threshold is
    one of the scores (a cut keeps all its ties); on equal F1 the highest threshold wins.
    With `n_gold`, out-of-space gold codes count as missed, as in `micro_prf`.
    """
    y, s = _as_arrays(y_true, scores)
    total = float(_n_gold(y, n_gold).sum())
    if total <= 0 or not y.any():
        return None
    sv, yv = s.ravel(), y.ravel()
    order = np.argsort(-sv, kind="stable")
    ss, tp = sv[order], np.cumsum(yv[order])
    last_of_run = np.ones(ss.size, dtype=bool)
    last_of_run[:-1] = ss[:-1] != ss[1:]
    cand = np.flatnonzero(last_of_run)
    f1 = 2.0 * tp[cand] / (cand + 1 + total)  # 2 tp / (predicted + gold)
    best = int(np.argmax(f1))  # first maximum: the highest threshold
    return float(ss[cand[best]]), float(f1[best])


# --------------------------------------------------------------------------- rankings


def _ranking(scores: np.ndarray) -> np.ndarray:
    """Column indices of each row by decreasing score; ties keep label order (stable)."""
    return np.argsort(-scores, axis=1, kind="stable")


def precision_at_k(y_true: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Mean over stays of (gold codes among the k top-ranked) / k."""
    y, s = _as_arrays(y_true, scores)
    if k < 1:
        raise MetricInputError("k must be >= 1")
    if y.shape[0] == 0:
        return 0.0
    k_eff = min(k, y.shape[1])
    top = _ranking(s)[:, :k_eff]
    hits = np.take_along_axis(y, top, axis=1).sum(axis=1)
    return float(np.mean(hits / k))


def recall_at_k(
    y_true: np.ndarray,
    scores: np.ndarray,
    k: int,
    n_gold: np.ndarray | Sequence[int] | None = None,
) -> float:
    """Mean over stays with gold codes of (gold codes among the k top-ranked) / |gold|."""
    y, s = _as_arrays(y_true, scores)
    if k < 1:
        raise MetricInputError("k must be >= 1")
    g = _n_gold(y, n_gold)
    keep = g > 0
    if not keep.any():
        return 0.0
    top = _ranking(s)[:, : min(k, y.shape[1])]
    hits = np.take_along_axis(y, top, axis=1).sum(axis=1)
    return float(np.mean(hits[keep] / g[keep]))


def average_precision_per_stay(
    y_true: np.ndarray,
    scores: np.ndarray,
    n_gold: np.ndarray | Sequence[int] | None = None,
) -> np.ndarray:
    """Average precision of each stay's ranked code list (NaN for stays with no gold code).

    AP = (1 / |gold|) * sum over ranks r holding a gold code of precision@r. All labels are
    ranked by decreasing score (ties: label order). A gold code outside the label space is
    never retrieved, so it adds 0 to the sum but 1 to |gold| (via `n_gold`).
    """
    y, s = _as_arrays(y_true, scores)
    g = _n_gold(y, n_gold)
    ranked_hits = np.take_along_axis(y, _ranking(s), axis=1).astype(float)
    cum_hits = np.cumsum(ranked_hits, axis=1)
    ranks = np.arange(1, y.shape[1] + 1, dtype=float)
    sum_prec = np.sum(ranked_hits * cum_hits / ranks, axis=1)
    ap = np.full(y.shape[0], np.nan)
    ok = g > 0
    ap[ok] = sum_prec[ok] / g[ok]
    return ap


def mean_average_precision(
    y_true: np.ndarray,
    scores: np.ndarray,
    n_gold: np.ndarray | Sequence[int] | None = None,
) -> float:
    """MAP, CodiEsp definition: mean over stays of the average precision of the ranked codes.

    Stays without any gold code are left out (AP undefined). `n_gold` (per-stay count of
    gold codes, including those outside the label space) makes out-of-space codes count
    as missed; without it only in-space gold codes are counted.
    """
    ap = average_precision_per_stay(y_true, scores, n_gold)
    ap = ap[~np.isnan(ap)]
    return float(ap.mean()) if ap.size else 0.0


# --------------------------------------------------------------------------- AUC


def _binary_auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted half."""
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=float)
    # Average ranks of tied groups.
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def micro_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of all (stay, code) pairs pooled; NaN when one class is absent."""
    y, s = _as_arrays(y_true, scores)
    return _binary_auc(y.ravel(), s.ravel())


def macro_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean ROC AUC over the labels having both positive and negative stays (NaN if none)."""
    y, s = _as_arrays(y_true, scores)
    aucs = [_binary_auc(y[:, j], s[:, j]) for j in range(y.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


# --------------------------------------------------------------------------- structure


def collapse_to_groups(
    y_true: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    group_of: Callable[[str], str],
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Merge label columns by group (e.g. 3-character category): gold = any, score = max."""
    y, s = _as_arrays(y_true, scores)
    if len(labels) != y.shape[1]:
        raise MetricInputError(f"{len(labels)} labels for {y.shape[1]} columns")
    groups = sorted({group_of(c) for c in labels})
    index = {g: i for i, g in enumerate(groups)}
    col_group = np.array([index[group_of(c)] for c in labels], dtype=int)
    gy = np.zeros((y.shape[0], len(groups)), dtype=bool)
    gs = np.full((y.shape[0], len(groups)), -np.inf)
    for j, gi in enumerate(col_group):
        gy[:, gi] |= y[:, j]
        gs[:, gi] = np.maximum(gs[:, gi], s[:, j])
    return gy, gs, groups


def principal_diagnosis_accuracy(
    scores: np.ndarray, labels: Sequence[str], principal: Sequence[str | None]
) -> tuple[float, int]:
    """Share of stays whose top-ranked code is the gold DP, over stays with a known DP.

    Returns (accuracy, number of stays counted). A DP outside the label space counts as wrong.
    """
    s = np.asarray(scores, dtype=float)
    if s.ndim != 2 or s.shape[1] != len(labels) or s.shape[0] != len(principal):
        raise MetricInputError(
            f"scores {s.shape} do not match {len(principal)} stays x {len(labels)} labels"
        )
    known = [i for i, dp in enumerate(principal) if dp]
    if not known or s.shape[1] == 0:
        return 0.0, len(known)
    top = np.argmax(s, axis=1)
    hits = sum(1 for i in known if labels[int(top[i])] == principal[i])
    return hits / len(known), len(known)


# --------------------------------------------------------------------------- summary


def summarize(
    y_true: np.ndarray,
    scores: np.ndarray,
    decisions: np.ndarray | None = None,
    *,
    n_gold: np.ndarray | Sequence[int] | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float | int | None]:
    """The standard metric set of one (gold, scores, decisions) triple, as a flat dict.

    `decisions` defaults to `scores >= 0.5` only when not given; callers should pass the
    policy's decisions (thresholds are tuned artefacts, not constants).
    """
    y, s = _as_arrays(y_true, scores)
    d = s >= 0.5 if decisions is None else np.asarray(decisions, dtype=bool)
    mi = micro_prf(y, d, n_gold)
    ma = macro_prf(y, d)
    out: dict[str, float | int | None] = {
        "n_stays": int(y.shape[0]),
        "n_labels": int(y.shape[1]),
        "n_gold": int(_n_gold(y, n_gold).sum()),
        "n_gold_in_space": int(y.sum()),
        "micro_precision": mi.precision,
        "micro_recall": mi.recall,
        "micro_f1": mi.f1,
        "macro_precision": ma.precision,
        "macro_recall": ma.recall,
        "macro_f1": ma.f1,
        "map": mean_average_precision(y, s, n_gold),
        "micro_auc": _nan_to_none(micro_auc(y, s)),
        "macro_auc": _nan_to_none(macro_auc(y, s)),
    }
    for k in ks:
        out[f"p@{k}"] = precision_at_k(y, s, k)
        out[f"r@{k}"] = recall_at_k(y, s, k, n_gold)
    return out


def _nan_to_none(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def breakdown(
    y_true: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    group_of: Callable[[str], str] | Mapping[str, str],
    decisions: np.ndarray | None = None,
) -> dict[str, dict[str, float | int | None]]:
    """Metrics restricted to the label columns of each group (chapter, frequency band...).

    Ranking metrics (MAP, P@k) only rank the group's own codes, so they answer "how well
    are this group's codes ranked among themselves"; micro P/R/F1 and AUC are the usual
    restrictions to those columns. Stays are all kept.
    """
    y, s = _as_arrays(y_true, scores)
    if len(labels) != y.shape[1]:
        raise MetricInputError(f"{len(labels)} labels for {y.shape[1]} columns")
    d = s >= 0.5 if decisions is None else np.asarray(decisions, dtype=bool)
    lookup = group_of.get if isinstance(group_of, Mapping) else group_of
    col_groups = [str(lookup(c) or "?") for c in labels]
    out: dict[str, dict[str, float | int | None]] = {}
    for g in sorted(set(col_groups)):
        cols = np.array([i for i, cg in enumerate(col_groups) if cg == g], dtype=int)
        sub = summarize(y[:, cols], s[:, cols], d[:, cols], ks=(1, 5))
        sub["n_codes"] = len(cols)
        out[g] = sub
    return out
