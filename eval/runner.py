"""Calibrate and evaluate a model run folder on a data set.

Data sets are named as for `cimcoder.training.corpora.load_dataset`, optionally followed by
`#A` or `#B`: one of two fixed halves, assigned by a hash of the stay id (deterministic,
independent of file order). By default a run is calibrated on half A of its dev set
(`codiesp-fr/dev#A` for a CodiEsp run) and measured on half B, so the thresholds are never
judged on the stays they were fitted on.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cimcoder.errors import CimcoderError
from cimcoder.eval.calibration import CalibrationMethod
from cimcoder.eval.metrics import best_f1_threshold, micro_prf
from cimcoder.eval.policy import (
    AUTO,
    DEFAULT_MAX_REVIEW,
    DEFAULT_MIN_REVIEW_PROBABILITY,
    POLICY_FILE,
    REVIEW,
    BoundMethod,
    DecisionPolicy,
)
from cimcoder.eval.report import Tracker, build_report, write_report

logger = logging.getLogger(__name__)

HALF_SALT = "cimcoder-calibration-v1"
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
    """'A' or 'B', from a salted hash of the stay id."""
    digest = hashlib.sha256(f"{HALF_SALT}:{stay_id}".encode()).digest()
    return HALVES[digest[0] & 1]


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

    def subset(self, keep: np.ndarray, name: str) -> ScoredData:
        idx = np.flatnonzero(keep)
        return ScoredData(name, [self.stay_ids[i] for i in idx], self.y[idx], self.scores[idx],
                          self.n_gold[idx], [self.principal[i] for i in idx])


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
_SCORES: weakref.WeakKeyDictionary[Any, dict[tuple[str, tuple[str, ...]], np.ndarray]] = (
    weakref.WeakKeyDictionary()
)


def _raw_scores(scorer: Any, stays: Sequence[Any], name: str, batch_size: int) -> np.ndarray:
    key = (name, tuple(str(s.id) for s in stays))
    try:
        memo = _SCORES.setdefault(scorer, {})
    except TypeError:  # not weak-referenceable: no memo
        memo = {}
    if key not in memo:
        texts = [s.text for s in stays]
        memo[key] = np.asarray(scorer.predict_scores(texts, batch_size=batch_size), dtype=float)
    return memo[key]


def score_stays(scorer: Any, stays: Sequence[Any], name: str, batch_size: int = 8) -> ScoredData:
    labels = list(scorer.labels)
    if not stays:
        raise EvalDataError(f"data set {name} has no stay to score")
    scores = _raw_scores(scorer, stays, name, batch_size)
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
    return ScoredData(name, [str(s.id) for s in stays], y, scores, n_gold, principal)


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
    """Half A of the run's dev set ('codiesp-fr/dev#A' for a CodiEsp run)."""
    from cimcoder.training.config import read_run_config

    config = read_run_config(run_dir)
    if not config.data.dev:
        raise EvalDataError(
            f"{run_dir} has no dev set in its config; pass --data DATASET (data kept apart "
            "from the test data), e.g. --data my-dev.jsonl#A"
        )
    return f"{config.data.dev}#A"


def _load_scorer(run_dir: Path) -> Any:
    from cimcoder.training import load_scorer

    return load_scorer(run_dir)


def _labels_of(scorer: Any) -> tuple[str, dict[str, str]]:
    space = getattr(scorer, "label_space", None)
    terminology = getattr(space, "terminology", "cim10") or "cim10"
    bands = {c: space.band(c) for c in scorer.labels} if space is not None else {}
    return terminology, bands


# --------------------------------------------------------------------------- calibrate


@dataclass
class CalibrationResult:
    policy: DecisionPolicy
    path: Path
    fitted_on: ScoredData
    measured: dict[str, Any] | None  # held-out measurement on the other half, when there is one


def measure(policy: DecisionPolicy, data: ScoredData, labels: Sequence[str]) -> dict[str, Any]:
    """Auto precision, automation rate, review workload and F1 of `policy` on scored data."""
    d = policy.decide(policy.calibrate(data.scores, labels), labels, tiebreak=data.scores)
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
    }
    if policy.f1_threshold is not None:
        out["micro_f1"] = micro_prf(data.y, data.scores >= policy.f1_threshold, data.n_gold).f1
    return out


def calibrate_run(
    run_dir: str | Path,
    data: str | None = None,
    target_precision: float = 0.95,
    *,
    target_recall: float = 0.95,
    calibration: CalibrationMethod = "isotonic",
    bound: BoundMethod = "wilson",
    confidence: float = 0.95,
    min_positives: int = 50,
    max_review_per_stay: int | None = DEFAULT_MAX_REVIEW,
    min_review_probability: float = DEFAULT_MIN_REVIEW_PROBABILITY,
    scorer: Any | None = None,
    measure_other_half: bool = True,
    tracker: Any | None = None,
) -> CalibrationResult:
    """Fit calibration + decision policy on held-out data and write `RUN/policy.json`.

    When `data` is half A (or B) of a data set, the other half is scored too and the policy
    measured on it (target vs measured precision), as the acceptance procedure asks.
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
        n_gold=fit_data.n_gold,
        fitted_on={"data": spec, "dataset": name, "half": half, "n_stays": len(fit_data.stay_ids),
                   "n_gold_in_space": int(fit_data.y.sum()), "half_salt": HALF_SALT},
    )
    out = policy.save(path)
    measured = measure(policy, other, labels) if other is not None and other.y.any() else None
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
    policy: DecisionPolicy, fit: ScoredData, held_out: ScoredData, labels: Sequence[str],
    targets: Sequence[float] = DEFAULT_SWEEP,
) -> list[dict[str, Any]]:
    """Refit the policy at several targets on `fit` (same settings), measure on `held_out`."""
    rows = []
    for t in sorted(set([*targets, policy.target_precision])):
        p = policy if t == policy.target_precision else DecisionPolicy.fit(
            fit.y, fit.scores, labels, target_precision=t, target_recall=policy.target_recall,
            confidence=policy.confidence, bound=policy.bound, min_positives=policy.min_positives,
            calibration=policy.calibrator.method, terminology=policy.terminology,
            edition=policy.edition, max_review_per_stay=policy.max_review_per_stay,
            min_review_probability=policy.min_review_probability, n_gold=fit.n_gold,
        )
        rows.append(measure(p, held_out, labels))
    return rows


def _code_titles(terminology: str) -> Callable[[str], str | None] | None:
    try:
        from cimcoder.terminologies import load_terminology

        term = load_terminology(terminology)  # type: ignore[arg-type]
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
) -> dict[str, Any]:
    """Score `data`, apply the run's policy, compute all metrics and write the report.

    Returns the JSON report. If the policy was fitted on one half of `data`, only the other
    half is measured (a note says so); asking for the fitting half itself is refused.
    """
    path = _resolve_run(run_dir)
    model = scorer if scorer is not None else _load_scorer(path)
    labels = list(model.labels)
    notes: list[str] = []
    if not (path / POLICY_FILE).is_file():
        # A run evaluated before `cimcoder calibrate` (e.g. a baseline in a comparison):
        # calibrate it the default way first, so that it is judged like any other run.
        logger.warning("%s has no %s: calibrating it on its default data first", path, POLICY_FILE)
        calibrate_run(path, scorer=model, tracker=tracker)
        notes.append("Aucune politique n'existait : elle a été ajustée avec les réglages par défaut.")
    policy = DecisionPolicy.load(path, labels=labels)
    terminology, bands = _labels_of(model)
    name, half = parse_data_spec(data)
    fitted = policy.fitted_on or {}
    fit_half = fitted.get("half") if fitted.get("dataset") == name else None
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
    need_fit_data = sweep or f1_threshold is None
    if fit_half is not None and need_fit_data:
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
        sweep_rows = []
    if not scored.stay_ids:
        raise EvalDataError(f"{data}: no stay left to evaluate")
    report = build_report(
        scored.y, scored.scores, labels, policy, stay_ids=scored.stay_ids, n_gold=scored.n_gold,
        principal=scored.principal if any(scored.principal) else None, bands=bands or None,
        code_titles=_code_titles(terminology), dataset=scored.name, run=str(path),
        target_sweep=sweep_rows, notes=notes, f1_threshold=f1_threshold,
    )
    folder = Path(output) if output is not None else path / "eval" / _safe_name(scored.name)
    write_report(report, folder, tracker=tracker, artifact_path=f"eval/{_safe_name(scored.name)}")
    report["files"] = {"folder": str(folder)}
    return report


def _safe_name(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in name)
    return keep.strip("_") or "data"

