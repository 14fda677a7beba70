"""A vocabulary learned from coded stays: the phrases a hospital writes for each code.

A hospital training cimcoder on its own PMSI history writes "ic gauche décompensée" where
the CIM-10 FR label says "Insuffisance ventriculaire gauche". `mine_phrases` finds such
phrases by association mining over stays (document frequencies of phrase, code and both),
keeping a (phrase, code) pair when the phrase predicts the code often enough and either
shares a word stem with one of the code's labels (weak alignment) or is strongly
associated with it (normalised PMI). Deterministic: the result depends neither on the
order of the stays nor on anything random.

The phrases are token sequences of `tokenize`; a matcher must tokenize reports the same way
to find them. They are saved as a TSV file in the run folder, for a coder to review.

Negation cues never go inside a phrase, but the words they deny still count: "pas de fièvre"
counts "fievre". Ending phrases at a cue and dropping the rest of the clause lost more
label-aligned phrases than it removed on CodiEsp-FR train, whose sentences are long.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from cimcoder.errors import CimcoderError
from cimcoder.terminologies.search import fold as fold_accents

logger = logging.getLogger(__name__)

TSV_HEADER = ("code", "phrase", "support", "precision", "npmi", "aligned")

# Words a phrase may contain but neither start nor end with.
# fmt: off
STOPWORDS = frozenset({
    "a", "au", "aux", "avec", "ce", "ces", "cet", "cette", "chez", "comme", "dans", "de", "des",
    "du", "elle", "elles", "en", "entre", "est", "et", "etait", "ete", "etre", "il", "ils",
    "je", "la", "le", "les", "leur", "leurs", "lui", "ma", "mais", "me", "mes", "mon", "ne",
    "nous", "on", "ont", "ou", "par", "pas", "plus", "pour", "qu", "que", "qui", "sa", "sans",
    "se", "ses", "son", "sont", "sur", "ta", "te", "tes", "ton", "tres", "un", "une", "vers",
    "vos", "votre", "vous", "y",
})
# fmt: on

# A phrase holding one of these would learn the code from its denial ("pas d'HTA").
NEGATION_CUES = frozenset({"pas", "sans", "absence", "non", "aucun", "aucune", "ni"})

# Phrases never span a sentence or a clause.
_SEGMENT_BREAK = re.compile(r"[.;:\n]+")
_TOKEN = re.compile(r"[a-z0-9]+")

# Alignment with a label: the first letters of a content word, enough to match a plural or
# a feminine form ("cardiaque" ~ "cardiaques", "aigu" ~ "aigue").
_STEM_LENGTH = 5
_MIN_CONTENT_WORD = 4


class VocabularyError(CimcoderError, ValueError):
    """Mining arguments that do not fit together, or a phrase file that cannot be read."""


@dataclass(frozen=True)
class LearnedPhrase:
    code: str  # canonical code as in the training stays (e.g. "I50.1")
    phrase: str  # folded tokens joined by one space (see `tokenize`)
    support: int  # training stays containing both the phrase and the code
    precision: float  # P(code | phrase) over training stays
    npmi: float  # normalised pointwise mutual information of (phrase, code) over stays
    aligned: bool  # the phrase shares a content-word stem with one of the code's labels


def fold(text: str) -> str:
    """Lower case, no accents, letters and digits only, separated by single spaces."""
    return " ".join(_TOKEN.findall(fold_accents(text)))


def tokenize(text: str) -> list[list[str]]:
    """Word tokens of each sentence or clause of `text`; one-letter words are dropped."""
    segments = []
    for segment in _SEGMENT_BREAK.split(text):
        tokens = [t for t in fold(segment).split() if len(t) > 1 or t.isdigit()]
        if tokens:
            segments.append(tokens)
    return segments


def candidate_phrases(text: str, max_ngram: int) -> set[str]:
    """The distinct phrases of `text` that may be learned (1 to `max_ngram` tokens).

    A phrase neither starts nor ends with a stopword, holds no negation cue and is not
    made of digits only.
    """
    phrases: set[str] = set()
    for tokens in tokenize(text):
        for start, first in enumerate(tokens):
            if first in STOPWORDS or first in NEGATION_CUES:
                continue
            phrase = ""
            only_digits = True
            for token in tokens[start : start + max_ngram]:
                if token in NEGATION_CUES:
                    break
                phrase = f"{phrase} {token}" if phrase else token
                only_digits = only_digits and token.isdigit()
                if token not in STOPWORDS and not only_digits:
                    phrases.add(phrase)
    return phrases


def stems(text: str) -> frozenset[str]:
    """Crude French stems of the content words of `text`, for alignment with labels."""
    return frozenset(
        word[:_STEM_LENGTH]
        for word in fold(text).split()
        if len(word) >= _MIN_CONTENT_WORD and word not in STOPWORDS and not word.isdigit()
    )


# ====================================================================== counting


@dataclass(frozen=True)
class _Counts:
    """Stay-level co-occurrence counts of the phrases and codes that reach `min_support`."""

    n_stays: int
    phrases: list[str]  # sorted: column order never depends on stay order
    codes: list[str]  # sorted
    phrase_df: np.ndarray  # stays containing each phrase
    code_df: np.ndarray  # stays carrying each code
    joint: sp.coo_matrix  # phrases x codes: stays with both


def _binary_matrix(rows: Sequence[Iterable[str]], vocabulary: Mapping[str, int]) -> sp.csr_matrix:
    indptr = [0]
    indices: list[int] = []
    for items in rows:
        indices.extend(vocabulary[x] for x in items if x in vocabulary)
        indptr.append(len(indices))
    data = np.ones(len(indices), dtype=np.int32)
    shape = (len(rows), len(vocabulary))
    return sp.csr_matrix((data, np.asarray(indices, dtype=np.int64), indptr), shape=shape)


def _count(
    texts: Sequence[str], code_sets: Sequence[Sequence[str]], max_ngram: int, min_support: int
) -> _Counts:
    stay_phrases = [candidate_phrases(text, max_ngram) for text in texts]
    stay_codes = [set(codes) for codes in code_sets]
    phrase_df = Counter(p for phrases in stay_phrases for p in phrases)
    code_df = Counter(c for codes in stay_codes for c in codes)
    # Pruned before the matrices are built: most n-grams occur in one stay only.
    phrases = sorted(p for p, n in phrase_df.items() if n >= min_support)
    codes = sorted(c for c, n in code_df.items() if n >= min_support)
    x = _binary_matrix(stay_phrases, {p: i for i, p in enumerate(phrases)})
    y = _binary_matrix(stay_codes, {c: i for i, c in enumerate(codes)})
    return _Counts(
        n_stays=len(texts),
        phrases=phrases,
        codes=codes,
        phrase_df=np.array([phrase_df[p] for p in phrases], dtype=np.int64),
        code_df=np.array([code_df[c] for c in codes], dtype=np.int64),
        joint=(x.T @ y).tocoo(),
    )


def _npmi(joint: np.ndarray, phrase_df: np.ndarray, code_df: np.ndarray, n: int) -> np.ndarray:
    """log(p(x,y) / p(x)p(y)) / -log p(x,y); 1 when phrase and code are in every stay."""
    pmi = np.log(joint * n / (phrase_df * code_df))
    h = -np.log(joint / n)
    return np.where(h > 0, pmi / np.where(h > 0, h, 1.0), 1.0)


# ====================================================================== selection


def _drop_subsumed(candidates: list[LearnedPhrase]) -> list[LearnedPhrase]:
    """Drop a phrase inside a longer one of the same support: the longer says the same, better.

    With equal support the longer phrase has at least the precision and NPMI of the shorter,
    and is aligned whenever the shorter is.
    """
    support = {c.phrase: c.support for c in candidates}
    subsumed: set[str] = set()
    for c in candidates:
        tokens = c.phrase.split()
        for start in range(len(tokens)):
            for end in range(start + 1, len(tokens) + 1):
                if end - start == len(tokens):
                    continue
                inner = " ".join(tokens[start:end])
                if support.get(inner) == c.support:
                    subsumed.add(inner)
    return [c for c in candidates if c.phrase not in subsumed]


def _rank_key(p: LearnedPhrase) -> tuple[bool, float, int, str]:
    return (not p.aligned, -p.npmi, -p.support, p.phrase)


def mine_phrases(
    texts: Sequence[str],
    code_sets: Sequence[Sequence[str]],
    label_texts: Mapping[str, Sequence[str]],
    *,
    max_ngram: int = 4,
    min_support: int = 2,
    min_precision: float = 0.5,
    min_npmi_unaligned: float = 0.6,
    max_phrases_per_code: int = 20,
) -> list[LearnedPhrase]:
    """Phrases of the training reports that predict a code, at most `max_phrases_per_code` each.

    `label_texts` maps a code to its labels (ATIH long label, CIM-11 title, ...); a code
    without labels can only learn phrases through `min_npmi_unaligned`. Returned sorted by
    (code, -npmi, phrase).
    """
    if isinstance(texts, str):
        raise VocabularyError("texts must be a sequence of reports, not one string")
    if len(texts) != len(code_sets):
        raise VocabularyError(f"{len(texts)} texts but {len(code_sets)} code sets")
    if max_ngram < 1 or min_support < 1 or max_phrases_per_code < 1:
        raise VocabularyError("max_ngram, min_support and max_phrases_per_code must be >= 1")
    if not 0.0 <= min_precision <= 1.0:
        raise VocabularyError(f"min_precision must be within [0, 1], not {min_precision}")

    counts = _count(texts, code_sets, max_ngram, min_support)
    joint = counts.joint
    phrase_df = counts.phrase_df[joint.row]
    code_df = counts.code_df[joint.col]
    support = joint.data.astype(np.int64)
    precision = support / phrase_df
    keep = (support >= min_support) & (precision >= min_precision)
    rows, cols, support = joint.row[keep], joint.col[keep], support[keep]
    precision = precision[keep]
    npmi = _npmi(support, phrase_df[keep], code_df[keep], counts.n_stays)

    label_stems = {
        code: frozenset().union(*(stems(label) for label in label_texts.get(code, ())))
        for code in counts.codes
    }
    phrase_stems: dict[int, frozenset[str]] = {}
    by_code: dict[str, list[LearnedPhrase]] = {}
    for i, j, s, p, m in zip(
        rows.tolist(),
        cols.tolist(),
        support.tolist(),
        precision.tolist(),
        npmi.tolist(),
        strict=True,
    ):
        code = counts.codes[j]
        if i not in phrase_stems:
            phrase_stems[i] = stems(counts.phrases[i])
        aligned = not phrase_stems[i].isdisjoint(label_stems[code])
        if not aligned and m < min_npmi_unaligned:
            continue
        by_code.setdefault(code, []).append(
            LearnedPhrase(code, counts.phrases[i], s, round(p, 6), round(m, 6), aligned)
        )

    learned = []
    for candidates in by_code.values():
        ranked = sorted(_drop_subsumed(candidates), key=_rank_key)
        learned.extend(ranked[:max_phrases_per_code])
    learned.sort(key=lambda p: (p.code, -p.npmi, p.phrase))
    logger.info(
        "learned %d phrases for %d codes from %d stays (%d candidate phrases)",
        len(learned),
        len({p.code for p in learned}),
        counts.n_stays,
        len(counts.phrases),
    )
    return learned


# ====================================================================== file


def save_phrases(phrases: Iterable[LearnedPhrase], path: str | Path) -> None:
    """Write the phrases as TSV (one per line, header first), for a coder to review."""
    lines = ["\t".join(TSV_HEADER)]
    for p in phrases:
        if any(ch in f for f in (p.code, p.phrase) for ch in "\t\r\n"):
            raise VocabularyError(f"{p.code} / {p.phrase!r}: a tab or newline cannot go in a TSV")
        fields = (p.code, p.phrase, str(p.support), repr(p.precision), repr(p.npmi))
        lines.append("\t".join((*fields, "true" if p.aligned else "false")))
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def load_phrases(path: str | Path) -> list[LearnedPhrase]:
    """Read a file written by `save_phrases` (and possibly edited by a coder)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise VocabularyError(f"cannot read phrase file {path}: {e}") from e
    if not lines or tuple(lines[0].split("\t")) != TSV_HEADER:
        raise VocabularyError(f"{path}: expected the header {' / '.join(TSV_HEADER)}")
    phrases = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            code, phrase, support, precision, npmi, aligned = fields
            if aligned not in ("true", "false"):
                raise ValueError(f"aligned must be true or false, not {aligned!r}")
            phrases.append(
                LearnedPhrase(
                    code, phrase, int(support), float(precision), float(npmi), aligned == "true"
                )
            )
        except ValueError as e:
            raise VocabularyError(f"{path}, line {number}: {e}") from e
    return phrases
