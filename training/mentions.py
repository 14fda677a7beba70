"""Diagnosis mentions in French clinical text: lexicon matches with their context.

`MentionExtractor(lexicon)` runs one edsnlp pipeline: sentences, the normaliser, CRH
sections (`eds.sections`, with the section titles French reports use), the lexicon's terms
(case-sensitive for short abbreviations, accent- and case-insensitive otherwise, and
optionally fuzzy through simstring) and edsnlp's qualifiers: negation, hypothesis, family,
history and reported speech. A few measurements that name a diagnosis by themselves
(kaliémie, natrémie, FEVG, IMC) become mentions too.

Each `Mention` carries its codes, its character span, the lexicon kind it came from, its
qualifiers and its section: what the hybrid coder's reranker and the safety rule read, and
the evidence a DIM coder sees.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cimcoder.terminologies.lexicon import still_current

if TYPE_CHECKING:
    from cimcoder.terminologies.lexicon import Lexicon

logger = logging.getLogger(__name__)

QUALIFIERS = ("negation", "hypothesis", "family", "history", "reported_speech")
SPAN_GROUP = "cimcoder_lex"

# Section titles of French comptes-rendus (normalised: lower case, no accents), grouped
# under the names the coder reasons with. edsnlp's own titles are added to these.
SECTION_TITLES: dict[str, list[str]] = {
    "motif": [
        r"motifs? (?:d'|de l'|de )?(?:hospitalisation|admission|entree|consultation|recours|transfert)",
        r"motifs?",
        r"raison de l'hospitalisation",
    ],
    "antecedents": [
        r"antecedents?(?: (?:medicaux|chirurgicaux|personnels|medico-chirurgicaux))?(?: et (?:chirurgicaux|familiaux))?",
        r"atcds?",
        r"facteurs de risques?(?: cardio-?vasculaires?)?",
    ],
    "antecedents_familiaux": [r"antecedents familiaux", r"atcds? familiaux"],
    "mode_de_vie": [r"mode de vie", r"habitus", r"contexte social", r"contexte de vie"],
    "traitement_entree": [
        r"traitements? (?:habituels?|a l'entree|d'entree|en cours|a domicile|actuels?)",
    ],
    "allergies": [r"allergies?"],
    "histoire": [
        r"histoire de la maladie(?: actuelle)?",
        r"anamnese",
        r"histoire recente",
        r"resume clinique",
    ],
    "examen": [r"examen clinique(?: (?:a l'entree|d'entree|initial))?", r"examen (?:a l'entree|d'entree)"],
    "examens_complementaires": [
        r"examens? complementaires?",
        r"examens? paracliniques?",
        r"biologie",
        r"imagerie",
        r"bilan (?:biologique|paraclinique)",
    ],
    "evolution": [r"evolution(?: (?:dans le service|clinique|et prise en charge))?", r"prise en charge", r"deroulement du sejour"],
    "conclusion": [
        r"conclusion(?: (?:de sortie|medicale|du sejour))?",
        r"au total",
        r"synthese(?: medicale)?",
        r"diagnostics? (?:retenus?|de sortie|principal|final|finaux)",
        r"diagnostics? associes?",
    ],
    "traitement_sortie": [
        r"traitements? (?:de sortie|a la sortie)",
        r"ordonnance de sortie",
        r"prescriptions? de sortie",
    ],
    "suivi": [r"suivi", r"devenir", r"modalites de sortie", r"conduite a tenir", r"rendez-vous"],
}
SECTIONS = (*SECTION_TITLES, "autre")

# edsnlp's own section names -> ours.
_EDS_SECTIONS = {
    "antécédents": "antecedents",
    "antécédents familiaux": "antecedents_familiaux",
    "traitements entrée": "traitement_entree",
    "conclusion": "conclusion",
    "conclusion entrée": "histoire",
    "habitus": "mode_de_vie",
    "diagnostic": "conclusion",
    "examens": "examen",
    "examens complémentaires": "examens_complementaires",
    "facteurs de risques": "antecedents",
    "histoire de la maladie": "histoire",
    "motif": "motif",
    "prescriptions": "traitement_sortie",
    "traitements sortie": "traitement_sortie",
    "evolution": "evolution",
    "modalites sortie": "suivi",
    "allergies": "allergies",
}


@dataclass(frozen=True, slots=True)
class Mention:
    """One diagnosis mention: codes, span, where it came from, qualifiers, section."""

    codes: tuple[str, ...]
    start: int
    end: int
    kind: str  # a lexicon kind (label, abbreviation, ...) or "measurement"
    negated: bool = False
    hypothesis: bool = False
    family: bool = False
    history: bool = False
    reported: bool = False
    section: str = "autre"
    # A history or family cue that does not apply to these codes (treated chronic disease,
    # history code): see `cimcoder.terminologies.lexicon.StillCurrent`.
    still_current: bool = False

    @property
    def affirmed(self) -> bool:
        """Neither negated, hypothetical, a relative's, past history nor reported speech."""
        return not (self.negated or self.hypothesis or self.family or self.history or self.reported)

    def reason(self) -> str | None:
        """Why the mention does not count as a current diagnosis (French), or None."""
        if self.negated:
            return "mention niée"
        if self.family:
            return "antécédent familial"
        if self.hypothesis:
            return "hypothèse non confirmée"
        if self.history:
            return "antécédent"
        if self.reported:
            return "discours rapporté"
        return None


# ----------------------------------------------------------------------------- measurements

_NUM = r"(\d{1,3}(?:[.,]\d{1,2})?)"
_GAP = r"[^\n\d]{0,25}?"


@dataclass(frozen=True)
class _Measure:
    name: str
    pattern: re.Pattern[str]
    rules: tuple[tuple[float | None, float | None, tuple[str, ...]], ...]  # [lo, hi) -> codes


def _measure(name: str, words: str, rules: Sequence[tuple[float | None, float | None, tuple[str, ...]]]) -> _Measure:
    return _Measure(name, re.compile(rf"(?i)\b(?:{words}){_GAP}{_NUM}"), tuple(rules))


# Thresholds of usual French practice; a value names the disorder only when clearly outside
# the norm, so borderline values add nothing.
MEASURES: tuple[_Measure, ...] = (
    _measure("kaliemie", r"kali[ée]mie|K\+|potassium", [
        (None, 2.5, ("E87.60",)), (2.5, 3.4, ("E87.68",)), (5.5, 6.5, ("E87.58",)), (6.5, 9.9, ("E87.50",)),
    ]),
    _measure("natremie", r"natr[ée]mie|Na\+|sodium", [
        (None, 120.0, ("E87.10",)), (120.0, 132.0, ("E87.18",)), (146.0, 150.1, ("E87.08",)), (150.1, 200.0, ("E87.00",)),
    ]),
    # FEVG names no disease; it settles the French extension of a heart failure code
    # (I50.0x / I50.1x: 0 >= 50 %, 1 40-49 %, 2 < 40 %).
    _measure("fevg", r"FEVG|fraction d'[ée]jection(?: ventriculaire gauche)?", [
        (None, 40.0, ("I50.x2",)), (40.0, 50.0, ("I50.x1",)), (50.0, 90.0, ("I50.x0",)),
    ]),
    _measure("imc", r"IMC|indice de masse corporelle", [
        (30.0, 35.0, ("E66.x4",)), (35.0, 40.0, ("E66.x5",)), (40.0, 50.0, ("E66.x6",)), (50.0, 90.0, ("E66.x7",)),
    ]),
)


def _terminology_codes(name: str) -> list[str]:
    from cimcoder.terminologies import load_terminology

    return list(load_terminology(name).codes())


def _measure_codes(lexicon_codes: set[str], pattern: str) -> tuple[str, ...]:
    """Codes of the lexicon matching a pattern where 'x' is any character (I50.x2)."""
    rx = re.compile("^" + re.escape(pattern).replace("x", ".") + "$")
    return tuple(sorted(c for c in lexicon_codes if rx.match(c)))


def _value(raw: str) -> float:
    return float(raw.replace(",", "."))


# ----------------------------------------------------------------------------- extractor


def _section_patterns() -> dict[str, list[str]]:
    from edsnlp.pipes.misc.sections import patterns as eds_patterns

    titles: dict[str, list[str]] = {name: list(p) for name, p in SECTION_TITLES.items()}
    for eds_name, pats in eds_patterns.sections.items():
        ours = _EDS_SECTIONS.get(eds_name)
        if ours is not None:
            titles[ours].extend(pats)
    # A title starts a line (after at most 5 characters: bullets, numbers) and is followed by
    # a colon or the end of the line, so a sentence starting with "Evolution" is no title.
    wrap = r"(?<=(?:\n|^)[^\n\w]{{0,5}})(?:{})(?=[ \t]*(?::|\n|-\s))"
    return {name: [wrap.format("|".join(sorted(set(p), key=len, reverse=True)))] for name, p in titles.items()}


class MentionExtractor:
    """The lexicon matched on report text with edsnlp, mentions qualified and sectioned."""

    def __init__(
        self,
        lexicon: Lexicon,
        *,
        fuzzy: bool = False,
        fuzzy_threshold: float = 0.85,
        qualifiers: Sequence[str] = QUALIFIERS,
        measurements: bool = True,
    ) -> None:
        self.lexicon = lexicon
        self.fuzzy = fuzzy
        self.fuzzy_threshold = fuzzy_threshold
        self.qualifiers = tuple(qualifiers)
        self.measurements = measurements
        self._nlp: Any = None
        self._keys: dict[str, tuple[tuple[str, ...], str]] = {}
        self._still = still_current(lexicon.terminology)
        self._insulin_sibling = insulin_siblings(lexicon.terminology)
        self._folded: dict[str, list[tuple[tuple[str, ...], str]]] | None = None
        from cimcoder.terminologies import load_terminology

        self._terminology = load_terminology(lexicon.terminology)
        codes = set(_terminology_codes(lexicon.terminology))
        self._measures = [
            (m, tuple((lo, hi, tuple(c for p in pats for c in (_measure_codes(codes, p) if "x" in p else (p,)) if c in codes)) for lo, hi, pats in m.rules))
            for m in MEASURES
        ]

    def __getstate__(self) -> dict[str, Any]:  # the spaCy pipeline is rebuilt after unpickling
        state = self.__dict__.copy()
        state["_nlp"] = None
        return state

    def _terms(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        exact: dict[str, list[str]] = {}
        fold: dict[str, list[str]] = {}
        for entry in self.lexicon.entries:
            key = f"{entry.kind}#{'|'.join(entry.codes)}"
            self._keys[key] = (entry.codes, entry.kind)
            (exact if entry.match == "exact" else fold).setdefault(key, []).append(entry.term)
        return exact, fold

    def pipeline(self) -> Any:
        if self._nlp is not None:
            return self._nlp
        import edsnlp
        import edsnlp.pipes as eds

        t0 = time.perf_counter()
        exact, fold = self._terms()
        nlp = edsnlp.blank("eds")
        nlp.add_pipe(eds.normalizer())
        nlp.add_pipe(eds.sentences())
        nlp.add_pipe(eds.sections(sections=_section_patterns(), add_patterns=False))
        setter = {SPAN_GROUP: True}
        for name, terms, attr in (("lex_exact", exact, "TEXT"), ("lex_fold", fold, "NORM")):
            if terms:
                nlp.add_pipe(eds.terminology(name=name, terms={}, label="lex", attr=attr,
                                             span_setter=setter))
                _add_terms(nlp, nlp.get_pipe(name).phrase_matcher, terms, attr)
        if self.fuzzy:
            long_terms = {k: [t for t in v if len(t) >= 12] for k, v in fold.items()}
            long_terms = {k: v for k, v in long_terms.items() if v}
            nlp.add_pipe(eds.terminology(
                name="lex_fuzzy", terms=long_terms, label="lex_fuzzy", attr="NORM",
                term_matcher="simstring",
                term_matcher_config={"threshold": self.fuzzy_threshold, "measure": "dice"},
                span_setter=setter,
            ))
        getter = {SPAN_GROUP: True}
        factories = {
            "negation": lambda: eds.negation(
                span_getter=getter, following=_negation_following(), pseudo=_negation_pseudo()
            ),
            "hypothesis": lambda: eds.hypothesis(span_getter=getter),
            "family": lambda: eds.family(span_getter=getter, use_sections=True),
            "history": lambda: eds.history(span_getter=getter, use_sections=True),
            "reported_speech": lambda: eds.reported_speech(span_getter=getter),
        }
        for q in self.qualifiers:
            nlp.add_pipe(factories[q]())
        self._nlp = nlp
        logger.info("mention pipeline (%d terms) built in %.1fs",
                    sum(map(len, exact.values())) + sum(map(len, fold.values())), time.perf_counter() - t0)
        return nlp

    def __call__(self, text: str) -> list[Mention]:
        return self.pipe([text])[0]

    def pipe(self, texts: Iterable[str]) -> list[list[Mention]]:
        out: list[list[Mention]] = []
        for text in texts:
            found: list[Mention] = []
            for offset, part in _segments(text):
                found.extend(_shift(m, offset) for m in self._one(part))
            out.append(found)
        return out

    def _one(self, text: str) -> list[Mention]:
        nlp = self.pipeline()
        doc = nlp.make_doc(text)
        sorted_ = False
        for name, proc in nlp.pipeline:
            if name in _QUALIFIER_PIPES and not sorted_:
                # Qualifiers walk the spans in text order; the matchers appended theirs
                # one after the other (unsorted spans would go unqualified).
                _sort_span_group(doc)
                sorted_ = True
            doc = proc(doc)
        return self._mentions(doc, text)

    def _mentions(self, doc: Any, text: str) -> list[Mention]:
        sections = _section_spans(doc)
        found: dict[tuple[tuple[str, ...], int, int], Mention] = {}
        for span in doc.spans.get(SPAN_GROUP, []):
            codes, kind = self._keys.get(span.kb_id_, ((), ""))
            if not codes:
                continue
            if span.label_ == "lex_fuzzy":
                kind = "fuzzy"
            ext = span._
            section = _section_at(sections, span.start_char)
            # What the antécédents sections list is past or family history by where it is
            # written (edsnlp's section cue expects its own section names, not ours).
            history = bool(getattr(ext, "history", False)) or section == "antecedents"
            family = bool(getattr(ext, "family", False)) or section == "antecedents_familiaux"
            kept_history = history and not self._still.covers(codes, "history")
            kept_family = family and not self._still.covers(codes, "family")
            mention = Mention(
                codes=codes,
                start=span.start_char,
                end=span.end_char,
                kind=kind,
                negated=bool(getattr(ext, "negation", False)),
                hypothesis=bool(getattr(ext, "hypothesis", False)),
                family=kept_family,
                history=kept_history,
                reported=bool(getattr(ext, "reported_speech", False)),
                section=section,
                still_current=(history and not kept_history) or (family and not kept_family),
            )
            key = (codes, mention.start, mention.end)
            if key not in found or _KIND_RANK.get(kind, 9) < _KIND_RANK.get(found[key].kind, 9):
                found[key] = mention
        for m in [*_staged(text, list(found.values())), *self._completed(text, list(found.values()))]:
            found.setdefault((m.codes, m.start, m.end), m)
        found = _longest(found)
        if self.measurements:
            named = [m for m in found.values() if m.affirmed]
            for m in _narrowed(self._measured(text, sections), named):
                found.setdefault((m.codes, m.start, m.end), m)
            for m in self._insulin_treated(text, list(found.values())):
                found.setdefault((m.codes, m.start, m.end), m)
        return sorted(found.values(), key=lambda m: (m.start, m.end, m.codes))

    def _completed(self, text: str, mentions: Sequence[Mention]) -> Iterator[Mention]:
        """French writes a diagnosis' qualifiers after it, often with others between: "FA
        rapide paroxystique", "pneumopathie aiguë communautaire lobaire inférieure droite",
        "infarctus cérébral sylvien gauche d'origine cardio-embolique". The head of a mention
        (its first one or two words) followed by a later word of the same clause that the
        lexicon knows as a more precise code of the same category ("FA paroxystique": I48.0
        beside "FA rapide": I48.9) is a mention of that code, over the whole phrase, with the
        first mention's qualifiers."""
        terms = self._folded_terms()
        for m in mentions:
            if len(m.codes) != 1:
                continue
            precision = self._precision(m.codes[0])
            clause = _CLAUSE.match(text, m.end)
            words = list(_WORD.finditer(text, m.end, clause.end() if clause else m.end))[:_COMPLETION_WORDS]
            head = text[m.start:m.end].split()
            for n in (1, 2)[: len(head)]:
                for before, w in zip([None, *words], words, strict=False):
                    if before is not None and _fold(before.group()) in _DENYING:
                        continue  # "non compliquée", "sans complication": not said
                    for codes, kind in terms.get(_fold(" ".join([*head[:n], w.group()])), ()):
                        code = codes[0]
                        if code[:3] == m.codes[0][:3] and self._precision(code) > precision:
                            yield dataclasses.replace(m, codes=codes, end=w.end(), kind=kind)

    def _precision(self, code: str) -> int:
        concept = self._terminology.get(code)
        return 0 if concept is None else concept.precision

    def _folded_terms(self) -> dict[str, list[tuple[tuple[str, ...], str]]]:
        if self._folded is None:
            self._folded = defaultdict(list)
            for e in self.lexicon.entries:
                if len(e.codes) == 1 and e.kind not in ("learned", "treatment"):
                    self._folded[_fold(e.term)].append((e.codes, e.kind))
        return self._folded

    def _insulin_treated(self, text: str, mentions: list[Mention]) -> Iterable[Mention]:
        """The drugs say what the words do not (ATIH: E11.x0 insulinotraité / E11.x8 non
        insulinotraité ou sans précision): a report that gives insulin turns an affirmed
        "non insulinotraité ou sans précision" diabetes code into its insulin-treated sibling,
        on the same span."""
        if not any(_insulin_given(text, match) for match in _INSULIN.finditer(text)):
            return
        for m in mentions:
            if not m.affirmed or len(m.codes) != 1:
                continue
            sibling = self._insulin_sibling.get(m.codes[0])
            if sibling is not None:
                yield Mention((sibling,), m.start, m.end, "treatment", section=m.section,
                              still_current=m.still_current)

    def _measured(self, text: str, sections: list[tuple[int, str]]) -> Iterable[Mention]:
        for measure, rules in self._measures:
            for match in measure.pattern.finditer(text):
                try:
                    value = _value(match.group(1))
                except ValueError:
                    continue
                for lo, hi, codes in rules:
                    if codes and (lo is None or value >= lo) and (hi is None or value < hi):
                        yield Mention(codes, match.start(), match.end(), "measurement",
                                      section=_section_at(sections, match.start()))


# "Diverticulite non compliquée", "fracture non déplacée", "infarctus non Q", "lymphome non
# hodgkinien": "non" denies the qualifier written after the diagnosis, not the diagnosis
# (edsnlp reads a following "non" as a negation). Only words that name no diagnosis themselves
# ("non diabétique", "non fumeur" still deny).
_NOT_A_DENIAL = (
    *(f"{w}{e}" for w in ("compliqué", "déplacé", "perforé", "équilibré", "contrôlé", "traité",
                          "opéré", "infecté", "rompu", "thrombosé", "ulcéré", "suppuré", "stabilisé",
                          "métastasé", "insulinotraité", "insulino-traité", "anticoagulé", "appareillé",
                          "substitué", "dialysé", "supplémenté", "transfusé", "documenté", "identifié",
                          "précisé", "exploré", "étiqueté", "daté", "typé", "réalisé")
      for e in ("", "e", "s", "es")),
    *(f"{w}{e}" for w in ("évolutif", "obstructif", "invasif", "occlusif", "érosif")
      for e in ("", "s")),
    *(f"{w}{e}" for w in ("évolutive", "obstructive", "invasive", "occlusive", "érosive", "sévère",
                          "grave", "toxique", "hémorragique", "valvulaire", "métastatique",
                          "spécifique", "ischémique", "allergique", "traumatique", "chirurgicale")
      for e in ("", "s")),
    *(f"{w}{e}" for w in ("sécrétant", "sténosant", "oblitérant", "récidivant", "proliférant", "insulinorequérant",
                          "insulinodépendant", "insulino-dépendant", "insulino-requérant")
      for e in ("", "e", "s", "es")),
    "rhumatismal", "rhumatismale", "fonctionnel", "fonctionnelle", "chirurgical", "hodgkinien",
    "hodgkinienne", "hodgkiniens", "à petites cellules", "Q", "ST+", "ST", "aigu", "aiguë",
)


def _negation_pseudo() -> list[str]:
    """edsnlp's pseudo-negations, and "non" + a qualifier of the diagnosis just named."""
    from edsnlp.pipes.qualifiers.negation import patterns

    return [*patterns.pseudo, *(f"non {w}" for w in _NOT_A_DENIAL), *(f"non-{w}" for w in _NOT_A_DENIAL)]


def _negation_following() -> list[str]:
    """edsnlp's cues written after the negated term, and the usual French ways of saying a
    diagnosis was considered then not kept ("une pneumopathie ... n'a pas été retenue")."""
    from edsnlp.pipes.qualifiers.negation import patterns

    ruled_out = [
        f"{lead}{word}{end}"
        for lead in ("non ", "pas ", "pas été ", "n'a pas été ", "n'ont pas été ")
        for word in ("retenu", "confirmé")
        for end in ("", "e", "s", "es")
    ]
    return [*patterns.following, *ruled_out, "infirmé", "infirmée", "infirmés", "infirmées"]



_CLAUSE = re.compile(r"[^.;:()\n]{0,60}")
_WORD = re.compile(r"[\w'’+-]+")
_COMPLETION_WORDS = 6
_DENYING = {"non", "sans", "pas", "ni", "aucun", "aucune"}


def _fold(text: str) -> str:
    """Case, accents and spacing ignored (the lexicon's `fold` match)."""
    text = unicodedata.normalize("NFKD", text.replace("’", "'"))
    return " ".join("".join(c for c in text if not unicodedata.combining(c)).lower().split())


# A stage written after the disease names its code: "escarre sacrée de stade IV" (L89.3),
# "maladie rénale chronique stade 4" (N18.4). The staged mention spans the stage words and
# keeps the disease's qualifiers ("pas d'escarre de stade II" stays denied).
_STAGES: dict[str, dict[int, str]] = {
    "L89.9": {1: "L89.0", 2: "L89.1", 3: "L89.2", 4: "L89.3"},
    **{c: {n: f"N18.{n}" for n in range(1, 6)} for c in ("N18", "N18.9")},
}
_STAGE = re.compile(r"(?i)[^.;:\n]{0,30}?\bstade\s+(IV|V|I{1,3}|[1-5])(?:\s?[ab])?\b")
_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5}


def _staged(text: str, mentions: Sequence[Mention]) -> Iterator[Mention]:
    for m in mentions:
        stages = _STAGES.get(m.codes[0]) if len(m.codes) == 1 else None
        if stages is None:
            continue
        found = _STAGE.match(text, m.end)
        if found is None:
            continue
        raw = found.group(1).upper()
        code = stages.get(_ROMAN[raw] if raw in _ROMAN else int(raw))
        if code is not None:
            yield dataclasses.replace(m, codes=(code,), end=found.end())


def _narrowed(measured: Iterable[Mention], named: Sequence[Mention]) -> Iterator[Mention]:
    """A measurement names the French extension, the words name the disease: "FEVG 32 %"
    means I50.x2 (any heart failure), beside "insuffisance cardiaque congestive" (I50.0) it
    means I50.02; "IMC 33" beside "obésité" (E66.9) means E66.94. Each measurement is kept,
    followed by its codes under a subcategory the report names, when that narrows it."""
    subcategories = {c[:5] for m in named for c in m.codes if len(c) >= 5}
    for m in measured:
        yield m
        kept = tuple(c for c in m.codes if c[:5] in subcategories)
        if kept and len(kept) < len(m.codes):
            yield Mention(kept, m.start, m.end, "measurement", section=m.section)


def _longest(found: dict[tuple[tuple[str, ...], int, int], Mention]) -> dict[tuple[tuple[str, ...], int, int], Mention]:
    """Longest match wins: a term inside a longer matched term is not a mention of its own
    ("insuffisance rénale" in "insuffisance rénale chronique stade 3", "DT2" in "DT2 non
    insulinotraité", whose negation cue belongs to the longer term). Terms on the same span
    all stay (one phrase, several codes)."""
    spans = sorted({(start, end) for _, start, end in found}, key=lambda se: (se[0], -se[1]))
    inside: set[tuple[int, int]] = set()
    reach_start, reach_end = -1, -1  # the longest span seen so far that starts earliest
    for start, end in spans:
        if reach_start <= start and end <= reach_end and (start, end) != (reach_start, reach_end):
            inside.add((start, end))
        elif end > reach_end:
            reach_start, reach_end = start, end
    return {key: m for key, m in found.items() if (key[1], key[2]) not in inside}


# Insulin given or prescribed (brand names of the insulins sold in France), not "non
# insulinotraité" / "non insulino-requérant" / "sans insuline".
_INSULIN = re.compile(
    r"(?<!non )(?<!non-)(?<!sans )(?<!pas d')(?<!pas d’)\b(?:insuline|insulines|insulinoth[ée]rapie|"
    r"insulino-?trait[ée]e?|insulino-?requ[ée]rante?|lantus|levemir|tresiba|toujeo|abasaglar|"
    r"semglee|novorapid|humalog|apidra|fiasp|lyumjev|actrapid|umuline|insulatard|novomix|"
    r"mixtard|xultophy|suliqua)\b",
    re.IGNORECASE,
)


# Insulin that does not make the diabetes insulin-treated: denied before it in its sentence
# ("sans nécessité d'insuline", "pas d'indication à une insuline") or given for a while only
# ("insulinothérapie transitoire", "insuline le temps de l'infection").
_INSULIN_DENIED = re.compile(
    r"(?i)(?:\b(?:sans|pas|non|ni|aucune?)\b[^.,;\n]{0,40}|\barr[êe]t (?:de l'|de la |des |du ))$"
)
_INSULIN_TRANSIENT = re.compile(r"(?i)^[^.\n]{0,40}\b(?:transitoire|temporaire|le temps d)")


def _insulin_given(text: str, match: re.Match[str]) -> bool:
    start, end = match.span()
    denied = _INSULIN_DENIED.search(text, max(0, start - 60), start) is not None
    return not denied and _INSULIN_TRANSIENT.match(text[end : end + 60]) is None


@functools.lru_cache(maxsize=2)
def insulin_siblings(terminology: str) -> dict[str, str]:
    """CIM-10 FR codes "... non insulinotraité ou sans précision" -> their "insulinotraité"
    sibling (E11.98 -> E11.90), read from the labels."""
    if terminology != "cim10":
        return {}
    from cimcoder.terminologies import load_terminology

    term = load_terminology("cim10")
    out: dict[str, str] = {}
    for code in term.codes():
        if not code.endswith("8") or "non insulinotrait" not in _label_of(term, code):
            continue
        sibling = code[:-1] + "0"
        if "insulinotrait" in _label_of(term, sibling) and "non insulinotrait" not in _label_of(term, sibling):
            out[code] = sibling
    return out


def _label_of(term: Any, code: str) -> str:
    concept = term.get(code)
    return (getattr(concept, "label", "") or "").lower() if concept is not None else ""


# spaCy refuses texts over 1,000,000 characters and its memory grows with length: a huge
# report (a whole stay's documents, an export gone wrong) is read in segments cut at blank
# lines (or anywhere, for a text without any).
MAX_SEGMENT_CHARS = 100_000


def _segments(text: str) -> list[tuple[int, str]]:
    if len(text) <= MAX_SEGMENT_CHARS:
        return [(0, text)]
    out: list[tuple[int, str]] = []
    start = 0
    while start < len(text):
        end = min(start + MAX_SEGMENT_CHARS, len(text))
        if end < len(text):
            cut = text.rfind("\n\n", start + MAX_SEGMENT_CHARS // 2, end)
            end = cut + 2 if cut > 0 else end
        out.append((start, text[start:end]))
        start = end
    return out


def _shift(m: Mention, offset: int) -> Mention:
    if not offset:
        return m
    from dataclasses import replace

    return replace(m, start=m.start + offset, end=m.end + offset)


_QUALIFIER_PIPES = frozenset({"negation", "hypothesis", "family", "history", "reported_speech"})


def _sort_span_group(doc: Any) -> None:
    spans = list(doc.spans.get(SPAN_GROUP, []))
    doc.spans[SPAN_GROUP] = sorted(spans, key=lambda s: (s.start, s.end, s.kb_id_))


def _add_terms(nlp: Any, matcher: Any, terms: dict[str, list[str]], attr: str) -> None:
    """Add every term to an edsnlp phrase matcher in one batched pass of the tokenizer (and
    the normaliser for NORM): term by term, as `build_patterns` does, takes a minute for the
    whole CIM-10."""
    import edsnlp
    import edsnlp.pipes as eds

    keys = [key for key, texts in terms.items() for _ in texts]
    texts = [text for key_texts in terms.values() for text in key_texts]
    # Terms hold no pollution (bars, footers): the normaliser without its pollution regexes
    # gives the same NORM, twice as fast. Matching compares hashes, shared across vocabs.
    term_nlp = edsnlp.blank("eds")
    if attr == "NORM":
        term_nlp.add_pipe(eds.normalizer(pollution=False))
    docs = [term_nlp(text) for text in texts]
    grouped: dict[str, list[Any]] = {}
    for key, doc in zip(keys, docs, strict=True):
        grouped.setdefault(key, []).append(doc)
    for key, group in grouped.items():
        matcher.add(key, group)


# Several kinds can match the same span for the same codes: keep the most trusted.
_KIND_RANK = {k: i for i, k in enumerate(
    ("abbreviation", "synonym", "variant", "eponym", "label", "label_variant", "cim11", "learned", "fuzzy",
     "treatment")
)}


def _section_spans(doc: Any) -> list[tuple[int, str]]:
    """(start char, section name) of each section, in text order."""
    spans = []
    for span in doc.spans.get("sections", []):
        name = span.label_
        spans.append((span.start_char, name if name in SECTION_TITLES else _EDS_SECTIONS.get(name, "autre")))
    return sorted(spans)


def _section_at(sections: list[tuple[int, str]], start: int) -> str:
    name = "autre"
    for s, n in sections:
        if s > start:
            break
        name = n
    return name
