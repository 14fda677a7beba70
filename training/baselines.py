"""Baselines scored by the same harness as the transformer: TF-IDF + logistic regression,
and edsnlp's CIM-10 terminology matcher with its negation / hypothesis / family qualifiers.

Both implement the `Scorer` protocol (`cimcoder.training.registry`), save into a run folder
(`config.yaml`, `labels.json`, `baseline.joblib`) and are trained by `fit_baseline(config)`,
the one path of every model fitted in one call (ONE_CALL_MODELS, the hybrid included): it
loads the same data sets and label space as the transformer's trainer (`prepare_data`),
scores the validation split and writes `metrics.json`.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cimcoder.errors import CimcoderError
from cimcoder.metrics import best_f1_threshold, summarize
from cimcoder.run_folder import LABELS_FILE, METRICS_FILE, RunFolder
from cimcoder.terminologies.lexicon import label_variants
from cimcoder.training.data import Example, prepare_data
from cimcoder.training.registry import register_model

if TYPE_CHECKING:
    from cimcoder.training.config import RunConfig
    from cimcoder.training.labels import LabelSpace
    from cimcoder.training.tracking import RunTracker

logger = logging.getLogger(__name__)

MODEL_FILE = "baseline.joblib"
# Models fitted in one call by `fit_baseline` (the transformer has its gradient loop).
ONE_CALL_MODELS = ("tfidf_lr", "edsnlp_matcher", "hybrid")


class BaselineError(CimcoderError):
    """A baseline cannot be built, fitted or loaded."""


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _parse_params(
    cls: type[BaseModel], raw: dict[str, Any], model: str,
    error: type[CimcoderError] = BaselineError,
) -> Any:
    """`model.params` validated by the model's own class; a readable error per bad key."""
    try:
        return cls.model_validate(raw or {})
    except ValidationError as exc:
        lines = [f"invalid model.params for {model}:"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(root)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  model.params.{loc}: {msg}")
        raise error("\n".join(lines)) from None


def _targets_matrix(targets: Any, label_space: LabelSpace, n: int) -> np.ndarray:
    """Multi-hot [n, L] bool from a matrix or from per-stay code lists."""
    if isinstance(targets, np.ndarray) and targets.ndim == 2:
        y = targets.astype(bool)
    elif hasattr(targets, "shape") and len(targets.shape) == 2:  # torch tensor, sparse
        y = np.asarray(targets.todense() if hasattr(targets, "todense") else targets).astype(bool)
    else:
        rows = list(targets)
        if rows and all(isinstance(r, (list, tuple, set, frozenset)) for r in rows) and any(
            r and isinstance(next(iter(r)), str) for r in rows
        ):
            y = np.asarray(label_space.encode(rows), dtype=bool).reshape(len(rows), len(label_space))
        else:
            y = np.asarray(rows, dtype=bool)
    if y.shape != (n, len(label_space)):
        raise BaselineError(f"targets of shape {y.shape} for {n} texts and {len(label_space)} labels")
    return y


# ====================================================================== text normalisation

_TOKEN = re.compile(r"(?u)\b\w\w+\b")


def _fold(text: str) -> tuple[str, list[int]]:
    """Lower-cased, accent-stripped text and, for each of its chars, the source offset."""
    out: list[str] = []
    offsets: list[int] = []
    for i, ch in enumerate(text):
        decomposed = unicodedata.normalize("NFKD", ch)
        for c in decomposed:
            if unicodedata.combining(c):
                continue
            for low in c.lower():
                out.append(low)
                offsets.append(i)
    return "".join(out), offsets


def fold_text(text: str) -> str:
    """The normalisation the TF-IDF vectorizers see (lower case, no accents)."""
    return _fold(text)[0]


# ====================================================================== TF-IDF + LR


class TfidfLrParams(_Params):
    word_ngram_max: int = Field(2, ge=1, le=3, description="Word n-grams 1..N.")
    char_ngram_min: int = Field(3, ge=2, description="Smallest character n-gram (within words).")
    char_ngram_max: int = Field(5, ge=2, description="Largest character n-gram (within words).")
    max_word_features: int = Field(40000, ge=100, description="Word n-gram vocabulary cap.")
    max_char_features: int = Field(40000, ge=0, description="Char n-gram vocabulary cap (0: none).")
    min_df: int = Field(2, ge=1, description="Ignore n-grams in fewer training reports.")
    C: float = Field(10.0, gt=0, description="Inverse L2 regularisation of each classifier.")
    class_weight: Literal["balanced", "none"] = Field(
        "balanced", description="balanced: reweight the rare positives of each code."
    )
    max_iter: int = Field(500, ge=10, description="Solver iterations per code (Newton-CG).")
    tol: float = Field(1e-5, gt=0, description="Solver stopping tolerance (scikit-learn's tol).")


def fit_dual_logistic(
    kernel: np.ndarray,
    y: np.ndarray,
    C: float,
    balanced: bool,
    max_iter: int = 500,
    tol: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One L2 logistic regression per column of `y`, for linear-kernel features.

    For each code j, scikit-learn's `LogisticRegression` minimises
    sum_i s_ij * log-loss(w_j . x_i + b_j, y_ij) + |w_j|^2 / (2C) (times C), with s the
    balanced class weights or 1 and the intercept not penalised. By the representer theorem
    w_j = X^T alpha_j, so only the [n, n] Gram matrix K = X X^T is needed: with
    K = Phi Phi^T (eigendecomposition), it is the same problem on the n-dimensional rows of
    Phi, which Newton-CG solves in a few iterations per code.

    Why the Gram matrix rather than `LogisticRegression` on the TF-IDF matrix itself
    (`benchmarks/bench_dual_logistic.py`, CodiEsp-FR train: 500 reports, 65,258 features,
    1,383 codes; 2 CPU cores shared with other jobs, hence the ranges): on 100 codes spread
    over the frequencies, the TF-IDF fits (lbfgs, tol 1e-6) reach the same objective
    (relative gap 2e-6, this one lower), coefficients within 4.3e-3 (largest 3.3), intercepts
    within 7e-3, validation probabilities within 3.3e-4, the same validation MAP (0.5347) and
    the same top 5 codes for 99.6 % of validation stays, but take 0.6-3.6 s per code, 14-82
    minutes for all codes, against 16-39 s here (Gram matrix included). The hand-written
    joint L-BFGS on Phi that this replaces took 42-95 s, run alternately with this one
    (18-39 s), for the same objective (1.5e-7 apart).

    Returns alpha [n, L] (w = X^T alpha), intercepts [L], the most iterations a code used.
    """
    from sklearn.linear_model import LogisticRegression

    n_labels = y.shape[1]
    evals, evecs = np.linalg.eigh(kernel.astype(np.float64))
    keep = evals > max(evals.max(), 0.0) * 1e-10
    root = np.sqrt(evals[keep])
    phi = evecs[:, keep] * root  # [n, r], phi @ phi.T == kernel
    w = np.zeros((phi.shape[1], n_labels))
    b = np.zeros(n_labels)
    iterations = 0
    for j in range(n_labels):
        clf = LogisticRegression(
            C=C, class_weight="balanced" if balanced else None, solver="newton-cg",
            tol=tol, max_iter=max_iter,
        ).fit(phi, y[:, j])
        w[:, j], b[j] = clf.coef_[0], clf.intercept_[0]
        iterations = max(iterations, int(clf.n_iter_[0]))
    # phi = U sqrt(L)  =>  K alpha = phi w  with  alpha = U L^{-1/2} w
    alpha = evecs[:, keep] @ (w / root[:, None])
    return alpha.astype(np.float32), b.astype(np.float32), iterations


@register_model("tfidf_lr")
class TfidfLrScorer:
    """TF-IDF (word 1-2 grams + char 3-5 grams, accents stripped, sublinear tf) + one L2
    logistic regression per code.

    The regressions are solved in their representer form (`fit_dual_logistic`): the model
    keeps the training TF-IDF matrix and alpha [n_train, L] rather than a dense
    [L, vocabulary] weight matrix. (Fitted on the TF-IDF matrix, scikit-learn takes several
    seconds per code on 2 shared cores, i.e. over an hour for CodiEsp's ~1,400 codes; this
    takes about half a minute.)
    """

    model_name = "tfidf_lr"

    def __init__(self, label_space: LabelSpace, params: TfidfLrParams, seed: int = 13) -> None:
        self.label_space = label_space
        self.labels = list(label_space.codes)
        self.params = params
        self.seed = seed
        self.word_vectorizer: Any = None
        self.char_vectorizer: Any = None
        self.train_x: Any = None  # scipy CSR [n_train, F]: w_j = train_x.T @ alpha[:, j]
        self.alpha: np.ndarray | None = None  # [n_train, L]
        self.intercepts: np.ndarray | None = None  # [L]
        self.constant: np.ndarray | None = None  # [L], NaN where a classifier exists

    @classmethod
    def from_config(cls, config: RunConfig, label_space: LabelSpace) -> TfidfLrScorer:
        params = _parse_params(TfidfLrParams, config.model.params, "tfidf_lr")
        return cls(label_space, params, seed=config.training.seed)

    # -------------------------------------------------------------- features

    def _build_vectorizers(self) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        p = self.params
        self.word_vectorizer = TfidfVectorizer(
            preprocessor=fold_text,
            ngram_range=(1, p.word_ngram_max),
            min_df=p.min_df,
            max_features=p.max_word_features,
            sublinear_tf=True,
            dtype=np.float32,
        )
        if p.max_char_features > 0:
            self.char_vectorizer = TfidfVectorizer(
                preprocessor=fold_text,
                analyzer="char_wb",
                ngram_range=(p.char_ngram_min, p.char_ngram_max),
                min_df=p.min_df,
                max_features=p.max_char_features,
                sublinear_tf=True,
                dtype=np.float32,
            )

    def _features(self, texts: Sequence[str], fit: bool = False) -> Any:
        from scipy import sparse

        if fit:
            blocks = [self.word_vectorizer.fit_transform(texts)]
            if self.char_vectorizer is not None:
                blocks.append(self.char_vectorizer.fit_transform(texts))
        else:
            blocks = [self.word_vectorizer.transform(texts)]
            if self.char_vectorizer is not None:
                blocks.append(self.char_vectorizer.transform(texts))
        return sparse.hstack(blocks, format="csr", dtype=np.float32)

    @property
    def _n_word_features(self) -> int:
        return len(self.word_vectorizer.vocabulary_)

    # -------------------------------------------------------------- fit / score

    def fit(self, texts: Sequence[str], targets: Any) -> TfidfLrScorer:
        """Fit on report texts and their gold codes (multi-hot [n, L] or code lists)."""
        texts = list(texts)
        if not texts:
            raise BaselineError("cannot fit tfidf_lr on zero training reports")
        if len(texts) < self.params.min_df:
            raise BaselineError(
                f"min_df={self.params.min_df} exceeds the {len(texts)} training reports"
            )
        y = _targets_matrix(targets, self.label_space, len(texts))
        self._build_vectorizers()
        t0 = time.perf_counter()
        x = self._features(texts, fit=True)
        n_pos = y.sum(axis=0)
        trainable = (n_pos > 0) & (n_pos < len(texts))
        logger.info(
            "tfidf_lr: %d reports, %d features, %d codes (%d with both classes)",
            x.shape[0], x.shape[1], y.shape[1], int(trainable.sum()),
        )
        alpha = np.zeros((len(texts), y.shape[1]), dtype=np.float32)
        intercepts = np.zeros(y.shape[1], dtype=np.float32)
        if trainable.any():
            kernel = np.asarray((x @ x.T).todense(), dtype=np.float64)
            a, b, nit = fit_dual_logistic(
                kernel,
                y[:, trainable],
                C=self.params.C,
                balanced=self.params.class_weight == "balanced",
                max_iter=self.params.max_iter,
                tol=self.params.tol,
            )
            alpha[:, trainable] = a
            intercepts[trainable] = b
            logger.info("tfidf_lr: at most %d solver iterations per code", nit)
        # A code with a single class in training gets its training rate as a constant score.
        constant = np.where(trainable, np.nan, n_pos / len(texts)).astype(np.float32)
        self.train_x = x
        self.alpha = alpha
        self.intercepts = intercepts
        self.constant = constant
        logger.info("tfidf_lr fitted in %.1fs", time.perf_counter() - t0)
        return self

    def _check_fitted(self) -> None:
        if self.alpha is None or self.intercepts is None or self.constant is None:
            raise BaselineError("tfidf_lr is not fitted (call fit() or load a run folder)")

    def decision_function(self, texts: Sequence[str]) -> np.ndarray:
        """Logits [n, L]: x . w_j + b_j with w_j = X_train^T alpha_j."""
        self._check_fitted()
        x = self._features(list(texts))
        gram = np.asarray((x @ self.train_x.T).todense(), dtype=np.float32)
        return gram @ self.alpha + self.intercepts  # type: ignore[operator]

    def predict_scores(self, texts: Sequence[str], batch_size: int = 8) -> np.ndarray:
        """Sigmoid of each code's logistic regression; constant codes get their train rate."""
        self._check_fitted()
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        step = max(batch_size, 64)
        for start in range(0, len(texts), step):
            logits = self.decision_function(texts[start : start + step])
            out[start : start + step] = 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))
        const = ~np.isnan(self.constant)  # type: ignore[arg-type]
        out[:, const] = self.constant[const]  # type: ignore[index]
        return out

    # -------------------------------------------------------------- explain

    def _feature_names(self) -> list[str]:
        names = list(self.word_vectorizer.get_feature_names_out())
        if self.char_vectorizer is not None:
            names += list(self.char_vectorizer.get_feature_names_out())
        return names

    def explain(
        self, text: str, codes: Sequence[str], top_k: int = 3
    ) -> dict[str, list[tuple[int, int]]]:
        """Spans of the n-grams of `text` that push each code's score up the most."""
        self._check_fitted()
        if not hasattr(self, "_names_cache"):
            self._names_cache = self._feature_names()
        names = self._names_cache
        x = self._features([text]).tocsr()
        folded, offsets = _fold(text)
        n_word = self._n_word_features
        result: dict[str, list[tuple[int, int]]] = {}
        for code in codes:
            if code not in self.label_space:
                result[code] = []
                continue
            j = self.label_space.index(code)
            w = np.asarray(self.train_x.T @ self.alpha[:, j]).ravel()  # type: ignore[index]
            contrib = x.multiply(w[None, :]).tocsr()
            order = np.argsort(-contrib.data, kind="stable")
            idx = [int(contrib.indices[o]) for o in order if contrib.data[o] > 0]
            spans: list[tuple[int, int]] = []
            for f in idx:
                for span in _ngram_spans(names[f], folded, offsets, is_word=f < n_word):
                    if not any(s < span[1] and span[0] < e for s, e in spans):
                        spans.append(span)
                        break
                if len(spans) >= top_k:
                    break
            result[code] = sorted(spans)
        return result

    # -------------------------------------------------------------- persistence

    def save(self, run_dir: str | Path) -> None:
        import joblib

        self._check_fitted()
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.label_space.save(path)
        joblib.dump(
            {
                "model": "tfidf_lr",
                "params": self.params.model_dump(),
                "seed": self.seed,
                "labels": self.labels,
                "word_vectorizer": self.word_vectorizer,
                "char_vectorizer": self.char_vectorizer,
                "train_x": self.train_x,
                "alpha": self.alpha,
                "intercepts": self.intercepts,
                "constant": self.constant,
            },
            path / MODEL_FILE,
            compress=3,
        )

    @classmethod
    def load(cls, run_dir: str | Path) -> TfidfLrScorer:
        from cimcoder.training.labels import LabelSpace

        state = _load_state(run_dir, "tfidf_lr")
        space = LabelSpace.load(run_dir)
        _check_labels(space, state["labels"], run_dir)
        obj = cls(space, TfidfLrParams.model_validate(state["params"]), seed=state["seed"])
        obj.word_vectorizer = state["word_vectorizer"]
        obj.char_vectorizer = state["char_vectorizer"]
        obj.train_x = state["train_x"]
        obj.alpha = state["alpha"]
        obj.intercepts = state["intercepts"]
        obj.constant = state["constant"]
        return obj


def _ngram_spans(
    feature: str, folded: str, offsets: list[int], *, is_word: bool
) -> list[tuple[int, int]]:
    """Source spans where a word n-gram (or the word holding a char n-gram) occurs."""
    if not offsets:
        return []
    spans: list[tuple[int, int]] = []
    if is_word:
        words = feature.split(" ")
        pattern = r"\b" + r"\W+".join(re.escape(w) for w in words) + r"\b"
        for m in re.finditer(pattern, folded):
            spans.append((offsets[m.start()], offsets[m.end() - 1] + 1))
    else:
        gram = feature.strip()
        if len(gram) < 3:
            return []
        for m in re.finditer(re.escape(gram), folded):
            # Widen to the whole word: a word is what a coder can read as evidence.
            s, e = m.start(), m.end()
            while s > 0 and folded[s - 1].isalnum():
                s -= 1
            while e < len(folded) and folded[e].isalnum():
                e += 1
            spans.append((offsets[s], offsets[e - 1] + 1))
    return spans


def _load_state(run_dir: str | Path, model: str) -> dict:
    import joblib

    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise BaselineError(f"{run_dir} has no {MODEL_FILE}: not a fitted {model} run folder")
    try:
        state = joblib.load(path)
    except Exception as exc:
        raise BaselineError(f"cannot read {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("model") != model:
        raise BaselineError(f"{path} does not hold a {model} model")
    return state


def _check_labels(space: LabelSpace, saved: list[str], run_dir: str | Path) -> None:
    if list(space.codes) != list(saved):
        raise BaselineError(
            f"{run_dir}: {LABELS_FILE} does not match the label order the model was fitted on"
        )


# ====================================================================== edsnlp matcher


Qualifier = Literal["negation", "hypothesis", "family"]


def _all_qualifiers() -> list[Qualifier]:
    return ["negation", "hypothesis", "family"]


class MatcherParams(_Params):
    term_matcher: Literal["exact", "simstring"] = Field(
        "simstring",
        description="exact: edsnlp's phrase matcher (very low recall, per its docs). "
        "simstring: approximate matching of the label terms.",
    )
    simstring_threshold: float = Field(
        0.75, gt=0, le=1, description="Similarity threshold of simstring matching."
    )
    simstring_measure: Literal["dice", "jaccard", "cosine", "overlap"] = Field(
        "dice", description="Similarity measure of simstring matching."
    )
    qualifiers: list[Qualifier] = Field(
        default_factory=_all_qualifiers,
        description="Mentions flagged by these edsnlp qualifiers are dropped.",
    )
    label_variants: bool = Field(
        True,
        description="Also match shortened labels (without '(...)', or cut at ', sans "
        "précision' and similar tails), since reports rarely spell the full CIM label.",
    )
    child_score: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="Top score given to a label more specific than the match (e.g. label "
        "E11.9 for a mention of E11), spread by training frequency among the siblings.",
    )


def _undot(code: str) -> str:
    return code.replace(".", "").replace(" ", "").upper()


@register_model("edsnlp_matcher")
class EdsnlpMatcherScorer:
    """edsnlp's CIM-10 terminology matcher; qualified-away mentions are dropped.

    A mention of code M scores 1.0 for every label L with M == L or M under L (E11.9 counts
    for E11.9 and for E11), and at most `child_score` for a label under M (E11 -> E11.9).
    """

    model_name = "edsnlp_matcher"

    def __init__(self, label_space: LabelSpace, params: MatcherParams) -> None:
        self.label_space = label_space
        self.labels = list(label_space.codes)
        self.params = params
        self._nlp: Any = None
        self._undotted = [_undot(c) for c in self.labels]

    @classmethod
    def from_config(cls, config: RunConfig, label_space: LabelSpace) -> EdsnlpMatcherScorer:
        return cls(label_space, _parse_params(MatcherParams, config.model.params, "edsnlp_matcher"))

    def fit(self, texts: Sequence[str], targets: Any) -> EdsnlpMatcherScorer:
        """Nothing to learn: the terminology is the model (label frequencies come with it)."""
        return self

    # -------------------------------------------------------------- pipeline

    def _terms(self) -> dict[str, list[str]]:
        """edsnlp's CIM-10 terms, restricted to codes related to the label space."""
        from edsnlp.pipes.ner.cim10.patterns import get_patterns

        labels = set(self._undotted)
        label_prefixes = {u[:k] for u in labels for k in range(3, len(u) + 1)}
        terms: dict[str, list[str]] = {}
        for code, patterns in get_patterns().items():
            related = code in label_prefixes or any(code[:k] in labels for k in range(3, len(code) + 1))
            if not related:
                continue
            # patterns: short label, long label, then code spellings (E119, E1.19, ...);
            # edsnlp's dotted spellings are misplaced, so write the code ones ourselves.
            names = [p for p in patterns[:2] if isinstance(p, str)]
            variants: set[str] = set()
            for name in names:
                variants |= label_variants(name) if self.params.label_variants else {name}
            dotted = code if len(code) <= 3 else f"{code[:3]}.{code[3:]}"
            variants |= {code, dotted}
            terms[code] = sorted(variants)
        return terms

    def _pipeline(self) -> Any:
        if self._nlp is not None:
            return self._nlp
        import edsnlp
        import edsnlp.pipes as eds

        t0 = time.perf_counter()
        nlp = edsnlp.blank("eds")
        nlp.add_pipe(eds.sentences())
        nlp.add_pipe(eds.normalizer())
        config: dict[str, Any] = {}
        if self.params.term_matcher == "simstring":
            config = {
                "threshold": self.params.simstring_threshold,
                "measure": self.params.simstring_measure,
            }
        nlp.add_pipe(
            eds.terminology(
                name="cim10",
                terms=self._terms(),
                label="cim10",
                attr="NORM",
                term_matcher=self.params.term_matcher,
                term_matcher_config=config,
            )
        )
        qualifiers = {"negation": eds.negation, "hypothesis": eds.hypothesis, "family": eds.family}
        for q in self.params.qualifiers:
            nlp.add_pipe(qualifiers[q]())
        self._nlp = nlp
        logger.info("edsnlp matcher pipeline built in %.1fs", time.perf_counter() - t0)
        return nlp

    def mentions(self, text: str) -> list[tuple[str, int, int]]:
        """Kept (code, start, end) mentions of `text`, codes undotted as in edsnlp."""
        doc = self._pipeline()(text)
        kept = []
        for ent in doc.ents:
            if ent.label_ != "cim10":
                continue
            if any(getattr(ent._, q, False) for q in self.params.qualifiers):
                continue
            kept.append((ent.kb_id_, ent.start_char, ent.end_char))
        return kept

    def _label_scores(self, code: str) -> dict[int, float]:
        """Label column -> score for a mention of `code` (undotted)."""
        if not hasattr(self, "_by_prefix"):
            by_prefix: dict[str, list[int]] = {}
            for j, u in enumerate(self._undotted):
                by_prefix.setdefault(u, []).append(j)
            self._by_prefix = by_prefix
        scores: dict[int, float] = {}
        for k in range(3, len(code) + 1):
            for j in self._by_prefix.get(code[:k], []):
                scores[j] = 1.0
        children = [j for j, u in enumerate(self._undotted) if len(u) > len(code) and u.startswith(code)]
        if children and self.params.child_score > 0:
            counts = np.array([self.label_space.count(self.labels[j]) for j in children], float)
            top = counts.max() if counts.size and counts.max() > 0 else 1.0
            for j, c in zip(children, counts, strict=True):
                # Most frequent child near child_score, others below: a rank, not a probability.
                scores.setdefault(j, self.params.child_score * (0.5 + 0.5 * c / top))
        return scores

    def predict_scores(self, texts: Sequence[str], batch_size: int = 8) -> np.ndarray:
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for i, text in enumerate(texts):
            for code, _s, _e in self.mentions(text):
                for j, v in self._label_scores(code).items():
                    out[i, j] = max(out[i, j], v)
        return out

    def explain(
        self, text: str, codes: Sequence[str], top_k: int = 3
    ) -> dict[str, list[tuple[int, int]]]:
        """The match spans behind each code (a mention of the code or of a related code)."""
        found = self.mentions(text)
        result: dict[str, list[tuple[int, int]]] = {}
        for code in codes:
            u = _undot(code)
            spans = [(s, e) for m, s, e in found if m.startswith(u) or u.startswith(m)]
            result[code] = sorted(set(spans))[:top_k]
        return result

    def save(self, run_dir: str | Path) -> None:
        import joblib

        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.label_space.save(path)
        joblib.dump(
            {"model": "edsnlp_matcher", "params": self.params.model_dump(), "labels": self.labels},
            path / MODEL_FILE,
        )

    @classmethod
    def load(cls, run_dir: str | Path) -> EdsnlpMatcherScorer:
        from cimcoder.training.labels import LabelSpace

        state = _load_state(run_dir, "edsnlp_matcher")
        space = LabelSpace.load(run_dir)
        _check_labels(space, state["labels"], run_dir)
        return cls(space, MatcherParams.model_validate(state["params"]))


# ====================================================================== harness


def _check_label_space(config: RunConfig, space: LabelSpace) -> None:
    if config.model.name == "edsnlp_matcher" and space.terminology != "cim10":
        raise BaselineError(
            "edsnlp_matcher matches CIM-10 terms only: set data.labels.terminology=cim10"
        )


def evaluate_scores(
    y_true: np.ndarray,
    scores: np.ndarray,
    n_gold: Sequence[int] | None = None,
    label_space: LabelSpace | None = None,
) -> dict[str, Any]:
    """MAP, P@k, and micro/macro F1 at the single global threshold that maximises micro-F1
    on these stays (`best_f1_threshold`, the report's cut: an optimistic oracle, `cimcoder
    calibrate` tunes real ones).

    With `label_space`, also the recall of gold codes by training-frequency band at that
    threshold; gold codes outside the label space are the "unseen" band (with `n_gold`).
    """
    best = best_f1_threshold(y_true, scores, n_gold)
    threshold = best[0] if best is not None else None  # None: no gold code to cut for
    decided = scores >= threshold if threshold is not None else np.zeros(scores.shape, dtype=bool)
    summary: dict[str, Any] = {**summarize(y_true, scores, decided, n_gold=n_gold, ks=(1, 5, 10))}
    summary["threshold"] = threshold
    if label_space is not None:
        bands = np.array(label_space.bands())
        for band in ("frequent", "rare", "unseen"):
            cols = bands == band
            gold = int(y_true[:, cols].sum())
            hit = int((y_true[:, cols] & decided[:, cols]).sum())
            if band == "unseen" and n_gold is not None:
                gold += int(sum(n_gold) - y_true.sum())
            summary[f"recall_{band}"] = hit / gold if gold else None
            summary[f"n_gold_{band}"] = gold
    summary["threshold_rule"] = "global, max micro-F1 on the validation split"
    return summary


def _fit(model: Any, train: Sequence[Example]) -> None:
    texts, codes = [s.text for s in train], [s.codes for s in train]
    accepted = inspect.signature(model.fit).parameters
    extra: dict[str, Any] = {}
    if "principal" in accepted:  # learns the DP from roles
        extra["principal"] = [s.principal for s in train]
    if "groups" in accepted:  # cross-fits inside: near-duplicates kept in one fold
        extra["groups"] = [s.group or s.id for s in train]
    model.fit(texts, codes, **extra)


def fit_baseline(
    config: RunConfig,
    tracker: RunTracker | None = None,
    *,
    validation_metric: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> Path:
    """Fit the model named by `config.model.name` (one of ONE_CALL_MODELS), score the
    validation split, and write the run folder (`config.yaml`, `labels.json`, the model's
    files, `metrics.json`). `cimcoder.training.train` sends these models here too.

    metrics.json holds `evaluate_scores`' figures and the keys the gradient loop writes
    (`validation_metric`, `dev_metric`, `n_train`, `n_validation`, `num_labels`):
    `dev_metric` is `validation_metric(y_true, scores)` when given, else MAP.
    With a `tracker`, the params, metrics and run files are logged to MLflow too.
    """
    from cimcoder.training.config import dump_config
    from cimcoder.training.registry import build_model

    if config.model.name not in ONE_CALL_MODELS:
        raise BaselineError(
            f"{config.model.name!r} is not fitted in one call ({', '.join(ONE_CALL_MODELS)})"
        )
    t0 = time.perf_counter()
    # The transformer's own data preparation: same splits, same label space.
    data = prepare_data(config)
    train, valid, space = data.train, data.validation, data.label_space
    if not valid:
        raise BaselineError(f"no validation stays ({data.validation_source})")
    _check_label_space(config, space)
    model = build_model(config, space)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if tracker is not None:
        tracker.log_params(config.model_dump(mode="json"))
        tracker.log_params(
            {"data.n_train": len(train), "data.n_valid": len(valid), "labels": len(space)}
        )
    _fit(model, train)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    scores = model.predict_scores(
        [s.text for s in valid], batch_size=config.training.eval_batch_size
    )
    score_s = time.perf_counter() - t1
    y_valid = np.asarray(space.encode([s.codes for s in valid]), dtype=bool).reshape(
        len(valid), len(space)
    )
    n_gold = [len(set(s.codes)) for s in valid]
    metrics = evaluate_scores(y_valid, scores, n_gold, label_space=space)
    if validation_metric is None:
        metric_name, dev_metric = "map", metrics["map"]
    else:
        metric_name = getattr(validation_metric, "__name__", "custom")
        dev_metric = float(validation_metric(y_valid, scores))
    metrics.update(
        {
            "validation": data.validation_source,
            "validation_metric": metric_name,
            "dev_metric": dev_metric,
            "n_train": len(train),
            "n_validation": len(valid),
            "num_labels": len(space),
            "fit_seconds": round(fit_s, 2),
            "score_seconds": round(score_s, 2),
            "gold_outside_label_space": int(sum(n_gold) - int(y_valid.sum())),
            **({"crosswalk": data.notes} if data.notes else {}),
        }
    )
    model.save(run_dir)
    space.save(run_dir)
    run = RunFolder(run_dir)
    dump_config(config, run.config)
    run.write_json(METRICS_FILE, {k: _jsonable(v) for k, v in metrics.items()})
    logger.info(
        "%s: MAP %.4f, micro-F1 %.4f, P@5 %.4f on %d validation stays -> %s",
        config.model.name, metrics["map"], metrics["micro_f1"], metrics["p@5"], len(valid), run_dir,
    )
    if tracker is not None:
        tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        tracker.log_run_folder_summary(run_dir)
    return run_dir


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v
