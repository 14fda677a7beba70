"""Calibrate and evaluate a model run folder on a data set.

Data sets are named as for `cimcoder.training.corpora.load_dataset`, optionally followed by
`#A` or `#B`: one of two fixed halves, assigned by a hash of the stay id (deterministic,
independent of file order).

By default a run's policy is fitted on its whole dev set (`codiesp-fr/dev` for a CodiEsp
run) and measured there by K-fold cross-fitting: the stays are split into K folds by a hash
of their id, and each fold is calibrated and decided by a policy fitted on the other folds
only. Every stay is measured, none by a policy that saw it, and the shipped policy has all
the data (a few hundred validation stays are all a hospital may have to fit on). Calibrating
on a half (`DATASET#A`) instead keeps the other half for the measurement, as before.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cimcoder import folds
from cimcoder.errors import CimcoderError
from cimcoder.eval.calibration import CalibrationMethod
from cimcoder.eval.defaults import DEFAULT_CALIBRATION, DEFAULT_CONFIDENCE, DEFAULT_FOLDS
from cimcoder.eval.metrics import best_f1_threshold, micro_prf
from cimcoder.eval.policy import (
    AUTO,
    DEFAULT_MAX_REVIEW,
    DEFAULT_MIN_REVIEW_PROBABILITY,
    DEFAULT_REVIEW_BUDGET,
    REVIEW,
    BoundMethod,
    CrossFittedPolicy,
    DecisionPolicy,
)
from cimcoder.eval.report import Report, Tracker, build_report, write_report
from cimcoder.run_folder import EVAL_DIR, POLICY_FILE, RunFolder
from cimcoder.terminologies.codes import TerminologyName

logger = logging.getLogger(__name__)

HALF_SALT = "cimcoder-calibration-v2"  # v2: cimcoder.folds, one draw for every purpose
FOLD_SALT = "cimcoder-crossfit-v1"
HALVES = ("A", "B")
# Low targets too: when nothing is auto-coded at the DIM's target, the report says which
# lower target would automate something (the policy refuses targets below 0.5).
DEFAULT_SWEEP = (0.5, 0.6, 0.7, 0.8, 0.85, 0.90, 0.95, 0.98)


class EvalDataError(CimcoderError):
    """The data set to calibrate or evaluate on cannot be used."""


# --------------------------------------------------------------------------- data


def parse_data_spec(spec: str) -> tuple[str, str | None]:
    """'codiesp-fr/dev#B' -> ('codiesp-fr/dev', 'B'); no suffix -> (spec, None)."""
    name, sep, half = spec.rpartition("#")
    if not sep or Path(spec).exists():  # a file or folder whose own name holds a '#'
        return spec, None
    if half.upper() not in HALVES or not name:
        raise EvalDataError(f"bad data set {spec!r}: the part after '#' must be A or B")
    return name, half.upper()


def stay_half(stay_id: str) -> str:
    """'A' or 'B', from a salted hash of the stay id (`cimcoder.folds`)."""
    return HALVES[folds.fold(HALF_SALT, stay_id, 2)]


def stay_fold(stay_id: str, n_folds: int) -> int:
    """The cross-fitting fold (0 .. n_folds-1) of a stay, from a salted hash of its id."""
    return folds.fold(FOLD_SALT, stay_id, n_folds)


def fold_of(stay_ids: Sequence[str], n_folds: int) -> np.ndarray:
    """Folds of stays; with fewer stays than folds, as many folds as stays."""
    k = max(1, min(n_folds, len(stay_ids)))
    fold = np.array([stay_fold(str(i), k) for i in stay_ids], dtype=int)
    # A hash can leave a fold empty on tiny data: renumber the non-empty ones.
    _, fold = np.unique(fold, return_inverse=True)
    return fold


def select_half(stays: Sequence[Any], half: str | None) -> list[Any]:
    return list(stays) if half is None else [s for s in stays if stay_half(str(s.id)) == half]


@dataclass
class ScoredData:
    """A data set scored by a model: everything the metrics and the report need."""

    name: str
    stay_ids: list[str]
    y: np.ndarray  # [n, L] gold inside the label space
    scores: np.ndarray  # [n, L] raw model scores
    n_gold: np.ndarray  # [n] all distinct gold codes, including outside the label space
    principal: list[str | None]
    never_auto: np.ndarray | None = None  # [n, L] the model's vetoes (hybrid), or None

    def subset(self, keep: np.ndarray, name: str) -> ScoredData:
        idx = np.flatnonzero(keep)
        return ScoredData(name, [self.stay_ids[i] for i in idx], self.y[idx], self.scores[idx],
                          self.n_gold[idx], [self.principal[i] for i in idx],
                          None if self.never_auto is None else self.never_auto[idx])


def gold_matrix(stays: Sequence[Any], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """(in-space gold [n, L], all-gold count [n], DP code or None) of stays."""
    index = {c: j for j, c in enumerate(labels)}
    y = np.zeros((len(stays), len(labels)), dtype=bool)
    n_gold = np.zeros(len(stays), dtype=float)
    principal: list[str | None] = []
    for i, stay in enumerate(stays):
        codes = set(stay.codes)
        n_gold[i] = len(codes)
        for c in codes:
            j = index.get(c)
            if j is not None:
                y[i, j] = True
        dps = [d.code for d in stay.diagnoses if d.role == "DP"]
        principal.append(dps[0] if dps else None)
    return y, n_gold, principal


# Raw scores per loaded scorer and data set: `evaluate` on a run without a policy calibrates
# first, and `cimcoder run` calibrates then evaluates, each on the same stays. Scoring is the
# costly step (minutes for a transformer or the edsnlp matcher), so it is done once. Keyed
# weakly by the scorer object: a scorer loaded again from disk is scored again.
_SCORES: weakref.WeakKeyDictionary[
    Any, dict[tuple[str, tuple[str, ...]], tuple[np.ndarray, np.ndarray | None]]
] = weakref.WeakKeyDictionary()


def _raw_scores(
    scorer: Any, stays: Sequence[Any], name: str, batch_size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw scores [n, L] and, for a scorer that vetoes auto-coding, its veto matrix."""
    key = (name, tuple(str(s.id) for s in stays))
    try:
        memo = _SCORES.setdefault(scorer, {})
    except TypeError:  # not weak-referenceable: no memo
        memo = {}
    if key not in memo:
        texts = [s.text for s in stays]
        with_vetoes = getattr(scorer, "predict_scores_and_vetoes", None)
        if with_vetoes is not None:
            scores, vetoes = with_vetoes(texts, batch_size=batch_size)
            memo[key] = (np.asarray(scores, dtype=float), np.asarray(vetoes, dtype=bool))
        else:
            scores = scorer.predict_scores(texts, batch_size=batch_size)
            memo[key] = (np.asarray(scores, dtype=float), None)
    return memo[key]


def score_stays(scorer: Any, stays: Sequence[Any], name: str, batch_size: int = 8) -> ScoredData:
    labels = list(scorer.labels)
    if not stays:
        raise EvalDataError(f"data set {name} has no stay to score")
    scores, never_auto = _raw_scores(scorer, stays, name, batch_size)
    if scores.shape != (len(stays), len(labels)):
        raise EvalDataError(f"model returned scores {scores.shape}, expected {(len(stays), len(labels))}")
    y, n_gold, principal = gold_matrix(stays, labels)
    if not y.any():
        raise EvalDataError(
            f"none of the gold codes of {name} is in the model's label space "
            "(wrong terminology or data set?)"
        )
    logger.info("scored %d stays of %s (%d of %d gold codes in the label space)",
                len(stays), name, int(y.sum()), int(n_gold.sum()))
    return ScoredData(name, [str(s.id) for s in stays], y, scores, n_gold, principal, never_auto)


def _load_stays(name: str) -> list[Any]:
    from cimcoder.training.corpora import load_dataset

    corpus = load_dataset(name)
    skipped = len(getattr(corpus.report, "skipped", []) or [])
    if skipped:
        logger.warning("%s: %d records skipped while loading (see `cimcoder data validate`)", name, skipped)
    return list(corpus.stays)


def _resolve_run(run: str | Path) -> Path:
    text = str(run)
    if text.startswith(("models:/", "runs:/")):
        # Resolving registry URIs lives in `cimcoder.inference`, to the right of eval in the
        # data flow; the pipeline resolves them and passes the folder.
        raise EvalDataError(
            f"{text}: give the model run folder (e.g. runs/codiesp-fr/plm_icd); MLflow model "
            "URIs are not resolved by `cimcoder calibrate/evaluate`"
        )
    path = Path(text)
    if not path.is_dir():
        raise EvalDataError(f"model run folder not found: {path}")
    return path


def default_calibration_data(run_dir: Path) -> str:
    """The run's dev set ('codiesp-fr/dev' for a CodiEsp run), measured by cross-fitting."""
    from cimcoder.training.config import read_run_config

    config = read_run_config(run_dir)
    if not config.data.dev:
        raise EvalDataError(
            f"{run_dir} has no dev set in its config; pass --data DATASET (data kept apart "
            "from the test data), e.g. --data my-dev.jsonl"
        )
    return str(config.data.dev)


def _load_scorer(run_dir: Path) -> Any:
    from cimcoder.training import load_scorer

    return load_scorer(run_dir)


def _labels_of(scorer: Any) -> tuple[TerminologyName, dict[str, str]]:
    space = getattr(scorer, "label_space", None)
    # A LabelSpace's terminology is a TerminologyName.
    terminology: TerminologyName = getattr(space, "terminology", "cim10") or "cim10"
    bands = {c: space.band(c) for c in scorer.labels} if space is not None else {}
    return terminology, bands


# --------------------------------------------------------------------------- calibrate


@dataclass
class CalibrationResult:
    policy: DecisionPolicy
    path: Path
    fitted_on: ScoredData
    measured: dict[str, Any] | None  # held-out measurement on the other half, when there is one


def measure(
    policy: DecisionPolicy, data: ScoredData, labels: Sequence[str],
    held_out: CrossFittedPolicy | None = None,
) -> dict[str, Any]:
    """Auto precision, automation rate, review workload and F1 of `policy` on scored data.

    With `held_out`, `data` is the policy's own fitting data and each stay is decided by the
    fold policy fitted without it (cross-fitting).
    """
    decider: DecisionPolicy | CrossFittedPolicy = policy if held_out is None else held_out
    d = decider.decide(decider.calibrate(data.scores, labels), labels, tiebreak=data.scores,
                       never_auto=data.never_auto)
    auto, review = d == AUTO, d == REVIEW
    n_auto, right = int(auto.sum()), int((data.y & auto).sum())
    total = float(data.n_gold.sum())
    per_stay = review.sum(axis=1)
    out: dict[str, Any] = {
        "data": data.name,
        "n_stays": len(data.stay_ids),
        "target_precision": policy.target_precision,
        "measured_precision": right / n_auto if n_auto else None,
        "n_auto": n_auto,
        "automation_rate": right / total if total else None,
        "review_per_stay_mean": float(per_stay.mean()) if per_stay.size else 0.0,
        "review_per_stay_p90": float(np.percentile(per_stay, 90)) if per_stay.size else 0.0,
        "recall_auto_or_review": float((data.y & (auto | review)).sum()) / total if total else None,
        "f1_threshold": policy.f1_threshold,
        "micro_f1": None,
        "cross_fitted_folds": None if held_out is None else held_out.n_folds,
    }
    row_t = held_out.f1_thresholds() if held_out is not None else np.full(
        len(data.stay_ids), np.nan if policy.f1_threshold is None else policy.f1_threshold)
    if not np.isnan(row_t).all():
        out["micro_f1"] = micro_prf(data.y, data.scores >= row_t[:, None], data.n_gold).f1
    return out


def cross_fit(policy: DecisionPolicy, data: ScoredData, labels: Sequence[str], n_folds: int) -> CrossFittedPolicy:
    """Fold policies with `policy`'s settings on `data` (folds by stay-id hash)."""
    return CrossFittedPolicy.fit(data.y, data.scores, labels, fold_of(data.stay_ids, n_folds),
                                 n_gold=data.n_gold, never_auto=data.never_auto, **policy.settings())


def calibrate_run(
    run_dir: str | Path,
    data: str | None = None,
    target_precision: float = 0.95,
    *,
    target_recall: float = 0.95,
    calibration: CalibrationMethod = DEFAULT_CALIBRATION,
    bound: BoundMethod = "wilson",
    confidence: float = DEFAULT_CONFIDENCE,
    min_positives: int = 50,
    max_review_per_stay: int | None = DEFAULT_MAX_REVIEW,
    min_review_probability: float = DEFAULT_MIN_REVIEW_PROBABILITY,
    review_budget: float | None = DEFAULT_REVIEW_BUDGET,
    scorer: Any | None = None,
    measure_other_half: bool = True,
    folds: int = DEFAULT_FOLDS,
    tracker: Any | None = None,
) -> CalibrationResult:
    """Fit calibration + decision policy on held-out data and write `RUN/policy.json`.

    The policy is always measured on stays it was not fitted on (target vs measured
    precision), as the acceptance procedure asks: when `data` is half A (or B) of a data set,
    on the other half; on a whole data set, by `folds`-fold cross-fitting (`folds` < 2: not
    measured).
    """
    path = _resolve_run(run_dir)
    spec = data or default_calibration_data(path)
    name, half = parse_data_spec(spec)
    model = scorer if scorer is not None else _load_scorer(path)
    labels = list(model.labels)
    terminology, _ = _labels_of(model)
    stays = _load_stays(name)
    want_other = measure_other_half and half is not None
    chosen = stays if want_other else select_half(stays, half)
    scored = score_stays(model, chosen, name)
    if half is not None:
        halves = np.array([stay_half(i) for i in scored.stay_ids])
        fit_data = scored.subset(halves == half, spec)
        other_half = "B" if half == "A" else "A"
        other = scored.subset(halves == other_half, f"{name}#{other_half}") if want_other else None
    else:
        fit_data, other = scored, None
    if not fit_data.y.any():
        raise EvalDataError(f"{spec}: no gold code of the label space to fit on")
    policy = DecisionPolicy.fit(
        fit_data.y, fit_data.scores, labels,
        target_precision=target_precision, target_recall=target_recall, confidence=confidence,
        bound=bound, calibration=calibration, min_positives=min_positives, terminology=terminology,
        edition=getattr(getattr(model, "label_space", None), "edition", None),
        max_review_per_stay=max_review_per_stay, min_review_probability=min_review_probability,
        review_budget=review_budget, n_gold=fit_data.n_gold, never_auto=fit_data.never_auto,
        fitted_on={"data": spec, "dataset": name, "half": half, "n_stays": len(fit_data.stay_ids),
                   "n_gold_in_space": int(fit_data.y.sum()), "half_salt": HALF_SALT,
                   **({"folds": folds, "fold_salt": FOLD_SALT} if half is None and folds >= 2 else {})},
    )
    out = policy.save(path)
    measured = None
    if other is not None and other.y.any():
        measured = measure(policy, other, labels)
    elif half is None and folds >= 2:
        measured = measure(policy, fit_data, labels, cross_fit(policy, fit_data, labels, folds))
    if tracker is not None:
        tracker.log_artifact(out)
        figures = {"policy.target_precision": target_precision}
        if measured is not None:
            figures.update({f"policy.held_out.{k}": v for k, v in measured.items()
                            if isinstance(v, int | float) and v is not None})
        tracker.log_metrics(figures)
    return CalibrationResult(policy, out, fit_data, measured)


# --------------------------------------------------------------------------- evaluate


def _target_sweep(
    policy: DecisionPolicy, fit: ScoredData, held_out: ScoredData | None, labels: Sequence[str],
    targets: Sequence[float] = DEFAULT_SWEEP, *, folds: int = 0,
) -> list[dict[str, Any]]:
    """Refit the policy at several targets (same settings) and measure each where it was not fitted.

    On `fit` -> `held_out` when `held_out` is given; else cross-fitted on `fit` (`folds`).
    """
    rows = []
    for t in sorted(set([*targets, policy.target_precision])):
        settings = {**policy.settings(), "target_precision": t}
        if held_out is None:
            fold = fold_of(fit.stay_ids, folds)
            cf = CrossFittedPolicy.fit(fit.y, fit.scores, labels, fold, n_gold=fit.n_gold,
                                       never_auto=fit.never_auto, **settings)
            rows.append(measure(cf.policies[0], fit, labels, cf))
        else:
            p = policy if t == policy.target_precision else DecisionPolicy.fit(
                fit.y, fit.scores, labels, n_gold=fit.n_gold, never_auto=fit.never_auto, **settings)
            rows.append(measure(p, held_out, labels))
    return rows


def _code_titles(terminology: str) -> Callable[[str], str | None] | None:
    try:
        from cimcoder.terminologies import load_terminology

        term = load_terminology(terminology)
    except Exception as exc:  # titles are cosmetic: never fail an evaluation for them
        logger.warning("code labels unavailable for the report: %s", exc)
        return None

    def title(code: str) -> str | None:
        concept = term.get(code)
        return None if concept is None else concept.label

    return title


def evaluate_run(
    run_dir: str | Path,
    data: str,
    output: str | Path | None = None,
    tracker: Tracker | None = None,
    *,
    scorer: Any | None = None,
    sweep: bool = True,
) -> Report:
    """Score `data`, apply the run's policy, compute all metrics and write the report.

    Returns the report (`folder`: where it was written). Decisions are never judged on the stays that fitted them: if
    the policy was fitted on one half of `data`, only the other half is measured (asking
    for the fitting half itself is refused); if it was fitted on the whole data set with
    cross-fitting, each stay is decided by the fold policy fitted without it (a note says so).
    """
    path = _resolve_run(run_dir)
    model = scorer if scorer is not None else _load_scorer(path)
    labels = list(model.labels)
    notes: list[str] = []
    if not RunFolder(path).has(POLICY_FILE):
        # A run evaluated before `cimcoder calibrate` (e.g. a baseline in a comparison):
        # calibrate it the default way first, so that it is judged like any other run.
        logger.warning("%s has no %s: calibrating it on its default data first", path, POLICY_FILE)
        calibrate_run(path, scorer=model, tracker=tracker)
        notes.append("Aucune politique n'existait : elle a été ajustée avec les réglages par défaut.")
    policy = DecisionPolicy.load(path, labels=labels)
    terminology, bands = _labels_of(model)
    name, half = parse_data_spec(data)
    fitted = policy.fitted_on or {}
    same_data = fitted.get("dataset") == name
    fit_half = fitted.get("half") if same_data else None
    folds = int(fitted.get("folds") or 0) if same_data and fit_half is None else 0
    if same_data and fit_half is None and folds < 2:
        raise EvalDataError(
            f"the decision policy was fitted on all of {name} without cross-fitting: measuring "
            f"it there would overstate it; re-run `cimcoder calibrate` (it cross-fits by "
            f"default) or evaluate on other data"
        )
    if fit_half is not None and half == fit_half:
        raise EvalDataError(
            f"the decision policy was fitted on {fitted.get('data')}: measuring it on the same "
            f"stays would overstate it; evaluate on {name}#{'B' if fit_half == 'A' else 'A'}"
        )
    measure_half = half
    if fit_half is not None and half is None:
        measure_half = "B" if fit_half == "A" else "A"
        notes.append(
            f"La politique a été ajustée sur {fitted.get('data')} : seule l'autre moitié "
            f"({name}#{measure_half}) est mesurée ici."
        )
        logger.info("policy fitted on %s: measuring %s#%s only", fitted.get("data"), name, measure_half)
    stays = _load_stays(name)
    f1_threshold = policy.f1_threshold
    held_out: CrossFittedPolicy | None = None
    sweep_rows: list[dict[str, Any]] = []
    if folds >= 2:
        # Fitted on this very data set: refit the fold policies with the policy's settings
        # on the same stays it was fitted on (all of them: the folds are hash-assigned).
        scored_all = score_stays(model, stays, name)
        held_out = cross_fit(policy, scored_all, labels, folds)
        notes.append(
            f"La politique livrée est ajustée sur tout {name} ; chaque séjour est ici décidé par "
            f"une politique ajustée sans lui (validation croisée à {folds} plis)."
        )
        scored = scored_all
        if measure_half is not None:
            keep = np.array([stay_half(i) == measure_half for i in scored_all.stay_ids])
            scored = scored_all.subset(keep, f"{name}#{measure_half}")
            held_out = held_out.subset(keep)
        elif sweep:  # refitted fold by fold on the whole data set (not for a half of it)
            sweep_rows = _target_sweep(policy, scored_all, None, labels, folds=folds)
    elif fit_half is not None and (sweep or f1_threshold is None):
        scored_all = score_stays(model, stays, name)
        halves = np.array([stay_half(i) for i in scored_all.stay_ids])
        fit_data = scored_all.subset(halves == fit_half, f"{name}#{fit_half}")
        scored = scored_all.subset(halves == measure_half, f"{name}#{measure_half}")
        sweep_rows = _target_sweep(policy, fit_data, scored, labels) if sweep else []
        if f1_threshold is None and fit_data.y.any():
            # Older policy files lack it: choose it on the policy's own fitting half, never
            # on the measured one.
            best = best_f1_threshold(fit_data.y, fit_data.scores, fit_data.n_gold)
            f1_threshold = None if best is None else best[0]
            notes.append(f"Seuil F1 global choisi sur {fit_data.name} (politique d'un ancien format).")
    else:
        scored = score_stays(model, select_half(stays, measure_half),
                             name if measure_half is None else f"{name}#{measure_half}")
    if not scored.stay_ids:
        raise EvalDataError(f"{data}: no stay left to evaluate")
    report = build_report(
        scored.y, scored.scores, labels, policy, stay_ids=scored.stay_ids, n_gold=scored.n_gold,
        principal=scored.principal if any(scored.principal) else None, bands=bands or None,
        code_titles=_code_titles(terminology), dataset=scored.name, run=str(path),
        target_sweep=sweep_rows, notes=notes, f1_threshold=f1_threshold, held_out=held_out,
        never_auto=scored.never_auto,
    )
    folder = Path(output) if output is not None else RunFolder(path).eval_dir / _safe_name(scored.name)
    write_report(report, folder, tracker=tracker, artifact_path=f"{EVAL_DIR}/{_safe_name(scored.name)}")
    return report.model_copy(update={"folder": str(folder)})


def _safe_name(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in name)
    return keep.strip("_") or "data"

