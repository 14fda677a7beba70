"""The hybrid coder: lexicon mentions with their qualifiers, learned vocabulary, TF-IDF +
logistic regression and its nearest training stays, reranked by gradient-boosted trees.

Why: each component alone finds a fraction of a DIM's codes. Mentions know how clinicians
write (the ATIH labels, CIM-11 titles, a curated file of abbreviations and synonyms) and
whether a diagnosis is denied, hypothetical, a relative's or past history, but not which
mentions a DIM codes; TF-IDF learns which codes a report's words go with, but reads "pas
d'embolie pulmonaire" as evidence of embolism. The reranker sees both, per (stay, code).

Fitting (`fit(texts, code_lists)`, training stays only; dev is never seen):
1. mentions of every training report (`cimcoder.training.mentions`);
2. K folds of the training stays: on each, TF-IDF + LR, the nearest-neighbour votes, the
   learned phrases and the code frequencies are fitted on the other folds and applied to it,
   so the reranker learns from component scores as they will look on new reports;
3. candidates per stay (mentioned codes and their hierarchy neighbours, the components' top
   codes) and their features; a HistGradientBoostingClassifier learns P(code is coded);
4. the components are refitted on all training stays for inference.

Safety: a code whose every mention (of the code, a more specific or a more general code) is
negated, hypothetical, a relative's, past history or reported speech is never auto-coded,
nor is anything in a report without a single affirmed mention (garbage, empty, foreign text);
`auto_requires_mention: true` also withholds codes that no mention of the code itself or of a
more specific code supports (a mention of W19 "chute" does not say which W19.xx). The answer flags why
("mention niée", ...). `predict_scores_and_vetoes` returns that veto matrix with the scores;
the policy applies it in evaluation as in the predictor.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cimcoder import folds
from cimcoder.errors import CimcoderError
from cimcoder.run_folder import LABELS_FILE
from cimcoder.training.registry import register_model

if TYPE_CHECKING:
    from cimcoder.training.config import RunConfig
    from cimcoder.training.labels import LabelSpace
    from cimcoder.training.mentions import Mention, MentionExtractor

logger = logging.getLogger(__name__)

MODEL_FILE = "hybrid.joblib"
PHRASES_FILE = "learned_phrases.tsv"
FEATURES_FILE = "reranker_features.json"
# Scores of codes that are no candidate: the TF-IDF score scaled below any reranker output,
# so the ranking keeps TF-IDF's order there (MAP) without competing with candidates.
NON_CANDIDATE_SCALE = 1e-3
FLAG_NO_MENTION = "aucune mention dans le texte : suggéré par les séjours codés semblables"
# Stays with a known DP among their candidates needed to learn the DP choice.
MIN_DP_STAYS = 20


class HybridError(CimcoderError):
    """The hybrid coder cannot be built, fitted or loaded."""


class HybridParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folds: int = Field(3, ge=2, le=10, description="Cross-fitting folds on train for the "
                       "reranker's component scores (each component refitted per fold).")
    tfidf: dict[str, Any] = Field(
        default_factory=lambda: {"max_iter": 150},
        description="Parameters of the TF-IDF + LR component (as model.params of tfidf_lr).",
    )
    tfidf_top_k: int = Field(20, ge=0, description="TF-IDF's top codes added as candidates.")
    knn_k: int = Field(10, ge=1, description="Nearest training stays voting for codes.")
    knn_top_k: int = Field(15, ge=0, description="Nearest-neighbour top codes added as candidates.")
    learned_vocabulary: bool = Field(True, description="Mine phrases from the coded stays.")
    curated_lexicon: bool = Field(True, description="Use the shipped curated lexicon files.")
    label_terms: bool = Field(True, description="Match the terminology's own labels.")
    cim11_titles: bool = Field(True, description="Match French CIM-11 titles (via the crosswalk).")
    fuzzy: bool = Field(False, description="Also match long label terms approximately (simstring).")
    max_candidates: int = Field(80, ge=5, description="Candidates kept per stay (by first score).")
    auto_requires_mention: bool = Field(
        False,
        description="Never auto-code a code without an affirmed mention of itself or of a more "
        "specific code (True), or only codes whose mentions are all qualified away (False). Either way, nothing is "
        "auto-coded in a report without a single affirmed mention (garbage, empty, foreign).",
    )
    max_iter: int = Field(300, ge=10, description="Boosting iterations of the reranker.")
    learning_rate: float = Field(0.06, gt=0, le=1, description="Reranker learning rate.")
    max_leaf_nodes: int = Field(31, ge=4, description="Reranker tree size.")
    min_samples_leaf: int = Field(30, ge=1, description="Reranker minimum samples per leaf.")
    l2_regularization: float = Field(1.0, ge=0, description="Reranker L2 regularisation.")


def _parse(raw: dict[str, Any]) -> HybridParams:
    from cimcoder.training.baselines import _parse_params

    params: HybridParams = _parse_params(HybridParams, raw, "hybrid", HybridError)
    return params


# ============================================================================ features

_KINDS = ("abbreviation", "synonym", "variant", "eponym", "label", "label_variant", "cim11",
          "measurement", "fuzzy", "treatment")
_SECTIONS = ("motif", "conclusion", "evolution", "histoire", "antecedents", "examen",
             "examens_complementaires", "traitement_entree", "traitement_sortie", "autre")
FEATURES: tuple[str, ...] = (
    "tfidf", "tfidf_logit", "tfidf_rank", "knn", "knn_rank",
    "n_direct", "n_affirmed", "n_negated", "n_hypothesis", "n_family", "n_history",
    "n_reported", "all_unaffirmed",
    *(f"kind_{k}" for k in _KINDS),
    *(f"section_{s}" for s in _SECTIONS),
    "first_affirmed_pos", "longest_affirmed", "n_affirmed_codes_in_mention",
    "n_desc_affirmed", "n_desc_unaffirmed", "n_anc_affirmed", "n_anc_unaffirmed",
    "n_sibling_affirmed", "has_more_specific_affirmed",
    "learned_hits", "learned_precision", "learned_npmi", "learned_aligned",
    "log_train_count", "codable", "depth", "chapter", "symptom", "z_code", "allowed_dp",
    "log_chars", "stay_affirmed_codes", "stay_mentions",
    "n_still_current", "report_sections",
    "conclusion_order", "motif_order", "admission_cue",
)
_F = {name: i for i, name in enumerate(FEATURES)}
_CHAPTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class _StayView:
    """What the features of one stay are computed from."""

    text: str
    mentions: list[Mention]
    tfidf: np.ndarray  # [L] probabilities
    knn: np.ndarray  # [L] neighbour votes in [0, 1]
    learned: dict[int, tuple[int, float, float, bool]]  # col -> (hits, precision, npmi, aligned)
    by_code: dict[str, list[Mention]] = field(default_factory=dict)
    candidates: dict[int, np.ndarray] = field(default_factory=dict)  # col -> features (scored)

    def rows(self, space: LabelSpace, codes: Sequence[str]) -> dict[str, np.ndarray]:
        """Feature rows of the scored candidates among `codes`."""
        return {c: x for c in codes if c in space
                if (x := self.candidates.get(space.index(c))) is not None}


@dataclass
class _Hierarchy:
    """Label-space neighbours of codes, from the terminology (cached per code)."""

    space: LabelSpace
    terminology: Any
    _anc: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _kids: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def ancestors(self, code: str) -> tuple[str, ...]:
        got = self._anc.get(code)
        if got is None:
            try:
                chain = self.terminology.ancestors(code)
            except Exception:
                chain = []
            got = tuple(a for a in chain if a in self.space)
            self._anc[code] = got
        return got

    def descendants(self, code: str) -> tuple[str, ...]:
        """Label-space codes under `code` (children, and theirs), nearest first."""
        got = self._kids.get(code)
        if got is None:
            out: list[str] = []
            frontier = [code]
            try:
                while frontier:
                    nxt = []
                    for c in frontier:
                        for k in self.terminology.children(c):
                            nxt.append(k)
                            if k in self.space:
                                out.append(k)
                    frontier = nxt
            except Exception:
                out = []
            got = tuple(out)
            self._kids[code] = got
        return got


def _rank(scores: np.ndarray) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(scores), dtype=np.int64)
    rank[order] = np.arange(len(scores))
    return rank


class _CodeInfo:
    """Per-label static features: frequency, hierarchy depth, chapter, PMSI restrictions."""

    def __init__(self, space: LabelSpace, terminology: Any, counts: dict[str, int]) -> None:
        n = len(space)
        self.log_count = np.array([math.log1p(counts.get(c, 0)) for c in space.codes])
        self.codable = np.ones(n)
        self.allowed_dp = np.ones(n)
        self.depth = np.array([len(c.replace(".", "").replace("+", "")) for c in space.codes], float)
        self.chapter = np.array([_CHAPTERS.find(c[:1].upper()) for c in space.codes], float)
        self.symptom = np.array([c[:1] == "R" for c in space.codes], float)
        self.z_code = np.array([c[:1] == "Z" for c in space.codes], float)
        for j, code in enumerate(space.codes):
            concept = terminology.get(code)
            r = getattr(concept, "restrictions", None) if concept is not None else None
            if r is not None:
                self.codable[j] = float(r.codable)
                self.allowed_dp[j] = float(r.allowed_dp)


def _mention_groups(view: _StayView, hier: _Hierarchy) -> tuple[dict, dict]:
    """Mentions under each ancestor of a mentioned code (for 'more specific' evidence)."""
    by_anc: dict[str, list[Mention]] = defaultdict(list)
    for code, ms in view.by_code.items():
        for a in hier.ancestors(code):
            by_anc[a].extend(ms)
    return view.by_code, by_anc


# "Hospitalisé pour ...", "admise pour ...", "pris en charge pour ...": the reason for the stay,
# as French discharge letters state it (ATIH guide: the DP is the reason for the stay).
_ADMISSION = re.compile(
    r"(?i)\b(?:hospitalis[ée]e?s?|hospitalisation|admise?s?|admission|adress[ée]e?s?|"
    r"prise? en charge|transf[ée]r[ée]e?s?|entr[ée]es?|consulte|se pr[ée]sente)\b"
    r"[^\n]{0,80}?\bpour\b[^.\n]{0,40}$"
)
_NOT_IN_SECTION = 9.0  # order feature of a code not written in that section
_MAX_CODES_NAMED = 2  # codes of one category a phrase may name and still say which (a pair)


def _span_codes(mentions: Sequence[Mention]) -> dict[tuple[int, int], set[str]]:
    """Every code named on each span (a phrase may name several: dagger and asterisk, sites)."""
    out: dict[tuple[int, int], set[str]] = defaultdict(set)
    for m in mentions:
        out[(m.start, m.end)].update(m.codes)
    return out


def _says_which(span_codes: dict[tuple[int, int], set[str]], m: Mention, code: str) -> bool:
    """The phrase of `m` names at most `_MAX_CODES_NAMED` codes of `code`'s category: "chute"
    names all twenty W19.xx, and so none of them."""
    return sum(c[:3] == code[:3] for c in span_codes[(m.start, m.end)]) <= _MAX_CODES_NAMED


def _admission_cue(text: str, start: int) -> bool:
    return _ADMISSION.search(text, max(0, start - 140), start) is not None


def _section_order(mentions: Sequence[Mention], section: str) -> dict[int, int]:
    """Order of each affirmed phrase (by start) written in `section`: 0 for the first."""
    starts = sorted({m.start for m in mentions if m.section == section and m.affirmed})
    return {start: rank for rank, start in enumerate(starts)}


def candidates_and_features(
    view: _StayView,
    space: LabelSpace,
    hier: _Hierarchy,
    info: _CodeInfo,
    params: HybridParams,
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Candidate columns of one stay, their features [c, F] and the veto flag of each."""
    by_code, by_anc = _mention_groups(view, hier)
    cands: dict[int, float] = {}

    def add(code: str, prior: float) -> None:
        if code in space:
            j = space.index(code)
            cands[j] = max(cands.get(j, 0.0), prior)

    for code, ms in by_code.items():
        weight = 2.0 + any(m.affirmed for m in ms)
        add(code, weight)
        for a in hier.ancestors(code):
            add(a, weight - 0.5)
        for d in hier.descendants(code):
            add(d, weight - 1.0)
    for j in np.argsort(-view.tfidf, kind="stable")[: params.tfidf_top_k]:
        cands[int(j)] = max(cands.get(int(j), 0.0), float(view.tfidf[j]))
    for j in np.argsort(-view.knn, kind="stable")[: params.knn_top_k]:
        if view.knn[j] > 0:
            cands[int(j)] = max(cands.get(int(j), 0.0), float(view.knn[j]))
    for j in view.learned:
        cands[j] = max(cands.get(j, 0.0), 1.0)
    cols = sorted(cands, key=lambda j: (-cands[j], j))[: params.max_candidates]

    tf_rank = _rank(view.tfidf)
    knn_rank = _rank(view.knn)
    n_chars = max(len(view.text), 1)
    affirmed_codes = {c for c, ms in by_code.items() if any(m.affirmed for m in ms)}
    # Hospital letters have headed sections (motif, antécédents, conclusion); case reports not.
    n_sections = len({m.section for ms in by_code.values() for m in ms} - {"autre"})
    span_codes = _span_codes(view.mentions)

    conclusion = _section_order(view.mentions, "conclusion")
    motif = _section_order(view.mentions, "motif")
    cued = {m.start for m in view.mentions if m.affirmed and _admission_cue(view.text, m.start)}
    x = np.zeros((len(cols), len(FEATURES)), dtype=np.float32)
    veto = np.zeros(len(cols), dtype=bool)
    for r, j in enumerate(cols):
        code = space.codes[j]
        row = x[r]
        p = float(view.tfidf[j])
        row[_F["tfidf"]] = p
        row[_F["tfidf_logit"]] = math.log(max(p, 1e-6) / max(1 - p, 1e-6))
        row[_F["tfidf_rank"]] = math.log1p(tf_rank[j])
        row[_F["knn"]] = view.knn[j]
        row[_F["knn_rank"]] = math.log1p(knn_rank[j]) if view.knn[j] > 0 else 8.0
        direct = by_code.get(code, [])
        affirmed = [m for m in direct if m.affirmed]
        row[_F["n_direct"]] = len(direct)
        row[_F["n_affirmed"]] = len(affirmed)
        row[_F["n_negated"]] = sum(m.negated for m in direct)
        row[_F["n_hypothesis"]] = sum(m.hypothesis for m in direct)
        row[_F["n_family"]] = sum(m.family for m in direct)
        row[_F["n_history"]] = sum(m.history for m in direct)
        row[_F["n_reported"]] = sum(m.reported for m in direct)
        for m in affirmed:
            if m.kind in _KINDS:
                row[_F[f"kind_{m.kind}"]] += 1
            section = m.section if m.section in _SECTIONS else "autre"
            row[_F[f"section_{section}"]] += 1
        if affirmed:
            row[_F["first_affirmed_pos"]] = min(m.start for m in affirmed) / n_chars
            row[_F["longest_affirmed"]] = max(m.end - m.start for m in affirmed)
            row[_F["n_affirmed_codes_in_mention"]] = min(len(m.codes) for m in affirmed)
        else:
            row[_F["first_affirmed_pos"]] = 1.5
        desc = by_anc.get(code, [])
        anc = [m for a in hier.ancestors(code) for m in by_code.get(a, [])]
        row[_F["n_desc_affirmed"]] = sum(m.affirmed for m in desc)
        row[_F["n_desc_unaffirmed"]] = sum(not m.affirmed for m in desc)
        row[_F["n_anc_affirmed"]] = sum(m.affirmed for m in anc)
        row[_F["n_anc_unaffirmed"]] = sum(not m.affirmed for m in anc)
        category = code[:3]
        row[_F["n_sibling_affirmed"]] = sum(
            1 for c in affirmed_codes if c != code and c[:3] == category
        )
        row[_F["has_more_specific_affirmed"]] = float(any(m.affirmed for m in desc))
        related = direct + desc + anc
        row[_F["all_unaffirmed"]] = float(bool(related) and not any(m.affirmed for m in related))
        hits = view.learned.get(j)
        if hits is not None:
            row[_F["learned_hits"]] = hits[0]
            row[_F["learned_precision"]] = hits[1]
            row[_F["learned_npmi"]] = hits[2]
            row[_F["learned_aligned"]] = float(hits[3])
        row[_F["log_train_count"]] = info.log_count[j]
        row[_F["codable"]] = info.codable[j]
        row[_F["depth"]] = info.depth[j]
        row[_F["chapter"]] = info.chapter[j]
        row[_F["symptom"]] = info.symptom[j]
        row[_F["z_code"]] = info.z_code[j]
        row[_F["allowed_dp"]] = info.allowed_dp[j]
        row[_F["log_chars"]] = math.log1p(len(view.text))
        row[_F["stay_affirmed_codes"]] = len(affirmed_codes)
        row[_F["stay_mentions"]] = sum(len(ms) for ms in by_code.values())
        row[_F["n_still_current"]] = sum(m.still_current for m in affirmed)
        row[_F["report_sections"]] = n_sections
        related_affirmed = [m for m in related if m.affirmed]
        row[_F["conclusion_order"]] = min(
            (conclusion[m.start] for m in related_affirmed if m.start in conclusion), default=_NOT_IN_SECTION)
        row[_F["motif_order"]] = min(
            (motif[m.start] for m in related_affirmed if m.start in motif), default=_NOT_IN_SECTION)
        row[_F["admission_cue"]] = sum(m.start in cued for m in related_affirmed)
        if params.auto_requires_mention:
            # Auto-coding needs the code itself (or a more specific one) written, by a phrase
            # that says which: "chute" names W19, or all twenty W19.xx (place, activity) at
            # once, and so none of them.
            veto[r] = not any(m.affirmed and _says_which(span_codes, m, code) for m in direct + desc)
        else:
            veto[r] = bool(related) and not related_affirmed
        if code[:1] == "Z" and related_affirmed and all(m.kind == "treatment" for m in related_affirmed):
            # A status read from a drug's name (apixaban -> Z92.1, long-term anticoagulation):
            # whether the PMSI codes it is the DIM's call (long-term or not, relevant to the
            # stay), never the model's alone.
            veto[r] = True
    if not affirmed_codes:  # nothing affirmed in the whole report: nothing is auto-coded
        veto[:] = True
    return cols, x, veto


# ============================================================================ components


class _TextComponents:
    """TF-IDF + LR and its nearest neighbours, fitted on one set of stays."""

    def __init__(self, space: LabelSpace, tfidf_params: dict[str, Any], seed: int) -> None:
        from cimcoder.training.baselines import TfidfLrParams, TfidfLrScorer

        self.space = space
        self.lr = TfidfLrScorer(space, TfidfLrParams.model_validate(tfidf_params), seed=seed)
        self.train_y: Any = None  # CSR [n_train, L]

    def fit(self, texts: Sequence[str], code_lists: Sequence[Sequence[str]]) -> _TextComponents:
        from scipy import sparse

        self.lr.fit(texts, code_lists)
        rows = self.space.encode(code_lists)
        self.train_y = sparse.csr_matrix(np.asarray(rows, dtype=np.float32).reshape(len(rows), len(self.space)))
        return self

    def scores(self, texts: Sequence[str], knn_k: int) -> tuple[np.ndarray, np.ndarray]:
        """TF-IDF + LR probabilities and neighbour votes, both [n, L]."""
        lr = self.lr
        if lr.constant is None or lr.alpha is None or lr.intercepts is None:
            raise HybridError("the TF-IDF component is not fitted")
        out_lr = np.zeros((len(texts), len(self.space)), dtype=np.float32)
        out_knn = np.zeros_like(out_lr)
        const = ~np.isnan(lr.constant)
        for start in range(0, len(texts), 64):
            chunk = list(texts[start : start + 64])
            x = lr._features(chunk)
            gram = np.asarray((x @ lr.train_x.T).todense(), dtype=np.float32)
            logits = gram @ lr.alpha + lr.intercepts
            p = 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))
            p[:, const] = lr.constant[const]
            out_lr[start : start + len(chunk)] = p
            # Cosine similarity (rows are L2-normalised per block: two blocks -> max 2).
            k = min(knn_k, gram.shape[1])
            top = np.argpartition(-gram, k - 1, axis=1)[:, :k]
            for r in range(gram.shape[0]):
                sims = gram[r, top[r]] / 2.0
                weights = np.maximum(sims, 0.0)
                total = float(weights.sum()) or 1.0
                votes = np.asarray(self.train_y[top[r]].T @ weights).ravel() / total
                out_knn[start + r] = votes
        return out_lr, out_knn


def _phrase_table(phrases: Sequence[Any], space: LabelSpace) -> dict[str, list[tuple[int, float, float, bool]]]:
    table: dict[str, list[tuple[int, float, float, bool]]] = defaultdict(list)
    for p in phrases:
        if p.code in space:
            table[p.phrase].append((space.index(p.code), p.precision, p.npmi, p.aligned))
    return dict(table)


def _learned_hits(text: str, table: dict[str, list[tuple[int, float, float, bool]]],
                  max_ngram: int = 4) -> dict[int, tuple[int, float, float, bool]]:
    from cimcoder.training.vocabulary import candidate_phrases

    out: dict[int, tuple[int, float, float, bool]] = {}
    if not table:
        return out
    for phrase in candidate_phrases(text, max_ngram) & table.keys():
        for j, prec, npmi, aligned in table[phrase]:
            n, p0, q0, a0 = out.get(j, (0, 0.0, -1.0, False))
            out[j] = (n + 1, max(p0, prec), max(q0, npmi), a0 or aligned)
    return out


def _label_texts(space: LabelSpace, terminology: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for code in space.codes:
        concept = terminology.get(code)
        if concept is not None:
            out[code] = [t for t in {concept.label, concept.long_label} if t]
    return out


def _fold_of(key: str, k: int, seed: int) -> int:
    # Keyed by the group when fit() is given one (patient, template), else by the text.
    return folds.fold(f"cimcoder-hybrid-{seed}", key, k)


def _targets(
    code_lists: Sequence[Sequence[str]], space: LabelSpace, hier: _Hierarchy, info: _CodeInfo
) -> tuple[list[set[int]], list[set[int]]]:
    """Gold columns per stay, and the codable refinements of gold codes that CIM-10 FR
    forbids (E11.9 in a WHO-coded corpus: E11.98 or E11.90 is what a DIM codes). A refinement
    counts as right only where the report names it itself (`_label`): the siblings a mention of
    the parent brings along are not all right."""
    gold: list[set[int]] = []
    refined: list[set[int]] = []
    for codes in code_lists:
        cols: set[int] = set()
        kids: set[int] = set()
        for code in codes:
            if code not in space:
                continue
            j = space.index(code)
            cols.add(j)
            if not info.codable[j]:
                kids.update(space.index(d) for d in hier.descendants(code) if info.codable[space.index(d)])
        gold.append(cols)
        refined.append(kids - cols)
    return gold, refined


def _label(cols: list[int], x: np.ndarray, gold: set[int], refined: set[int]) -> np.ndarray:
    named = x[:, _F["n_affirmed"]] > 0
    return np.array([j in gold or (j in refined and bool(named[r])) for r, j in enumerate(cols)])


# ============================================================================ the model


@dataclass
class HybridEvidence:
    """Evidence, flags and vetoes of scored reports, from the mentions of the scoring pass."""

    scorer: HybridScorer
    texts: list[str]
    views: list[_StayView]
    vetoes: np.ndarray  # [n, L] bool: never auto-coded
    top_k: int = 3

    def __len__(self) -> int:
        return len(self.texts)

    def _related(self, i: int, code: str) -> tuple[list[Mention], list[Mention]]:
        view = self.views[i]
        hier = self.scorer._hier()
        direct = list(view.by_code.get(code, []))
        near = [m for c, ms in view.by_code.items() if code in hier.ancestors(c) for m in ms]
        near += [m for a in hier.ancestors(code) for m in view.by_code.get(a, [])]
        return direct, near

    def spans(self, i: int, codes: Sequence[str]) -> dict[str, list[tuple[int, int]]]:
        """The mentions behind each code, affirmed first, then those of a more specific or
        more general code. A code no mention supports (found by the text components alone)
        has no evidence: its flag says so."""
        out: dict[str, list[tuple[int, int]]] = {}
        for code in codes:
            direct, near = self._related(i, code)
            ordered = sorted(direct, key=lambda m: (not m.affirmed, m.start))
            ordered += sorted(near, key=lambda m: (not m.affirmed, m.start))
            spans: list[tuple[int, int]] = []
            for m in ordered:
                span = (m.start, m.end)
                if span not in spans:
                    spans.append(span)
                if len(spans) >= self.top_k:
                    break
            out[code] = spans
        return out

    def affirmed(self, i: int, codes: Sequence[str]) -> set[str]:
        """Codes an affirmed mention supports (the code, a more specific or a more general)."""
        out = set()
        for code in codes:
            direct, near = self._related(i, code)
            if any(m.affirmed for m in direct + near):
                out.add(code)
        return out

    def named(self, i: int, codes: Sequence[str]) -> set[str]:
        """Codes an affirmed mention of the code itself supports (not a relative's), by a
        phrase that says which: one naming every site of M05.9x names none of them."""
        view = self.views[i]
        span_codes = _span_codes(view.mentions)
        return {c for c in codes
                if any(m.affirmed and _says_which(span_codes, m, c) for m in view.by_code.get(c, ()))}

    def combined(self, i: int, codes: Sequence[str]) -> dict[str, tuple[str, str]]:
        """CIM-10 combination codes the report writes: a disease among `codes` followed, in
        the same sentence, by an affirmed mention of the agent that causes it ("pneumopathie
        lobaire droite à Staphylococcus aureus": J15.2). {combination: (disease, agent)}."""
        from cimcoder.terminologies.combinations import combinations

        table = combinations(self.scorer.label_space.terminology)
        agents = table.agents()
        view = self.views[i]
        diseases = sorted((m for m in view.mentions if m.affirmed and set(codes) & set(m.codes)),
                          key=lambda m: m.start)
        found = sorted((m for m in view.mentions if m.affirmed and agents & set(m.codes)),
                       key=lambda m: m.start)
        out: dict[str, tuple[str, str]] = {}
        for d in diseases:
            for a in found:
                if not _follows_in_sentence(view.text, d, a, _SAME_PHRASE_CHARS):
                    continue
                for disease in (c for c in d.codes if c in codes):
                    for agent in (c for c in a.codes if c in agents):
                        combination = table.combination(disease, agent)
                        if combination is not None:
                            out.setdefault(combination, (disease, agent))
        return out

    def explained(self, i: int, codes: Sequence[str]) -> set[str]:
        """Codes among `codes` the report writes with their cause, also among them
        ("hypothyroïdie par thyroïdite d'Hashimoto": E03.9 explained by E06.3)."""
        return set(_causal_links(self.views[i], codes, self.scorer.concept))

    def flags(self, i: int, codes: Sequence[str]) -> dict[str, list[str]]:
        """French flags: why a code's mentions do not count (all qualified away), or that no
        mention supports it (suggested by similar coded reports only)."""
        out: dict[str, list[str]] = {}
        for code in codes:
            direct, near = self._related(i, code)
            related = direct + near
            if not related:
                out[code] = [FLAG_NO_MENTION]
            elif not any(m.affirmed for m in related):
                out[code] = sorted({r for m in related if (r := m.reason()) is not None})
        return out

    def concluded(self, i: int, codes: Sequence[str]) -> set[str]:
        """Codes the report states as its conclusion or the reason for the stay (affirmed)."""
        rows = self.views[i].rows(self.scorer.label_space, codes)
        return {c for c, x in rows.items() if _stated(x)}

    def dp_weights(self, i: int, codes: Sequence[str]) -> dict[str, float]:
        """How much each code looks like the principal diagnosis: a model learned from
        role-labelled hospital stays when the training had some, else the ATIH guide's logic
        (`_guide_dp_weights`)."""
        view = self.views[i]
        model = self.scorer.dp_model
        if model is not None:  # learned from role-labelled stays
            rows = view.rows(self.scorer.label_space, codes)
            known = list(rows)
            out = dict.fromkeys(codes, 0.05)
            if known:
                p = model.predict_proba(np.stack([rows[c] for c in known]))[:, 1]
                out.update({c: float(v) for c, v in zip(known, p, strict=True)})
            # The DP must be written in the record: a code no affirmed mention supports (found
            # by similar reports only) is a DP of last resort, whatever the model learned.
            documented = self.affirmed(i, codes)
            return {c: w if c in documented else 0.2 * w for c, w in out.items()}
        links = _causal_links(view, codes, self.scorer.concept)
        return _guide_dp_weights(view, self.scorer.label_space, codes, self.affirmed(i, codes), links)


# The ATIH guide's DP, read from where each code is written: the first diagnosis of the
# conclusion, the reason given for the stay ("hospitalisé pour ..."), the motif. A treated
# chronic disease listed in the antécédents is a DAS of the stay, a symptom is no DP when a
# diagnosis written there explains it, and a status code (Z, but the Z51 sessions) is no DP.
# On 60 hand-written hospital reports (data/hospital-dev) this picks the right DP among the
# suggestions in 26 of 60 reports where a DP model learned from synthetic stays picked 16.
_DP_CONCLUSION = (4.0, 2.0, 1.2)  # first, second, later phrase of the conclusion
_DP_MOTIF_FIRST = 2.0
_DP_ADMISSION = 3.0
_DP_CHRONIC_IN_HISTORY = 0.3
_DP_UNDOCUMENTED = 0.2
_DP_EXPLAINED_SYMPTOM = 0.25
_DP_STATUS = 0.3
_DP_NOT_CANDIDATE = 0.05


def _stated(x: np.ndarray) -> bool:
    """Written (affirmed) in the conclusion or as the reason for the stay."""
    return bool(x[_F["conclusion_order"]] < _NOT_IN_SECTION or x[_F["admission_cue"]] > 0)


# "Décompensation ascitique d'une cirrhose", "hypothyroïdie par thyroïdite d'Hashimoto",
# "colique néphrétique secondaire à un calcul": the phrase names a manifestation, then its
# cause. The ATIH guide codes the cause as DP when the manifestation is a symptom (chapter
# XVIII) or an unspecified form of a disease of the cause's own chapter. Symptoms take any
# link ("de", "sur": the disease beneath); an unspecified disease only an explicitly causal one
# ("décompensation cardiaque sur FA" stays a heart failure).
_CAUSAL = r"par|secondaires?\s+(?:à|a)|d[ûu]e?s?\s+(?:à|a)|d'origine|en\s+rapport\s+avec|li[ée]e?s?\s+(?:à|a)"
_ANY_LINK = rf"{_CAUSAL}|sur|dans\s+le\s+cadre\s+d['eu]|compliquant|de|d'|du|des"
_DETERMINER = r"(?:(?:une?|la|le|les|l')\s*)?"
_SAME_PHRASE_CHARS = 80  # a disease and its agent: "pneumopathie lobaire droite à S. aureus"
_CAUSE_GAP_CHARS = 60  # a manifestation and its cause: "hypothyroïdie profonde par thyroïdite"
_SENTENCE_END = re.compile(r"[.;:\n]")


def _follows_in_sentence(text: str, a: Mention, b: Mention, max_gap: int) -> bool:
    """`b` starts after `a` ends, at most `max_gap` characters on, in the same sentence."""
    gap = text[a.end:b.start]
    return b.start >= a.end and len(gap) <= max_gap and not _SENTENCE_END.search(gap)
_LINKED = {
    strict: re.compile(
        rf"(?i)^[^.;:\n]{{0,40}}?(?<![\w'])(?:{links})\s*{_DETERMINER}$"
    )
    for strict, links in ((True, _CAUSAL), (False, _ANY_LINK))
}


def _causal_links(
    view: _StayView, codes: Sequence[str], concept: Callable[[str], Any]
) -> dict[str, str]:
    """Manifestation code -> the code of its cause, where an affirmed mention of the first is
    followed, in the same sentence, by a causal link and an affirmed mention of the second
    (both among `codes`; the cause neither a symptom nor a status code)."""
    wanted = set(codes)
    mentions = sorted(
        (m for m in view.mentions if m.affirmed and wanted.intersection(m.codes)),
        key=lambda m: (m.start, m.end),
    )
    links: dict[str, str] = {}
    for a, b in itertools.pairwise(mentions):
        if not _follows_in_sentence(view.text, a, b, _CAUSE_GAP_CHARS):
            continue
        gap = view.text[a.end:b.start]
        causes = [c for c in b.codes if c in wanted and c[:1] not in "RZ"]
        for effect in (c for c in a.codes if c in wanted and c not in links):
            symptom = effect[:1] == "R"
            known = concept(effect)
            if not symptom and (known is None or not known.unspecified):
                continue
            if not _LINKED[not symptom].match(gap):
                continue
            cause = next((c for c in causes if symptom or _same_chapter(known, concept(c))), None)
            if cause is not None and cause != effect:
                links[effect] = cause
    return links


def _same_chapter(a: Any, b: Any) -> bool:
    return a is not None and b is not None and a.chapter == b.chapter


def _place(x: np.ndarray) -> float:
    """How much where a code is written says DP: conclusion rank, first motif, admission cue."""
    w = 1.0
    order = int(x[_F["conclusion_order"]])
    if order < _NOT_IN_SECTION:
        w *= _DP_CONCLUSION[min(order, len(_DP_CONCLUSION) - 1)]
    if x[_F["motif_order"]] == 0:
        w *= _DP_MOTIF_FIRST
    if x[_F["admission_cue"]] > 0:
        w *= _DP_ADMISSION
    return w


def _guide_dp_weights(
    view: _StayView, space: LabelSpace, codes: Sequence[str], documented: set[str],
    links: dict[str, str] | None = None,
) -> dict[str, float]:
    """`links`: manifestation -> cause (`_causal_links`): the cause takes the manifestation's
    place when it is the better one, the manifestation keeps none."""
    rows = view.rows(space, codes)
    links = {e: c for e, c in (links or {}).items() if e in rows and c in rows}
    explained = any(c[:1] not in "RZ" and _stated(x) for c, x in rows.items())
    place = {c: _place(x) for c, x in rows.items()}
    for effect, cause in links.items():
        place[cause] = max(place[cause], place[effect])
    weights: dict[str, float] = {}
    for code in codes:
        x = rows.get(code)
        if x is None:
            weights[code] = _DP_NOT_CANDIDATE
            continue
        w = 1.0 if code in links else place[code]
        leads = place[code] >= _DP_CONCLUSION[0]  # the stay's subject: first in the conclusion
        if x[_F["n_still_current"]] > 0 and x[_F["section_antecedents"]] > 0 and not leads:
            w *= _DP_CHRONIC_IN_HISTORY
        if code not in documented:
            w *= _DP_UNDOCUMENTED
        if code in links or (code[:1] == "R" and explained):
            w *= _DP_EXPLAINED_SYMPTOM
        if code[:1] == "Z" and not code.startswith("Z51"):
            w *= _DP_STATUS
        weights[code] = w
    return weights


@functools.lru_cache(maxsize=2)
def shared_extractor(
    terminology: str, labels: bool, cim11_titles: bool, curated: bool, fuzzy: bool
) -> MentionExtractor:
    """One mention pipeline per process and setting (building it takes seconds)."""
    from cimcoder.terminologies.lexicon import load_lexicon
    from cimcoder.training.mentions import MentionExtractor

    lexicon = load_lexicon(terminology, labels=labels, cim11_titles=cim11_titles)
    if not curated:
        lexicon = type(lexicon)(lexicon.terminology, lexicon.edition, tuple(
            e for e in lexicon.entries if e.kind in ("label", "label_variant", "cim11")))
    return MentionExtractor(lexicon, fuzzy=fuzzy)


@register_model("hybrid")
class HybridScorer:
    """Mentions + learned vocabulary + TF-IDF/LR + neighbours, reranked by boosted trees."""

    model_name = "hybrid"

    def __init__(self, label_space: LabelSpace, params: HybridParams, seed: int = 13) -> None:
        self.label_space = label_space
        self.labels = list(label_space.codes)
        self.params = params
        self.seed = seed
        self.components: Any = None  # _TextComponents on all training stays
        self.phrases: list[Any] = []
        self._table: dict[str, list[tuple[int, float, float, bool]]] = {}
        self.reranker: Any = None
        self.dp_model: Any = None  # learned DP choice (role-labelled training stays only)
        self.fit_report: dict[str, Any] = {}
        self._extractor: MentionExtractor | None = None
        self._hierarchy: _Hierarchy | None = None
        self._info: _CodeInfo | None = None

    @classmethod
    def from_config(cls, config: RunConfig, label_space: LabelSpace) -> HybridScorer:
        return cls(label_space, _parse(config.model.params), seed=config.training.seed)

    # ---------------------------------------------------------------- shared pieces

    def _terminology(self) -> Any:
        from cimcoder.terminologies import load_terminology

        return load_terminology(self.label_space.terminology)

    def concept(self, code: str) -> Any:
        """The terminology's entry of a code (None: unknown to this edition)."""
        return self._terminology().get(code)

    def _hier(self) -> _Hierarchy:
        if self._hierarchy is None:
            self._hierarchy = _Hierarchy(self.label_space, self._terminology())
        return self._hierarchy

    def _code_info(self) -> _CodeInfo:
        if self._info is None:
            self._info = _CodeInfo(self.label_space, self._terminology(), self.label_space.train_counts)
        return self._info

    def warm(self) -> None:
        """Build the mention pipeline and the code tables now rather than on first use."""
        self.extractor().pipeline()
        self._hier()
        self._code_info()

    def extractor(self) -> MentionExtractor:
        if self._extractor is None:
            p = self.params
            self._extractor = shared_extractor(
                self.label_space.terminology, p.label_terms, p.cim11_titles, p.curated_lexicon, p.fuzzy
            )
        return self._extractor

    def _views(self, texts: Sequence[str], lr: np.ndarray, knn: np.ndarray,
               table: dict[str, list[tuple[int, float, float, bool]]],
               mentions: Sequence[list[Mention]] | None = None) -> list[_StayView]:
        if mentions is None:
            mentions = self.extractor().pipe(texts)
        views = []
        for i, text in enumerate(texts):
            by_code: dict[str, list[Mention]] = defaultdict(list)
            for m in mentions[i]:
                for c in m.codes:
                    by_code[c].append(m)
            learned = _learned_hits(text, table) if self.params.learned_vocabulary else {}
            views.append(_StayView(text, list(mentions[i]), lr[i], knn[i], learned, dict(by_code)))
        return views

    # ---------------------------------------------------------------- fit

    def fit(
        self,
        texts: Sequence[str],
        targets: Any,
        principal: Sequence[str | None] | None = None,
        groups: Sequence[str] | None = None,
    ) -> HybridScorer:
        """Fit on training reports and their codes; with `principal` (the DP of each stay,
        None where unknown), also learn which candidate is the DP. `groups` (a patient, the
        template of generated stays) keeps near-duplicate reports in one cross-fitting fold:
        otherwise the text components score a held-out report having seen its twin, and the
        reranker learns to trust them more than they deserve on a new report."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        from cimcoder.training.vocabulary import mine_phrases

        texts = list(texts)
        code_lists = [list(t) for t in targets]
        if len(texts) < 2 * self.params.folds:
            raise HybridError(f"hybrid needs at least {2 * self.params.folds} training reports")
        if len(code_lists) != len(texts):
            raise HybridError("hybrid.fit takes one code list per report")
        t0 = time.perf_counter()
        term = self._terminology()
        hier = self._hier()
        label_texts = _label_texts(self.label_space, term)
        mentions = self.extractor().pipe(texts)
        t_mentions = time.perf_counter() - t0
        if groups is not None and len(groups) != len(texts):
            raise HybridError("hybrid.fit takes one group per report")
        keys = list(groups) if groups is not None else texts
        folds = np.array([_fold_of(key, self.params.folds, self.seed) for key in keys])
        gold_cols, refined_cols = _targets(code_lists, self.label_space, hier, self._code_info())
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        dp_x: list[np.ndarray] = []
        dp_y: list[np.ndarray] = []
        principal = list(principal) if principal is not None else [None] * len(texts)
        n_gold = n_gold_cand = 0
        for k in range(self.params.folds):
            inside = np.flatnonzero(folds != k)
            out = np.flatnonzero(folds == k)
            if not out.size or not inside.size:
                continue
            tr_texts = [texts[i] for i in inside]
            tr_codes = [code_lists[i] for i in inside]
            comp = _TextComponents(self.label_space, self.params.tfidf, self.seed).fit(tr_texts, tr_codes)
            out_texts = [texts[i] for i in out]
            lr, knn = comp.scores(out_texts, self.params.knn_k)
            table = {}
            if self.params.learned_vocabulary:
                table = _phrase_table(mine_phrases(tr_texts, tr_codes, label_texts), self.label_space)
            counts: dict[str, int] = defaultdict(int)
            for codes in tr_codes:
                for c in set(codes):
                    counts[c] += 1
            info = _CodeInfo(self.label_space, term, counts)
            views = self._views(out_texts, lr, knn, table, [mentions[i] for i in out])
            for view, i in zip(views, out, strict=True):
                cols, x, _ = candidates_and_features(view, self.label_space, hier, info, self.params)
                gold = gold_cols[i]
                labels = _label(cols, x, gold, refined_cols[i])
                xs.append(x)
                ys.append(labels)
                dp = principal[i]
                if dp is not None and dp in self.label_space and self.label_space.index(dp) in cols:
                    # Which candidate is the DP, against the stay's DAS *and* the candidates
                    # the DIM did not code: at inference it chooses among suggestions, some wrong.
                    dp_x.append(x)
                    dp_y.append(np.array([j == self.label_space.index(dp) for j in cols]))
                n_gold += len({self.label_space.index(c) for c in code_lists[i] if c in self.label_space})
                n_gold_cand += len(gold & set(cols))
            logger.info("hybrid: fold %d/%d done (%.0fs)", k + 1, self.params.folds, time.perf_counter() - t0)
        x_all = np.concatenate(xs)
        y_all = np.concatenate(ys)
        if y_all.all() or not y_all.any():
            raise HybridError("the training stays give no positive or no negative candidate")
        p = self.params
        self.reranker = HistGradientBoostingClassifier(
            max_iter=p.max_iter, learning_rate=p.learning_rate, max_leaf_nodes=p.max_leaf_nodes,
            min_samples_leaf=p.min_samples_leaf, l2_regularization=p.l2_regularization,
            random_state=self.seed, early_stopping=False,
        ).fit(x_all, y_all)
        self.dp_model = None
        if len(dp_y) >= MIN_DP_STAYS:
            self.dp_model = HistGradientBoostingClassifier(
                max_iter=100, learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=5,
                random_state=self.seed, early_stopping=False,
            ).fit(np.concatenate(dp_x), np.concatenate(dp_y))
        t_rerank = time.perf_counter() - t0
        self.components = _TextComponents(self.label_space, self.params.tfidf, self.seed).fit(texts, code_lists)
        if self.params.learned_vocabulary:
            self.phrases = mine_phrases(texts, code_lists, label_texts)
            self._table = _phrase_table(self.phrases, self.label_space)
        self.fit_report = {
            "train_reports": len(texts),
            "folds": self.params.folds,
            "candidates": len(y_all),
            "positive_candidates": int(y_all.sum()),
            "gold_in_label_space": n_gold,
            "candidate_recall_oof": round(n_gold_cand / max(n_gold, 1), 4),
            "learned_phrases": len(self.phrases),
            "dp_model_stays": len(dp_y) if self.dp_model is not None else 0,
            "seconds": {"mentions": round(t_mentions, 1), "cross_fit_and_rerank": round(t_rerank - t_mentions, 1),
                        "total": round(time.perf_counter() - t0, 1)},
        }
        logger.info("hybrid fitted: %s", self.fit_report)
        return self

    # ---------------------------------------------------------------- score

    def _check_fitted(self) -> None:
        if self.reranker is None or self.components is None:
            raise HybridError("hybrid is not fitted (call fit() or load a run folder)")

    def _score(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[_StayView]]:
        self._check_fitted()
        texts = list(texts)
        n, n_labels = len(texts), len(self.labels)
        if not n:
            return np.zeros((0, n_labels), np.float32), np.zeros((0, n_labels), bool), []
        lr, knn = self.components.scores(texts, self.params.knn_k)
        views = self._views(texts, lr, knn, self._table)
        scores = (lr * NON_CANDIDATE_SCALE).astype(np.float32)
        vetoes = np.ones((n, n_labels), dtype=bool)
        hier, info = self._hier(), self._code_info()
        per_stay = [candidates_and_features(v, self.label_space, hier, info, self.params) for v in views]
        rows = [x for _, x, _ in per_stay if len(x)]
        # One call for every candidate of every stay: the trees' per-call overhead dominates
        # a stay's few dozen rows.
        probs = self.reranker.predict_proba(np.concatenate(rows))[:, 1] if rows else np.zeros(0)
        at = 0
        for i, (view, (cols, x, veto)) in enumerate(zip(views, per_stay, strict=True)):
            if cols:
                prob = probs[at : at + len(cols)]
                at += len(cols)
                scores[i, cols] = np.maximum(prob, NON_CANDIDATE_SCALE).astype(np.float32)
                vetoes[i, cols] = veto
                view.candidates = dict(zip(cols, x, strict=True))
        return scores, vetoes, views

    def predict_scores(self, texts: Sequence[str], batch_size: int = 8) -> np.ndarray:
        return self._score(texts)[0]

    def time_components(self, texts: Sequence[str]) -> dict[str, float]:
        """Seconds spent by each component scoring `texts` (the benchmark's breakdown)."""
        self._check_fitted()
        texts = list(texts)
        out: dict[str, float] = {}
        t = time.perf_counter()
        lr, knn = self.components.scores(texts, self.params.knn_k)
        out["tfidf_lr + knn"] = time.perf_counter() - t
        t = time.perf_counter()
        mentions = self.extractor().pipe(texts)
        out["mentions (edsnlp)"] = time.perf_counter() - t
        t = time.perf_counter()
        views = self._views(texts, lr, knn, self._table, mentions)
        out["learned vocabulary"] = time.perf_counter() - t
        t = time.perf_counter()
        hier, info = self._hier(), self._code_info()
        for view in views:
            cols, x, _ = candidates_and_features(view, self.label_space, hier, info, self.params)
            if cols:
                self.reranker.predict_proba(x)
        out["features + reranker"] = time.perf_counter() - t
        return out

    def predict_scores_and_vetoes(self, texts: Sequence[str], batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Scores [n, L] and the codes never to auto-code [n, L] (no affirmed mention)."""
        scores, vetoes, _ = self._score(texts)
        return scores, vetoes

    def predict_scores_with_evidence(
        self, texts: Sequence[str], batch_size: int = 8, top_k: int = 3
    ) -> tuple[np.ndarray, HybridEvidence]:
        scores, vetoes, views = self._score(texts)
        return scores, HybridEvidence(self, list(texts), views, vetoes, top_k)

    def predict_scores_with_context(
        self, texts: Sequence[str], batch_size: int = 8
    ) -> tuple[np.ndarray, HybridEvidence]:
        """Scores and the mentions the decisions read (DP, flags, vetoes), evidence or not:
        the spans are only read out when asked for."""
        return self.predict_scores_with_evidence(texts, batch_size)

    def explain(self, text: str, codes: Sequence[str], top_k: int = 3) -> dict[str, list[tuple[int, int]]]:
        _, index = self.predict_scores_with_evidence([text], top_k=top_k)
        return index.spans(0, codes)

    # ---------------------------------------------------------------- persistence

    def save(self, run_dir: str | Path) -> None:
        import joblib

        from cimcoder.training.vocabulary import save_phrases

        self._check_fitted()
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.label_space.save(path)
        joblib.dump(
            {
                "model": "hybrid",
                "params": self.params.model_dump(),
                "seed": self.seed,
                "labels": self.labels,
                "components": self.components,
                "reranker": self.reranker,
                "dp_model": self.dp_model,
                "features": list(FEATURES),
                "fit_report": self.fit_report,
            },
            path / MODEL_FILE,
            compress=3,
        )
        save_phrases(self.phrases, path / PHRASES_FILE)
        (path / FEATURES_FILE).write_text(
            json.dumps({"features": list(FEATURES), "fit_report": self.fit_report}, indent=1),
            encoding="utf-8",
        )

    @classmethod
    def load(cls, run_dir: str | Path) -> HybridScorer:
        import joblib

        from cimcoder.training.labels import LabelSpace
        from cimcoder.training.vocabulary import load_phrases

        path = Path(run_dir) / MODEL_FILE
        if not path.is_file():
            raise HybridError(f"{run_dir} has no {MODEL_FILE}: not a fitted hybrid run folder")
        try:
            state = joblib.load(path)
        except Exception as exc:
            raise HybridError(f"cannot read {path}: {exc}") from None
        if not isinstance(state, dict) or state.get("model") != "hybrid":
            raise HybridError(f"{path} does not hold a hybrid model")
        if state.get("features") != list(FEATURES):
            raise HybridError(f"{path} was fitted with other reranker features: retrain it")
        space = LabelSpace.load(run_dir)
        if list(space.codes) != list(state["labels"]):
            raise HybridError(f"{run_dir}: {LABELS_FILE} does not match the hybrid's label order")
        obj = cls(space, HybridParams.model_validate(state["params"]), seed=state["seed"])
        obj.components = state["components"]
        obj.reranker = state["reranker"]
        obj.dp_model = state.get("dp_model")
        obj.fit_report = state.get("fit_report", {})
        phrases_path = Path(run_dir) / PHRASES_FILE
        if phrases_path.is_file():
            obj.phrases = load_phrases(phrases_path)
            obj._table = _phrase_table(obj.phrases, space)
        return obj

