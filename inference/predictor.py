"""The predictor: a trained run folder (or MLflow model) turned into PMSI coding suggestions.

`Predictor.load(uri_or_path)` loads the scorer (`cimcoder.training.load_scorer`), its
decision policy (`policy.json`, `cimcoder.eval.policy.DecisionPolicy`) and the terminology
of its label space, and refuses a mismatch between them. `predict(items)` batches the
reports (the scorer chunks each one), then decodes every stay to ranked codes with their
calibrated score, decision, proposed PMSI role, restriction flags, CIM-11 equivalents and
evidence spans (`StayPrediction`, the `cimcoder predict` line).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cimcoder.errors import CimcoderError
from cimcoder.inference.schemas import (
    DECISIONS,
    CodePrediction,
    Decision,
    Evidence,
    InputInfo,
    ModelInfo,
    Runtime,
    StayPrediction,
)
from cimcoder.run_folder import CHECKPOINT_DIR, LABELS_FILE, POLICY_FILE, RunFolder
from cimcoder.terminologies.errors import TerminologyError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_URI = "models:/cimcoder@champion"
ONNX_CACHE_DIR = "onnx"  # exported graphs (cimcoder.inference.onnx_runtime): not the model
# Ranking metrics need the head of the ranking even when rejected (the `predict` contract).
MIN_CANDIDATES = 30
EVIDENCE_TOP_K = 3
DOCUMENT_SEPARATOR = "\n\n"  # as cimcoder.training.corpora.Stay.text

FLAG_NOT_DP = "interdit en DP"
FLAG_NOT_DR = "interdit en DR"
FLAG_NOT_CODABLE = "non codable : catégorie non vide, coder un code plus précis"
FLAG_EXTERNAL_CAUSE = "cause externe : en DAS uniquement"
FLAG_DELETED = "code supprimé de l'édition"
FLAG_UNKNOWN = "absent de la terminologie"
# Among the suggested codes, the DP is where the report puts it (`dp_weights`: the head of the
# conclusion, the reason for the stay...); the probability only breaks ties. How sure the model
# is that a code belongs to the stay says nothing of why the patient came (a treated
# hypertension is surely coded), and a diagnosis rare in the training stays ranks low: on
# data/hospital-dev, 45 right DPs of 60 against 39 with the square root of the probability
# times the weight, 42 with its fourth root.
DP_LESS_PRECISE = 0.3  # DP weight of a code less precise than another suggestion
FLAG_SYMPTOM = "symptôme : non codé s'il relève d'un diagnostic retenu (à vérifier)"
FLAG_LESS_PRECISE = "moins précis qu'un autre code proposé de la même catégorie"
FLAG_SUBDIVIDED = "subdivisé : l'ATIH a des codes plus précis, à choisir par le codeur"
FLAG_EXPLAINED = "écrit avec sa cause, proposée aussi : la coder plutôt (à vérifier)"
FLAG_COMBINED = "code combiné : la maladie et son germe écrits ensemble"
FLAG_COMBINED_PART = "dit moins que le code combiné proposé (maladie + germe)"
FLAG_STATED = "retenu dans la conclusion ou le motif du séjour : proposé malgré un score bas"
FLAG_COMPLICATED_DELIVERY = "accouchement avec un autre code obstétrical : O80 est l'accouchement sans complication"
FLAG_MULTIPLE_COMPLICATIONS = "diabète avec complications multiples : coder aussi chaque complication (astérisque)"
FLAG_ONE_COMPLICATION = "une des complications du diabète : le code de complications multiples est proposé"
FLAG_DIABETES_TYPED = "diabète dont le type est écrit : E14 ne s'emploie que sans type"
FLAG_MORE_PRECISE = "plus précis qu'un code « sans précision » proposé : écrit dans le texte"


Spans = dict[str, list[tuple[int, int]]]  # code -> character spans (start, end) of the text


class PredictorError(CimcoderError):
    """The model cannot be loaded or used as asked."""


class ModelMismatchError(PredictorError):
    """Label space, decision policy and terminology of a model do not agree."""


class EmptyReportError(PredictorError):
    """A report (or every document of a stay) has no text."""


@dataclass(frozen=True)
class StayInput:
    """What the predictor scores: an optional id and the stay's text."""

    id: str | None
    text: str

    @classmethod
    def from_documents(cls, id: str | None, texts: Sequence[str]) -> StayInput:
        """A stay of several documents: their texts joined with a blank line (as `Stay.text`)."""
        return cls(id, DOCUMENT_SEPARATOR.join(t for t in texts if t.strip()))


def _as_input(item: Any) -> StayInput:
    if isinstance(item, StayInput):
        return item
    if isinstance(item, str):
        return StayInput(None, item)
    text = getattr(item, "text", None)  # cimcoder.training.corpora.Stay
    if isinstance(text, str):
        return StayInput(getattr(item, "id", None), text)
    raise TypeError(f"cannot score a {type(item).__name__}: give str, StayInput or Stay")


def _fingerprint(run_dir: Path) -> str:
    """Short content hash of the model files: changes whenever the model does."""
    digest = hashlib.sha256()
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(run_dir)
        if rel.parts[0] in {CHECKPOINT_DIR, "mlruns", ONNX_CACHE_DIR} or rel.name == POLICY_FILE:
            continue
        digest.update(str(rel).encode())
        size = path.stat().st_size
        digest.update(str(size).encode())
        with path.open("rb") as fh:  # head and tail: cheap on multi-GB weights, still exact enough
            digest.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), 2)
                digest.update(fh.read())
    return digest.hexdigest()[:12]


def resolve_run_dir(uri_or_path: str | Path) -> tuple[Path, str]:
    """The local run folder of a path or an MLflow URI, and a printable source name."""
    text = str(uri_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve(), str(path)
    if "://" in text or text.startswith(("models:/", "runs:/")):
        try:
            from cimcoder.inference.mlflow_model import load_run_dir_from_uri
        except ImportError as exc:
            raise PredictorError(
                f"cannot load {text}: MLflow model URIs are not supported in this install "
                f"({exc}); give a run folder"
            ) from None
        try:
            return Path(load_run_dir_from_uri(text)), text
        except CimcoderError:
            raise
        except Exception as exc:  # MLflow's own errors (no registry, unknown alias, ...)
            raise PredictorError(f"cannot load model {text}: {exc}") from exc
    if path.exists():
        raise PredictorError(f"{path} is a file: give a run folder (runs/<exp>/<run>) or a URI")
    raise PredictorError(
        f"model not found: {text} is neither a run folder nor an MLflow URI (models:/NAME@ALIAS)"
    )


class Predictor:
    """A scorer with its policy and terminology; thread-safe for concurrent `predict` calls."""

    def __init__(
        self,
        scorer: Any,
        *,
        policy: Any = None,
        name: str = "model",
        version: str = "unknown",
        source: str | None = None,
        architecture: str | None = None,
        terminology: Any = None,
        crosswalk: Any = None,
        min_candidates: int = MIN_CANDIDATES,
        evidence_top_k: int = EVIDENCE_TOP_K,
    ) -> None:
        self.scorer = scorer
        self.policy = policy
        self.label_space = scorer.label_space
        self.labels: list[str] = list(scorer.labels)
        self.name = name
        self.version = version
        self.source = source or name
        self.architecture = architecture or getattr(scorer, "model_name", type(scorer).__name__)
        self.runtime: Runtime = getattr(scorer, "runtime", "torch")  # onnx_runtime.OnnxPLMScorer
        self.min_candidates = min_candidates
        self.evidence_top_k = evidence_top_k
        if terminology is None:
            from cimcoder.terminologies import load_terminology

            terminology = load_terminology(self.label_space.terminology)
        self.terminology = terminology
        self._crosswalk = crosswalk
        self._check_consistency()
        self._concepts = [self.terminology.get(code) for code in self.labels]
        self._unspecified = np.array([c is not None and c.unspecified for c in self._concepts])
        self._allowed_dp = np.array(
            [
                c is not None
                and (c.restrictions is None or c.restrictions.allowed_dp)
                and not c.deleted
                for c in self._concepts
            ]
        )
        self._allowed_dr = np.array(
            [c is not None and (c.restrictions is None or c.restrictions.allowed_dr) for c in self._concepts]
        )
        self._codable = np.array(
            [c is not None and (c.restrictions is None or c.restrictions.codable) for c in self._concepts]
        )
        self._cim11_cache: dict[str, list[str]] = {}
        self._label_index = {code: j for j, code in enumerate(self.labels)}
        self._category: dict[str, list[int]] = {}
        for j, code in enumerate(self.labels):
            self._category.setdefault(code[:3], []).append(j)
        self._descendants: dict[int, list[int]] = {}
        self._has_children: dict[int, bool] = {}

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def load(cls, uri_or_path: str | Path = DEFAULT_MODEL_URI, *, runtime: str = "torch") -> Predictor:
        """Load a run folder or an MLflow model URI (default `models:/cimcoder@champion`),
        scored by `runtime` (torch, onnx or onnx-int8: `cimcoder.inference.onnx_runtime`)."""
        from cimcoder.training import load_scorer

        run_dir, source = resolve_run_dir(uri_or_path)
        run = RunFolder(run_dir)
        if not run.has(LABELS_FILE):
            raise PredictorError(f"{run_dir} is not a model run folder: no {LABELS_FILE}")
        scorer = load_scorer(run_dir)
        if runtime != "torch":
            from cimcoder.inference.onnx_runtime import with_runtime

            scorer = with_runtime(scorer, run_dir, runtime)
        warm = getattr(scorer, "warm", None)
        if warm is not None:  # build what a first request would otherwise wait for
            warm()
        policy = None
        if run.has(POLICY_FILE):
            from cimcoder.eval.policy import DecisionPolicy

            policy = DecisionPolicy.load(run.policy, labels=scorer.labels)
        else:
            logger.warning(
                "%s has no %s: scores are not calibrated and every code is 'review' "
                "(run `cimcoder calibrate`)",
                run_dir,
                POLICY_FILE,
            )
        predictor = cls(
            scorer,
            policy=policy,
            name=run_dir.name,
            version=_fingerprint(run_dir),
            source=source,
        )
        logger.info(
            "loaded model %s (%s, %d codes, %s)",
            predictor.name,
            predictor.architecture,
            len(predictor.labels),
            "calibrated" if policy is not None else "no policy",
        )
        return predictor

    def _check_consistency(self) -> None:
        ls = self.label_space
        if list(ls.codes) != self.labels:
            raise ModelMismatchError(f"the scorer's labels differ from its label space ({LABELS_FILE})")
        if ls.terminology != self.terminology.name:
            raise ModelMismatchError(
                f"the model scores {ls.terminology} codes but the terminology is "
                f"{self.terminology.name}"
            )
        if ls.edition and ls.edition != self.terminology.edition:
            raise ModelMismatchError(
                f"the model was trained on {ls.edition} but the installed terminology is "
                f"{self.terminology.edition}: retrain, or install the model's edition"
            )
        unknown = [code for code in self.labels if code not in self.terminology]
        if unknown:
            raise ModelMismatchError(
                f"{len(unknown)} label(s) of the model are not in {self.terminology.edition}: "
                f"{', '.join(unknown[:10])}"
            )
        if self.policy is None:
            return
        for attr, expected in (("terminology", ls.terminology), ("edition", ls.edition)):
            value = getattr(self.policy, attr, None)
            if isinstance(value, str) and expected and value != expected:
                raise ModelMismatchError(
                    f"policy.json was calibrated for {attr} {value!r} but the model has "
                    f"{expected!r}: run `cimcoder calibrate` again"
                )
        check_labels = getattr(self.policy, "check_labels", None)
        if check_labels is not None:
            check_labels(self.labels)  # raises PolicyMismatchError (a CimcoderError)

    # -- description -------------------------------------------------------------------------

    @property
    def thresholds_version(self) -> str | None:
        if self.policy is None:
            return None
        version = getattr(self.policy, "version", None)
        if isinstance(version, dict):  # DecisionPolicy: {"hash": sha256, "created_at": ...}
            version = str(version.get("hash", ""))[:12] or None
        return str(version) if version else "unversioned"

    def model_info(self, input_info: InputInfo | None = None) -> ModelInfo:
        return ModelInfo(
            name=self.name,
            version=self.version,
            source=self.source,
            architecture=str(self.architecture),
            runtime=self.runtime,
            terminology=self.label_space.terminology,
            edition=self.label_space.edition or self.terminology.edition,
            labels=len(self.labels),
            thresholds_version=self.thresholds_version,
            calibrated=self.policy is not None,
            note=None
            if self.policy is not None
            else "no policy.json: raw scores, every code needs review (run `cimcoder calibrate`)",
            input=input_info,
        )

    def cim11_for(self, code: str) -> list[str]:
        """CIM-11 equivalents of a code of the model's terminology (itself for CIM-11)."""
        if self.label_space.terminology == "cim11":
            return [code]
        cached = self._cim11_cache.get(code)
        if cached is None:
            crosswalk = self._get_crosswalk()
            targets = crosswalk.to_cim11(code) if crosswalk is not None else []
            cached = list(dict.fromkeys(t.code for t in targets))
            self._cim11_cache[code] = cached
        return list(cached)

    def _get_crosswalk(self) -> Any:
        if self._crosswalk is None:
            try:
                from cimcoder.terminologies import load_crosswalk
            except ImportError:
                # Only while the terminology package is incomplete (development checkouts).
                logger.warning("no CIM-10 -> CIM-11 crosswalk installed: 'cim11' left empty")
                self._crosswalk = False
                return None
            self._crosswalk = load_crosswalk()
        return self._crosswalk or None

    # -- scoring -------------------------------------------------------------------------------

    def _read_extent(self, text: str) -> int:
        """Characters of `text` inside the scorer's chunk budget (all for a bag-of-words model)."""
        chunk = getattr(self.scorer, "chunk", None)
        if chunk is None:
            return len(text)
        doc = chunk([text])[0]
        if not getattr(doc, "truncated", False):
            return len(text)
        ends = [end for offs in doc.offsets for (_, end) in offs if end > 0]
        return max(ends) if ends else 0

    def scores(self, texts: Sequence[str], batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Raw and calibrated scores, [n, L] each."""
        raw = np.asarray(self.scorer.predict_scores(list(texts), batch_size=batch_size))
        return self._calibrated(raw, len(texts))

    def _calibrated(self, raw: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        if raw.shape != (n, len(self.labels)):
            raise PredictorError(f"the scorer returned scores of shape {raw.shape}")
        if self.policy is None:
            return raw, raw
        return raw, np.asarray(self.policy.calibrate(raw, self.labels))

    def _scores_and_evidence(
        self, texts: list[str], batch_size: int
    ) -> tuple[np.ndarray, np.ndarray, Callable[[int, list[str]], Spans], Any]:
        """Scores, evidence spans of report i for some codes, and the scoring pass's index
        (None without one): from the scoring pass when the scorer offers
        `predict_scores_with_evidence` (PLM-ICD's attention, the hybrid's mentions), else
        the scorer's `explain`."""
        one_pass = getattr(self.scorer, "predict_scores_with_evidence", None)
        if one_pass is None:
            raw, probs = self.scores(texts, batch_size=batch_size)
            top_k = self.evidence_top_k

            def explain(i: int, codes: list[str]) -> Spans:
                return self.scorer.explain(texts[i], codes, top_k=top_k)

            return raw, probs, explain, None
        raw_scores, index = one_pass(texts, batch_size=batch_size, top_k=self.evidence_top_k)
        raw, probs = self._calibrated(np.asarray(raw_scores), len(texts))
        return raw, probs, index.spans, index

    def predict(
        self, items: Sequence[Any], batch_size: int = 8, *, evidence: bool = True
    ) -> list[StayPrediction]:
        """Score reports or stays (str, `StayInput` or `Stay`); one answer per item, in order.

        Evidence comes from the scoring pass itself when the scorer offers
        `predict_scores_with_evidence` (PLM-ICD keeps each label's heaviest attention
        positions), else from the scorer's `explain` per report. `evidence=False` leaves every
        `evidence` list empty and skips all evidence work.
        """
        if isinstance(items, str | StayInput):
            raise TypeError("predict takes a list; use predict_one for a single report")
        inputs = [_as_input(item) for item in items]
        for i, item in enumerate(inputs):
            if not item.text.strip():
                who = f"report {item.id!r}" if item.id is not None else f"report #{i + 1}"
                raise EmptyReportError(f"{who} is empty: nothing to code")
        if not inputs:
            return []
        texts = [item.text for item in inputs]
        spans_of: Callable[[int, list[str]], Spans] | None = None
        index: Any = None
        never_auto: np.ndarray | None = None
        if evidence:
            raw, probs, spans_of, index = self._scores_and_evidence(texts, batch_size)
            never_auto = getattr(index, "vetoes", None)
        elif hasattr(self.scorer, "predict_scores_with_context"):
            # What the decisions read besides the scores (where each code is written: the DP
            # choice, the flags, the vetoes) is no evidence: it stays when evidence is off.
            raw_scores, index = self.scorer.predict_scores_with_context(texts, batch_size=batch_size)
            raw, probs = self._calibrated(np.asarray(raw_scores), len(texts))
            never_auto = getattr(index, "vetoes", None)
        elif hasattr(self.scorer, "predict_scores_and_vetoes"):
            raw_scores, never_auto = self.scorer.predict_scores_and_vetoes(texts, batch_size=batch_size)
            raw, probs = self._calibrated(np.asarray(raw_scores), len(texts))
        else:
            raw, probs = self.scores(texts, batch_size=batch_size)
        if self.policy is not None:
            # Raw scores break ties at the review cap, as in the evaluation report.
            decisions = np.asarray(
                self.policy.decide(probs, self.labels, tiebreak=raw, never_auto=never_auto)
            )
        else:
            decisions = np.full(probs.shape, "review", dtype=object)
        return [
            self._decode(
                item,
                raw[i],
                probs[i],
                decisions[i],
                None if spans_of is None else functools.partial(spans_of, i),
                _Context.of(index, i),
            )
            for i, item in enumerate(inputs)
        ]

    def predict_one(self, item: Any) -> StayPrediction:
        return self.predict([item])[0]

    # -- decoding ------------------------------------------------------------------------------

    def _decode(
        self,
        item: StayInput,
        raw: np.ndarray,
        probs: np.ndarray,
        decisions: np.ndarray,
        spans_of: Callable[[list[str]], Spans] | None = None,
        context: _Context | None = None,
    ) -> StayPrediction:
        """One stay's answer; `spans_of(codes)` gives the evidence of codes (None: none)."""
        decisions = self._refine_codable(np.asarray(decisions, dtype=object).copy(), probs)
        self._undocumented_rule(decisions, context)
        finer = self._finer_sibling_rule(decisions, probs, context)
        stated = self._stated_rule(decisions, context)
        symptoms = self._symptom_rule(decisions, context)
        explained = self._explained_rule(decisions, context)
        combined, parts = self._combination_rule(decisions, context)
        vague = self._unspecified_rule(decisions)
        normal_delivery = self._delivery_rule(decisions)
        untyped = self._untyped_diabetes_rule(decisions)
        multiple, single = self._diabetes_rule(decisions, probs, context)
        subdivided = self._subdivided_rule(decisions)
        # Calibration maps many raw scores to one value (isotonic steps): the raw score breaks
        # the ties, so the ranking keeps all the model's information.
        order = np.lexsort((-raw, -probs))
        keep = np.zeros(len(order), dtype=bool)
        keep[order[: self.min_candidates]] = True
        if self.policy is not None:
            # Every suggested code is listed, however low it ranks. Without a policy every
            # code is "review" only as a placeholder: the ranking head is what is useful.
            keep |= decisions != "reject"
        ranked = [int(j) for j in order if keep[j]]

        suggested = [j for j in ranked if decisions[j] != "reject"]
        dp, dr = self._principal(
            suggested or ranked, probs, context, vague | parts | normal_delivery | single,
            finer | combined | multiple,
        )

        # Why each rule moved a code, in the order a coder reads them.
        rule_flags: list[tuple[Collection[int], str]] = [
            (stated, FLAG_STATED), (symptoms, FLAG_SYMPTOM), (explained - symptoms, FLAG_EXPLAINED),
            (vague, FLAG_LESS_PRECISE), (subdivided, FLAG_SUBDIVIDED), (finer, FLAG_MORE_PRECISE),
            (combined, FLAG_COMBINED), (parts, FLAG_COMBINED_PART),
            (normal_delivery, FLAG_COMPLICATED_DELIVERY), (multiple, FLAG_MULTIPLE_COMPLICATIONS),
            (single, FLAG_ONE_COMPLICATION), (untyped, FLAG_DIABETES_TYPED),
        ]
        spans: Spans = {}
        if suggested and spans_of is not None:
            spans = spans_of([self.labels[j] for j in suggested])
        flags_of: dict[str, list[str]] = {}
        if context is not None and suggested:
            flags_of = context.flags([self.labels[j] for j in ranked])

        codes = []
        for j in ranked:
            code = self.labels[j]
            concept = self._concepts[j]
            spans_of_code = [
                Evidence(start=s, end=e, text=item.text[s:e])
                for s, e in spans.get(code, [])
                if 0 <= s < e <= len(item.text)
            ]
            codes.append(
                CodePrediction(
                    code=code,
                    label=concept.label if concept is not None else None,
                    score=round(float(np.clip(probs[j], 0.0, 1.0)), 6),
                    decision=_decision(decisions[j]),
                    role="DP" if j == dp else "DR" if j == dr else "DAS",
                    cim11=self.cim11_for(code),
                    evidence=spans_of_code,
                    flags=self._flags(concept) + flags_of.get(code, [])
                    + [flag for members, flag in rule_flags if j in members],
                )
            )
        read = self._read_extent(item.text)
        info = InputInfo(chars=len(item.text), chars_read=read, truncated=read < len(item.text))
        if info.truncated:
            logger.warning(
                "stay %s: %d of %d characters read (chunk budget)", item.id, read, len(item.text)
            )
        return StayPrediction(id=item.id, codes=codes, model=self.model_info(info))

    def _refine_codable(self, decisions: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """A suggested code that CIM-10 FR forbids (a *code père* split by ATIH) hands its
        suggestion to its most probable codable descendant in the label space: a DIM codes
        E11.98, never E11.9. The descendant is at most sent to review unless the policy
        auto-codes it itself."""
        for j in _suggested(decisions):
            concept = self._concepts[j]
            r = getattr(concept, "restrictions", None)
            if r is None or r.codable:
                continue
            kids = self._codable_descendants(int(j))
            if not kids:
                continue
            best = max(kids, key=lambda k: probs[k])
            if decisions[best] == "reject":
                decisions[best] = "review"
            decisions[j] = "reject"
        return decisions

    def _undocumented_rule(self, decisions: np.ndarray, context: _Context | None) -> None:
        """The PMSI codes the patient's current diagnoses as the record documents them: a code
        that no affirmed mention supports (every mention denied, hypothetical, a relative's,
        past history or reported speech, or no mention at all: suggested by similar coded
        reports only) is rejected, its flags saying why. It was never auto-coded; in review it
        was noise: on data/hospital-dev, 76 such suggestions, 2 in the DIM's coding."""
        if context is None:
            return
        suggested = _suggested(decisions)
        if not suggested:
            return
        undocumented = context.flags([self.labels[j] for j in suggested])
        for j in suggested:
            if self.labels[j] in undocumented:
                decisions[j] = "reject"

    def _stated_rule(self, decisions: np.ndarray, context: _Context | None) -> set[int]:
        """ATIH guide: the diagnoses the report retains are those its conclusion states, and
        the reason given for the stay. A diagnosis (not a symptom, not a status Z code) that
        an affirmed phrase of its own states there is sent to review even when the model
        ranks it low (a code rare in the training stays: a GEU, a péricardite aiguë); never
        auto-coded on that ground. The codes it adds back."""
        if context is None:
            return set()
        rejected = [int(j) for j in np.flatnonzero(decisions == "reject")
                    if self.labels[j][:1] not in "RZ" and self._codable[j]]
        codes = [self.labels[j] for j in rejected]
        stated = context.concluded(codes) & context.named(codes)
        added = {j for j in rejected if self.labels[j] in stated}
        for j in added:
            decisions[j] = "review"
        return added

    def _symptom_rule(self, decisions: np.ndarray, context: _Context | None) -> set[int]:
        """ATIH guide: a symptom (chapter XVIII, R codes) is not coded when a diagnosis
        retained in the stay explains it. Where a non-symptom diagnosis of the stay has an
        affirmed mention, R codes are sent to review rather than auto-coded, with a flag; where
        the report states such a diagnosis as its conclusion or the reason for the stay, a
        symptom it does not state there as well is rejected (on data/hospital-dev, 59 of the
        hybrid's suggestions were symptoms outside the DIM's coding, 3 were in it)."""
        if context is None:
            return set()
        suggested = _suggested(decisions)
        symptoms = [j for j in suggested if self.labels[j][:1] == "R"]
        if not symptoms:
            return set()
        others = [self.labels[j] for j in suggested if self.labels[j][:1] not in "RZ"]
        if not context.affirmed(others):
            return set()
        concluded = context.concluded(others)
        for j in symptoms:
            if decisions[j] == "auto":
                decisions[j] = "review"
            if concluded and not context.concluded([self.labels[j]]):
                decisions[j] = "reject"
        return set(symptoms)

    def _explained_rule(self, decisions: np.ndarray, context: _Context | None) -> set[int]:
        """A disease the report writes with its cause ("hypothyroïdie par thyroïdite
        d'Hashimoto", "colique néphrétique secondaire à un calcul"), the cause suggested as
        well: CIM-10 codes the cause, which usually includes it; the manifestation is sent to
        review, not auto-coded, with a flag."""
        if context is None:
            return set()
        suggested = _suggested(decisions)
        explained = context.explained([self.labels[j] for j in suggested])
        return _reviewed(decisions, {j for j in suggested if self.labels[j] in explained})

    def _finer_sibling_rule(
        self, decisions: np.ndarray, probs: np.ndarray, context: _Context | None
    ) -> dict[int, int]:
        """The DIM codes the finest code the record supports: where a "sans précision" code is
        suggested ("FA", I48.9) and the report names a codable, more precise code of its
        category ("FA persistante", I48.1) that the ranking left out (too rare in the
        training stays to score high), that code is sent to review as well, and competes for
        the DP with the probability of the code it makes precise. {finer: vaguer} back."""
        if context is None:
            return {}
        suggested = _suggested(decisions)
        out: dict[int, int] = {}
        for j in (j for j in suggested if self._unspecified[j]):
            siblings = [
                k for k in self._category.get(self.labels[j][:3], [])
                if decisions[k] == "reject" and k not in out and self._codable[k]
                and self._precision(k) > self._precision(j)
            ]
            named = context.named([self.labels[k] for k in siblings])
            finest = [k for k in siblings if self.labels[k] in named]
            if finest:
                k = max(finest, key=lambda k: (probs[k], -k))
                decisions[k] = "review"
                out[k] = j
        return out

    def _combination_rule(
        self, decisions: np.ndarray, context: _Context | None
    ) -> tuple[dict[int, int], set[int]]:
        """CIM-10 names some diseases with their agent in one code (J13 "pneumonie due à
        Streptococcus pneumoniae", A41.0 "sepsis à staphylocoques dorés"): where the report
        writes a suggested disease "sans précision" with its agent (`terminologies/
        combinations.py`), the combination code is sent to review and competes for the DP
        with the disease's probability and place; the disease and the agent, which say less,
        are not auto-coded. ({combination: disease}, {disease, agent}) back."""
        if context is None:
            return {}, set()
        suggested = [self.labels[j] for j in _suggested(decisions)]
        combined: dict[int, int] = {}
        parts: set[int] = set()
        for code, (disease, agent) in context.combined(suggested).items():
            k = self._label_index.get(code)
            if k is None or not self._codable[k]:
                continue
            if decisions[k] == "reject":
                decisions[k] = "review"
            combined[k] = self._label_index[disease]
            parts |= {j for c in (disease, agent) if (j := self._label_index.get(c)) is not None}
        return combined, _reviewed(decisions, parts - set(combined))

    def _untyped_diabetes_rule(self, decisions: np.ndarray) -> set[int]:
        """CIM-10: E14 is the diabetes whose type is not said. Beside a suggested E10-E13
        (type 1, type 2...), an E14 code ("néphropathie diabétique" names both E11.28 and
        E14.2) is rejected, its flag saying why."""
        suggested = _suggested(decisions)
        if not any(self.labels[j][:3] in _DIABETES - {"E14"} for j in suggested):
            return set()
        untyped = {j for j in suggested if self.labels[j][:3] == "E14"}
        for j in untyped:
            decisions[j] = "reject"
        return untyped

    def _diabetes_rule(
        self, decisions: np.ndarray, probs: np.ndarray, context: _Context | None
    ) -> tuple[dict[int, int], set[int]]:
        """CIM-10: a diabetes with complications of two kinds or more (renal E1x.2, ocular .3,
        neurological .4, peripheral vascular .5, other .6) is E1x.7, "avec complications
        multiples", each complication coded besides by its asterisk code (N08.3, H36.0,
        G63.2...). Where the suggestions or the report's own phrases name two kinds, E1x.7
        (insulin-treated 0 or not 8, as the suggested codes say) is sent to review and competes
        for the DP with their place; the single-kind codes and E1x.9 ("sans complication")
        leave auto and the DP.
        ({E1x.7: the most probable single-kind code}, {single-kind codes}) back."""
        if context is None:
            return {}, set()
        suggested = set(_suggested(decisions))
        multiple: dict[int, int] = {}
        single: set[int] = set()
        for category in {self.labels[j][:3] for j in suggested} & _DIABETES:
            kinds = [j for j in self._category[category] if self.labels[j][4:5] in "23456"]
            named = context.named([self.labels[j] for j in kinds if j not in suggested])
            found = [j for j in kinds if j in suggested or self.labels[j] in named]
            if len({self.labels[j][4] for j in found}) < 2:
                continue
            insulin = any(self.labels[j][5:6] == "0" for j in suggested if self.labels[j][:3] == category)
            target = next((self._label_index[c] for c in (f"{category}.7{'0' if insulin else '8'}", f"{category}.7")
                           if c in self._label_index and self._codable[self._label_index[c]]), None)
            if target is None:
                continue
            if decisions[target] == "reject":
                decisions[target] = "review"
            # the single kinds and the diabetes "sans complication" (E1x.9) say less or wrong
            members = [j for j in suggested if self.labels[j][:3] == category
                       and self.labels[j][4:5] in "234569" and j != target]
            multiple[target] = max(members or found, key=lambda j: (j in suggested, probs[j]))
            single |= set(members)
        return multiple, _reviewed(decisions, single)

    def _delivery_rule(self, decisions: np.ndarray) -> set[int]:
        """CIM-10: O80 is the delivery without complication ("accouchement unique et
        spontané"). Beside another code of chapter XV (a perineal tear O70, a pre-eclampsia
        O14, a gestational diabetes O24.4), the delivery was not that: O80 goes to review, not
        auto, and is no DP (the complication is)."""
        suggested = _suggested(decisions)
        normal = {j for j in suggested if self.labels[j].startswith("O80")}
        others = [j for j in suggested if self.labels[j][:1] == "O" and j not in normal]
        return _reviewed(decisions, normal) if others else set()

    def _unspecified_rule(self, decisions: np.ndarray) -> set[int]:
        """A "sans précision" code and a more precise code of the same category cannot both be
        right ("FA sans précision" I48.9 beside "FA paroxystique" I48.0; a DIM codes what the
        record says, no vaguer): the vaguer one is sent to review, not auto-coded. Precision
        reads the label ("sans précision") and CIM-10's fourth character 9 ("unspecified"):
        J18.9 "pneumopathie, sans précision" is vaguer than J18.1 "pneumopathie lobaire, sans
        précision" (of the germ)."""
        suggested = _suggested(decisions)
        by_category: dict[str, list[int]] = {}
        for j in suggested:
            by_category.setdefault(self.labels[j][:3], []).append(j)
        out: set[int] = set()
        for members in by_category.values():
            if len(members) < 2:
                continue
            finest = max(self._precision(j) for j in members)
            out.update(j for j in members if self._precision(j) < finest and self._unspecified[j])
        return _reviewed(decisions, out)

    def _precision(self, j: int) -> int:
        """`Concept.precision` (0 for a code the terminology does not know)."""
        concept = self._concepts[j]
        return 0 if concept is None else concept.precision

    def _subdivided_rule(self, decisions: np.ndarray) -> set[int]:
        """A code the PMSI still accepts although CIM-10 FR subdivides it (F10.2 beside the
        ATIH's F10.20 ... F10.26, M06.9 beside its sites) says less than the record usually
        does: a DIM codes at the finest level the record supports, so such a code is sent to
        review, not auto-coded (on data/hospital-dev, the hybrid auto-coded 6 of them, all
        where the DIM coded a subdivision)."""
        out = {j for j in _suggested(decisions) if self._subdivided(j)}
        return _reviewed(decisions, out)

    def _subdivided(self, j: int) -> bool:
        got = self._has_children.get(j)
        if got is None:
            try:
                got = bool(self.terminology.children(self.labels[j]))
            except TerminologyError:  # a code of another edition: nothing known below it
                got = False
            self._has_children[j] = got
        return got

    def _codable_descendants(self, j: int) -> list[int]:
        got = self._descendants.get(j)
        if got is None:
            got = []
            frontier = [self.labels[j]]
            while frontier:
                frontier = [kid for c in frontier for kid in self.terminology.children(c)]
                got += [k for kid in frontier if (k := self._label_index.get(kid)) is not None
                        and self._codable[k]]
            self._descendants[j] = got
        return got

    def _principal(
        self, pool: list[int], probs: np.ndarray, context: _Context | None,
        less_precise: set[int] | None = None, finer: dict[int, int] | None = None,
    ) -> tuple[int | None, int | None]:
        """The DP (and DR when the DP is a Z51 session) among `pool`, ranked codes.

        With a model that knows where each code is written (the hybrid), the DP is the code
        the ATIH guide's logic puts first (conclusion and motif first, a symptom explained by a
        diagnosis is not DP), the probability breaking ties; otherwise the most probable code
        allowed as DP. A code less
        precise than another suggested one (`less_precise`: "sans précision" beside a specified
        sibling) weighs `DP_LESS_PRECISE` as much: the DP is coded at the finest level; a code
        the report makes precise (`finer`: finer -> vaguer) competes with the vaguer one's
        probability and place.
        """
        allowed = [j for j in pool if self._allowed_dp[j]]
        if not allowed:
            return None, None
        precise = finer or {}
        codes = [self.labels[j] for j in allowed] + [self.labels[precise[j]] for j in allowed if j in precise]
        weights = context.dp_weights(list(dict.fromkeys(codes))) if context is not None else {}
        vaguer = less_precise or set()

        def weight(j: int) -> float:
            w = weights.get(self.labels[j], 1.0)
            if j in precise:  # the same diagnosis, made precise: the vaguer code's place too
                w = max(w, weights.get(self.labels[precise[j]], 1.0))
            return w * DP_LESS_PRECISE if j in vaguer else w

        def probability(j: int) -> float:
            return max(probs[j], probs[precise[j]]) if j in precise else probs[j]

        dp = max(allowed, key=lambda j: (weight(j), probability(j), -allowed.index(j)))
        dr = None
        if self.labels[dp].startswith("Z51"):
            dr = next(
                (j for j in pool if j != dp and self.labels[j][:1] in "CD" and self._allowed_dr[j]),
                None,
            )
        return dp, dr

    @staticmethod
    def _flags(concept: Any) -> list[str]:
        if concept is None:
            return [FLAG_UNKNOWN]
        flags = []
        if concept.deleted:
            flags.append(FLAG_DELETED)
        r = concept.restrictions
        if r is not None:
            if not r.codable:
                flags.append(FLAG_NOT_CODABLE)
            elif r.external_cause:
                flags.append(FLAG_EXTERNAL_CAUSE)
            else:
                if not r.allowed_dp:
                    flags.append(FLAG_NOT_DP)
                if not r.allowed_dr:
                    flags.append(FLAG_NOT_DR)
        return flags


@dataclass(frozen=True)
class _Context:
    """What a scoring pass knows of report i beyond scores (the hybrid's mentions)."""

    index: Any
    i: int

    @classmethod
    def of(cls, index: Any, i: int) -> _Context | None:
        if index is None or not hasattr(index, "dp_weights"):
            return None
        return cls(index, i)

    def flags(self, codes: list[str]) -> dict[str, list[str]]:
        return self.index.flags(self.i, codes)

    def dp_weights(self, codes: list[str]) -> dict[str, float]:
        return self.index.dp_weights(self.i, codes)

    def affirmed(self, codes: list[str]) -> set[str]:
        return self.index.affirmed(self.i, codes)

    def combined(self, codes: list[str]) -> dict[str, tuple[str, str]]:
        combined = getattr(self.index, "combined", None)
        return {} if combined is None else combined(self.i, codes)

    def explained(self, codes: list[str]) -> set[str]:
        explained = getattr(self.index, "explained", None)
        return set() if explained is None else explained(self.i, codes)

    def named(self, codes: list[str]) -> set[str]:
        """Codes an affirmed mention of the code itself supports."""
        named = getattr(self.index, "named", None)
        return set() if named is None else named(self.i, codes)

    def concluded(self, codes: list[str]) -> set[str]:
        concluded = getattr(self.index, "concluded", None)
        return set() if concluded is None else concluded(self.i, codes)


_DIABETES = {"E10", "E11", "E12", "E13", "E14"}


def _suggested(decisions: np.ndarray) -> list[int]:
    """Columns sent to auto or review."""
    return [int(j) for j in np.flatnonzero(decisions != "reject")]


def _reviewed(decisions: np.ndarray, codes: set[int]) -> set[int]:
    """Send `codes` to review where they were auto-coded (in place); `codes` back."""
    for j in codes:
        if decisions[j] == "auto":
            decisions[j] = "review"
    return codes


def _decision(value: Any) -> Decision:
    text = str(value)
    if text not in DECISIONS:
        raise PredictorError(f"the decision policy returned an unknown decision {text!r}")
    return text


def prediction_json(prediction: StayPrediction) -> str:
    """One `cimcoder predict` line (no trailing newline), UTF-8 text kept readable."""
    return json.dumps(prediction.model_dump(mode="json"), ensure_ascii=False)
