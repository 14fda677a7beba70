"""Search over French labels: accent/case-insensitive, word-order tolerant, abbreviation-aware.

An inverted index over the short and long labels, built once per terminology, scored
BM25-style per query term, then weighted by how many query terms a label covers, with a
boost for the exact phrase and for leaf (codable) codes.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
import unicodedata
from array import array
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

_TOKEN = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    {
        "a",
        "au",
        "aux",
        "d",
        "de",
        "des",
        "du",
        "en",
        "et",
        "l",
        "la",
        "le",
        "les",
        "ou",
        "par",
        "pour",
    }
    | {"sur", "un", "une", "dans", "chez", "avec"}
)

# Common clinical abbreviations of French reports (docs/DOMAIN.md), expanded into the words
# the CIM-10 FR labels use. The abbreviation itself stays a query term too.
ABBREVIATIONS: dict[str, str] = {
    "hta": "hypertension arterielle essentielle",
    "htap": "hypertension arterielle pulmonaire",
    "dt1": "diabete sucre type 1",
    "dt2": "diabete sucre type 2",
    "did": "diabete sucre type 1",
    "dnid": "diabete sucre type 2",
    "bpco": "maladie pulmonaire obstructive chronique",
    "fa": "fibrillation auriculaire",
    "acfa": "fibrillation auriculaire",
    "idm": "infarctus aigu myocarde",
    "sca": "cardiopathie ischemique aigue",
    "oap": "insuffisance ventriculaire gauche",
    "ic": "insuffisance cardiaque",
    "icc": "insuffisance cardiaque congestive",
    "ivg": "insuffisance ventriculaire gauche",
    "irc": "maladie renale chronique",
    "ira": "insuffisance renale aigue",
    "irespc": "insuffisance respiratoire chronique",
    "avc": "accident vasculaire cerebral",
    "ait": "accident ischemique cerebral transitoire",
    "ep": "embolie pulmonaire",
    "tvp": "phlebite thrombophlebite vaisseaux profonds membres inferieurs",
    "pna": "nephrite tubulo interstitielle aigue",
    "iu": "infection voies urinaires",
    "hbp": "hyperplasie prostate",
    "rau": "retention urine",
    "saos": "apnee sommeil",
    "ei": "endocardite infectieuse",
    "pac": "pneumopathie",
    "sdra": "syndrome detresse respiratoire",
    "rgo": "reflux gastro oesophagien",
    "mici": "maladie crohn rectocolite hemorragique",
    "chc": "carcinome hepatocellulaire",
    "aomi": "atherosclerose arteres distales membres",
    "rao": "stenose valvulaire aortique",
    "sep": "sclerose plaques",
    "ma": "maladie alzheimer",
    "dmla": "degenerescence maculaire",
    "pr": "polyarthrite rhumatoide",
    "led": "lupus erythemateux disseminee",
    "ppr": "pseudopolyarthrite rhizomelique",
    "aeg": "alteration etat general",
    "omi": "oedeme localise",
    "tc": "lesion traumatique intracranienne",
    "oh": "alcool dependance",
    "atcd": "antecedents personnels",
    "vih": "immunodeficience humaine virus",
}

# Words of reports that the labels spell differently: each is also matched by its
# alternatives.
WORD_ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "pneumopathie": ("pneumonie",),
    "pneumonie": ("pneumopathie",),
    "pneumocoque": ("pneumoniae",),
    "staphylocoque": ("staphylococcus",),
    "streptocoque": ("streptococcus",),
    "coeur": ("cardiaque",),
    "rein": ("renal", "renale"),
    "poumon": ("pulmonaire",),
    "asthenie": ("fatigue",),
    "infection": ("infectieuse",),
    "cancer": ("maligne",),
    "insuline": ("insulinotraite",),
    "denutrition": ("malnutrition",),
    "severe": ("grave",),
    "ferriprive": ("fer",),
    "pyelonephrite": ("nephrite",),
    "insulinodependant": ("insulinotraite",),
    "tumeur": ("neoplasme",),
}

# Phrases of reports that the labels word differently.
SYNONYMS: dict[str, str] = {
    "cardiaque gauche": "ventriculaire gauche",
    "coeur gauche": "ventriculaire gauche",
    "crise cardiaque": "infarctus myocarde",
    "attaque cerebrale": "accident vasculaire cerebral",
}


def fold(text: str) -> str:
    """Lower case, no accents, ligatures split (œ -> oe); other non-ASCII characters dropped."""
    text = text.lower()
    if text.isascii():
        return text
    text = text.replace("œ", "oe").replace("æ", "ae").replace("’", "'")
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


@functools.lru_cache(maxsize=1 << 16)
def _stem(token: str) -> str:
    """Very light French stemming: plural and feminine endings of labels vs. reports."""
    if len(token) > 4 and token[-1] in "sx":
        token = token[:-1]
    if len(token) > 5 and token.endswith("e") and token[-2] in "luient":
        token = token[:-1]  # aigue -> aigu, arterielle -> arteriell
    return token


def tokenize(text: str) -> list[str]:
    return [_stem(t) for t in _TOKEN.findall(fold(text)) if t not in _STOPWORDS]


@dataclass(frozen=True, slots=True)
class _Group:
    """One query word and its alternatives (expansions of an abbreviation, a synonym)."""

    terms: tuple[str, ...]
    weight: float = 1.0


class SearchIndex:
    """Inverted index over (code, short label, long label) documents. Immutable once built."""

    K1 = 1.2
    B = 0.75

    def __init__(
        self, docs: Iterable[tuple[str, str, str]], leaves: frozenset[str] = frozenset()
    ) -> None:
        codes: list[str] = []
        labels: list[str] = []
        phrases: list[str] = []
        postings: dict[str, dict[int, int]] = defaultdict(dict)
        lengths: list[int] = []
        for index, (code, short, long) in enumerate(docs):
            codes.append(code)
            labels.append(long or short)
            long_tokens = tokenize(long or short)
            phrases.append(" ".join(long_tokens))
            tokens = long_tokens + tokenize(short) if long else long_tokens
            lengths.append(len(tokens))
            for token in tokens:
                row = postings[token]
                row[index] = row.get(index, 0) + 1
        self._codes = tuple(codes)
        self._labels = tuple(labels)
        self._phrases = tuple(phrases)
        self._lengths = array("i", lengths)
        self._avg_length = (sum(lengths) / len(lengths)) if lengths else 1.0
        # Compact arrays: fast to search, and small and fast to pickle in the disk cache.
        self._postings = {
            term: (array("i", row.keys()), array("I", row.values()))
            for term, row in postings.items()
        }
        self._vocabulary = tuple(sorted(self._postings))
        self._leaf = tuple(code in leaves for code in codes)
        n = max(len(codes), 1)
        self._idf = {
            term: math.log(1 + (n - len(row) + 0.5) / (len(row) + 0.5))
            for term, row in postings.items()
        }

    def __len__(self) -> int:
        return len(self._codes)

    def _expand_prefix(self, term: str) -> tuple[str, ...]:
        """A word being typed ("insuf") matches the vocabulary words it starts."""
        if term in self._postings or len(term) < 3:
            return (term,)
        start = bisect.bisect_left(self._vocabulary, term)
        found = []
        for word in self._vocabulary[start : start + 50]:
            if not word.startswith(term):
                break
            found.append(word)
        return tuple(found) or (term,)

    def _groups(self, text: str) -> list[_Group]:
        words = _TOKEN.findall(fold(text))
        # A synonym phrase gives each of its words the matching word of the replacement as
        # an alternative: "cardiaque gauche" also matches "ventriculaire gauche".
        alternatives: dict[int, set[str]] = defaultdict(set)
        for phrase, replacement in SYNONYMS.items():
            source, target = phrase.split(), replacement.split()
            for start in range(len(words) - len(source) + 1):
                if words[start : start + len(source)] == source and len(source) == len(target):
                    for offset, word in enumerate(target):
                        alternatives[start + offset].add(_stem(word))
        groups: list[_Group] = []
        for position, raw in enumerate(words):
            if raw in _STOPWORDS:
                continue
            if raw in ABBREVIATIONS:
                # The abbreviation stands for several label words, each a query word, so
                # "HTA" finds "hypertension essentielle".
                groups.extend(_Group((t,)) for t in tokenize(ABBREVIATIONS[raw]))
                continue
            extra = alternatives.get(position, set()) | {
                _stem(w) for w in WORD_ALTERNATIVES.get(raw, ())
            }
            terms = self._expand_prefix(_stem(raw)) + tuple(sorted(extra))
            groups.append(_Group(terms))
        return groups

    def _query_phrases(self, text: str) -> set[str]:
        """The query as a phrase, and with each synonym phrase replaced."""
        folded = " ".join(_TOKEN.findall(fold(text)))
        variants = {folded}
        for phrase, replacement in SYNONYMS.items():
            if f" {phrase} " in f" {folded} ":
                variants.add(f" {folded} ".replace(f" {phrase} ", f" {replacement} ").strip())
        words = folded.split()
        if any(w in ABBREVIATIONS for w in words):
            variants.add(" ".join(ABBREVIATIONS.get(w, w) for w in words))
        return {" ".join(tokenize(v)) for v in variants} - {""}

    def search(self, text: str, limit: int = 10) -> list[tuple[str, str, float]]:
        groups = self._groups(text)
        if not groups or limit <= 0:
            return []
        scores: dict[int, float] = defaultdict(float)
        covered: dict[int, float] = defaultdict(float)
        for group in groups:
            best: dict[int, float] = {}
            for term in group.terms:
                row = self._postings.get(term)
                if not row:
                    continue
                idf = self._idf[term]
                for doc, tf in zip(*row, strict=True):
                    norm = (
                        tf
                        * (self.K1 + 1)
                        / (
                            tf
                            + self.K1
                            * (1 - self.B + self.B * self._lengths[doc] / self._avg_length)
                        )
                    )
                    value = idf * norm * group.weight
                    if value > best.get(doc, 0.0):
                        best[doc] = value
            for doc, value in best.items():
                scores[doc] += value
                covered[doc] += group.weight
        total_weight = sum(g.weight for g in groups)
        query_phrases = self._query_phrases(text)
        query_bags = {frozenset(q.split()) for q in query_phrases}  # the label's words, any order
        ranked: list[tuple[float, int]] = []
        for doc, score in scores.items():
            coverage = covered[doc] / total_weight
            final = score * coverage * coverage
            phrase = self._phrases[doc]
            if phrase in query_phrases or query_bags.intersection((frozenset(phrase.split()),)):
                final *= 2.0
            elif any(q in phrase for q in query_phrases):
                final *= 1.5
            if self._leaf[doc]:
                final *= 1.1
            ranked.append((final, doc))
        ranked.sort(key=lambda item: (-item[0], self._codes[item[1]]))
        return [(self._codes[doc], self._labels[doc], score) for score, doc in ranked[:limit]]
