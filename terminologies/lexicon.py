"""A French clinical lexicon of CIM-10 FR: the ways clinicians write each diagnosis.

Four sources, each entry tagged with where it comes from (the hybrid coder learns how far
to trust each kind):

- `label`, `label_variant`: the ATIH labels of CIM-10 FR and generic variants of them
  (brackets unfolded, "sans précision" tails cut, parentheses dropped);
- `cim11`: the French CIM-11 titles, mapped back through the WHO crosswalk where WHO calls
  the two codes equivalent (modern phrasings: "Cardiomyopathie dilatée" -> I42.0);
- the curated files of `terminologies/data/lexicon/*.tsv`, one per group of specialties,
  reviewable by a DIM: `abbreviation` (HTA, BPCO, FA...), `synonym`, `variant` (adjectival,
  plural, word order), `eponym`, `treatment` (a drug whose long-term use is itself coded:
  an anticoagulant -> Z92.1). Format: `codes  term  kind  match  note`, codes canonical and
  codable, several joined by `|` when one phrase means them all (a dagger/asterisk pair);
  `match` is `exact` (case-sensitive: short abbreviations that collide with ordinary words)
  or `fold` (case and accents ignored);
- `learned`: phrases mined from a hospital's own coded stays (`cimcoder.training.vocabulary`),
  added per model by the caller.

`Lexicon.for_terminology("cim11")` maps the whole lexicon to CIM-11 stems through the
crosswalk, so a CIM-11 label space uses the same knowledge.
"""

from __future__ import annotations

import csv
import functools
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cimcoder.terminologies.errors import TerminologyFileError

logger = logging.getLogger(__name__)

LEXICON_DIR = Path(__file__).parent / "data" / "lexicon"
LEXICON_COLUMNS = ("codes", "term", "kind", "match", "note")
CURATED_KINDS = ("abbreviation", "synonym", "variant", "eponym", "treatment")
Kind = Literal[
    "label", "label_variant", "cim11", "abbreviation", "synonym", "variant", "eponym", "treatment",
    "learned",
]
KINDS: tuple[str, ...] = ("label", "label_variant", "cim11", *CURATED_KINDS, "learned")
Match = Literal["exact", "fold"]
MIN_TERM_CHARS = 2


@dataclass(frozen=True, slots=True)
class LexiconEntry:
    """One way of writing one diagnosis (or a pair of codes written as one phrase)."""

    codes: tuple[str, ...]
    term: str
    kind: Kind
    match: Match = "fold"
    source: str = ""
    note: str = ""


@dataclass(frozen=True)
class Lexicon:
    """Entries of one terminology; immutable, built once per process (`load_lexicon`)."""

    terminology: str
    edition: str
    entries: tuple[LexiconEntry, ...]

    def __len__(self) -> int:
        return len(self.entries)

    def codes(self) -> set[str]:
        return {c for e in self.entries for c in e.codes}

    def counts(self) -> dict[str, int]:
        """Entries per kind, in `KINDS` order."""
        out = dict.fromkeys(KINDS, 0)
        for e in self.entries:
            out[e.kind] += 1
        return {k: v for k, v in out.items() if v}

    def with_entries(self, extra: Iterable[LexiconEntry]) -> Lexicon:
        return Lexicon(self.terminology, self.edition, self.entries + tuple(extra))

    def for_terminology(self, terminology: str) -> Lexicon:
        """The same lexicon with codes mapped to `terminology` (cim10 -> cim11 only)."""
        if terminology == self.terminology:
            return self
        if (self.terminology, terminology) != ("cim10", "cim11"):
            raise TerminologyFileError(f"cannot map a {self.terminology} lexicon to {terminology}")
        from cimcoder.terminologies import load_crosswalk

        crosswalk = load_crosswalk()
        mapped: list[LexiconEntry] = []
        cache: dict[str, tuple[str, ...]] = {}
        for entry in self.entries:
            codes: list[str] = []
            for code in entry.codes:
                if code not in cache:
                    try:
                        targets = crosswalk.to_cim11(code)
                    except Exception:  # an entry the crosswalk cannot read: dropped, not fatal
                        targets = []
                    cache[code] = tuple(
                        dict.fromkeys(t.code.split("&")[0].split("/")[0] for t in targets if t.primary)
                    )
                codes.extend(cache[code])
            if codes:
                mapped.append(
                    LexiconEntry(tuple(dict.fromkeys(codes)), entry.term, entry.kind, entry.match,
                                 entry.source, entry.note)
                )
        from cimcoder.terminologies import load_cim11

        return Lexicon("cim11", load_cim11().edition, tuple(mapped))


# ----------------------------------------------------------------------------- label variants

_PAREN = re.compile(r"\s*\([^()]*\)")
_BRACKET = re.compile(r"\s*\[([^\[\]]*)\]")
_WORD_BEFORE_BRACKET = re.compile(r"(\S+)\s*\[([^\[\]]*)\]")
_TAILS = re.compile(
    r",\s*(sans précision|non précisée?s?|sai|nca|sans complication|autres? et sans "
    r"précision|non classée?s? ailleurs|non spécifiée?s?)\b.*$",
    re.IGNORECASE,
)
_USELESS_START = re.compile(r"^(autres?|certaines?)\b", re.IGNORECASE)


def label_variants(label: str) -> set[str]:
    """Shorter or unfolded spellings of an ATIH label that reports actually use.

    "Fibrillation auriculaire chronique [permanente]" also gives "fibrillation auriculaire
    chronique", "... chronique permanente" and "fibrillation auriculaire permanente";
    "Diabète sucré de type 2, sans précision" also gives "Diabète sucré de type 2".
    """
    out = {label.strip()}
    if "[" in label:
        out.add(_BRACKET.sub("", label).strip())
        out.add(_BRACKET.sub(r" \1", label).strip())
        out.add(_WORD_BEFORE_BRACKET.sub(r"\2", label).strip())
    for base in list(out):
        no_paren = _PAREN.sub("", base).strip()
        if no_paren:
            out.add(no_paren)
    for base in list(out):
        cut = _TAILS.sub("", base).strip(" ,")
        if len(cut) >= 4:
            out.add(cut)
    return {re.sub(r"\s+", " ", v) for v in out if len(v) >= 4 and not _USELESS_START.match(v)}


# ----------------------------------------------------------------------------- sources


def label_entries(terminology: str = "cim10") -> Iterator[LexiconEntry]:
    """Entries from the terminology's own labels (every code that is not deleted)."""
    from cimcoder.terminologies import load_terminology

    term = load_terminology(terminology)
    for code in term.codes():
        concept = term.get(code)
        if concept is None or getattr(concept, "deleted", False):
            continue
        labels = {x for x in (concept.label, concept.long_label) if x}
        variants: set[str] = set()
        for label in labels:
            variants |= label_variants(label)
        for text in sorted(variants):
            kind: Kind = "label" if text in labels else "label_variant"
            yield LexiconEntry((code,), text, kind, "fold", f"{terminology}:{term.edition}")


def cim11_title_entries() -> Iterator[LexiconEntry]:
    """French CIM-11 titles whose WHO mapping to CIM-10 is an equivalence."""
    from cimcoder.terminologies import load_cim10, load_cim11, load_crosswalk

    cim10, cim11, crosswalk = load_cim10(), load_cim11(), load_crosswalk()
    for code in cim11.codes():
        concept = cim11.get(code)
        if concept is None or not concept.label:
            continue
        try:
            targets = crosswalk.to_cim10(code)
        except Exception:
            continue
        codes = tuple(
            t.code
            for t in targets
            if t.primary and t.relation == "Equivalent" and t.via is None and t.code in cim10
        )
        if not codes:
            continue
        for text in sorted(label_variants(concept.label)):
            yield LexiconEntry(codes, text, "cim11", "fold", f"cim11:{cim11.edition}")


def read_lexicon_file(path: str | Path) -> list[LexiconEntry]:
    """Entries of one curated TSV file; raises TerminologyFileError naming the bad line."""
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise TerminologyFileError(f"cannot read lexicon file {path}: {exc}") from None
    entries: list[LexiconEntry] = []
    with handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != LEXICON_COLUMNS:
            raise TerminologyFileError(
                f"{path}: the header must be {' / '.join(LEXICON_COLUMNS)} (tab-separated)"
            )
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(LEXICON_COLUMNS):
                raise TerminologyFileError(
                    f"{path}:{line}: {len(row)} columns, expected {len(LEXICON_COLUMNS)}"
                )
            codes, term, kind, match, note = (cell.strip() for cell in row)
            if kind not in CURATED_KINDS:
                raise TerminologyFileError(
                    f"{path}:{line}: kind {kind!r} is not one of {', '.join(CURATED_KINDS)}"
                )
            if match not in ("exact", "fold"):
                raise TerminologyFileError(f"{path}:{line}: match {match!r} is not exact or fold")
            if len(term) < MIN_TERM_CHARS:
                raise TerminologyFileError(f"{path}:{line}: term {term!r} is too short")
            parts = tuple(c.strip() for c in codes.split("|") if c.strip())
            if not parts:
                raise TerminologyFileError(f"{path}:{line}: no code")
            entries.append(LexiconEntry(parts, term, kind, match, path.name, note))  # type: ignore[arg-type]
    return entries


def check_entries(
    entries: Sequence[LexiconEntry], terminology: str = "cim10"
) -> list[tuple[LexiconEntry, str]]:
    """Problems of curated entries: unknown, non-canonical, non-codable or deleted codes."""
    from cimcoder.terminologies import load_terminology

    term = load_terminology(terminology)
    problems: list[tuple[LexiconEntry, str]] = []
    for entry in entries:
        for code in entry.codes:
            concept = term.get(code)
            if concept is None:
                why = f"unknown code {code}"
            elif concept.code != code:
                why = f"write {concept.code}, not {code}"
            elif getattr(concept, "deleted", False):
                why = f"{code} is deleted"
            elif concept.restrictions is not None and not concept.restrictions.codable:
                why = f"{code} is not codable"
            else:
                continue
            problems.append((entry, f"{entry.source}: {entry.term!r}: {why}"))
    return problems


# ----------------------------------------------------------------------------- still current

def read_curated_table(path: str | Path, columns: list[str]) -> list[tuple[int, list[str]]]:
    """(line number, cells) of each non-blank line of a curated TSV file whose header is
    `columns`; an unreadable file or another header is a `TerminologyFileError`."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TerminologyFileError(f"cannot read {path}: {exc}") from None
    if not lines or lines[0].split("\t") != columns:
        raise TerminologyFileError(f"{path}: the header must be {' / '.join(columns)}")
    return [(n, line.split("\t")) for n, line in enumerate(lines[1:], start=2) if line.strip()]


STILL_CURRENT_FILE = Path(__file__).parent / "data" / "still_current.tsv"
STILL_CURRENT_QUALIFIERS = ("history", "family")


@dataclass(frozen=True)
class StillCurrent:
    """CIM-10 codes whose mention under a qualifier is still a current diagnosis of the stay.

    "ATCD : HTA, diabète de type 2, FA" lists treated chronic diseases: the DIM codes them as
    DAS, they are not healed history. And a code that itself says the past or a relative
    (Z86 personal history, I25.2 old infarction, Z80 family history of cancer) is what a
    history or family mention *means*. The curated file `data/still_current.tsv` (codes as
    CIM-10 categories or codes, a qualifier, a note) lists them; acute events (infarction,
    stroke, embolism) and cancers (in remission: Z85) are not in it. CIM-10 only.
    """

    prefixes: dict[str, tuple[str, ...]]  # qualifier -> undotted code prefixes

    def covers(self, codes: Sequence[str], qualifier: str) -> bool:
        """True when every code is still current under `qualifier` (none given: False)."""
        prefixes = self.prefixes.get(qualifier, ())
        keys = [c.replace(".", "").upper() for c in codes]
        return bool(keys) and bool(prefixes) and all(k.startswith(prefixes) for k in keys)

    @classmethod
    def read(cls, path: str | Path = STILL_CURRENT_FILE) -> StillCurrent:
        out: dict[str, list[str]] = {q: [] for q in STILL_CURRENT_QUALIFIERS}
        for line_no, cells in read_curated_table(path, ["codes", "qualifier", "note"]):
            if len(cells) != 3 or cells[1] not in out or not cells[0].split():
                raise TerminologyFileError(
                    f"{path}:{line_no}: expected codes, one of {'/'.join(out)}, a note"
                )
            out[cells[1]].extend(c.replace(".", "").upper() for c in cells[0].split())
        return cls({q: tuple(v) for q, v in out.items()})


@functools.lru_cache(maxsize=2)
def still_current(terminology: str = "cim10") -> StillCurrent:
    """The shipped still-current codes (cached); none for CIM-11."""
    return StillCurrent.read() if terminology == "cim10" else StillCurrent({})


def check_still_current(path: str | Path = STILL_CURRENT_FILE) -> list[str]:
    """Codes of the still-current file that CIM-10 FR does not know (as code or category)."""
    from cimcoder.terminologies import load_terminology

    term = load_terminology("cim10")
    known = {c.replace(".", "").upper() for c in term.codes()}
    table = StillCurrent.read(path)
    return [f"{path}: unknown code {p} ({q})" for q, ps in table.prefixes.items()
            for p in ps if p not in known]


def curated_entries(directory: str | Path = LEXICON_DIR) -> list[LexiconEntry]:
    """Every curated file of `directory`, in file-name order."""
    entries: list[LexiconEntry] = []
    for path in sorted(Path(directory).glob("*.tsv")):
        entries.extend(read_lexicon_file(path))
    return entries


# CIM-10: "a fracture not indicated as closed or open should be classified as closed"; ATIH
# splits each fracture category into a closed (5th character 0) and an open (1) code. Reports
# write the clinician's phrase with or without the word: "fracture fermée du col fémoral".
_FRACTURE = re.compile(r"(?i)^fractures?\s+(?!ferm|ouvert)(.+)$")


def fracture_entries(entries: Iterable[LexiconEntry], terminology: Any) -> list[LexiconEntry]:
    """"fracture fermée ..." and "fracture ouverte ..." spellings of the curated fracture
    phrases ("fracture du col fémoral" -> S72.00, and S72.01 when said open)."""
    out: list[LexiconEntry] = []
    for entry in entries:
        found = _FRACTURE.match(entry.term)
        if len(entry.codes) != 1 or found is None:
            continue
        closed = terminology.get(entry.codes[0])
        if closed is None or not closed.label.startswith("Fracture fermée"):
            continue
        rest = found.group(1)
        out.append(LexiconEntry(entry.codes, f"fracture fermée {rest}", "variant", entry.match,
                                f"{entry.source} (fracture fermée)", entry.note))
        sibling = entry.codes[0][:-1] + "1"
        opened = terminology.get(sibling)
        if opened is not None and opened.label == closed.label.replace("fermée", "ouverte", 1):
            out.append(LexiconEntry((sibling,), f"fracture ouverte {rest}", "variant", entry.match,
                                    f"{entry.source} (fracture ouverte)", entry.note))
    return out


@functools.lru_cache(maxsize=4)
def load_lexicon(
    terminology: str = "cim10", *, labels: bool = True, cim11_titles: bool = True
) -> Lexicon:
    """The shipped lexicon: labels, CIM-11 titles and the curated files (cached).

    Curated entries whose codes are not valid in the installed edition are dropped with a
    warning (a curated file written for another edition must not stop the coder).
    """
    from cimcoder.terminologies import load_cim10

    cim10 = load_cim10()
    curated = curated_entries()
    problems = check_entries(curated, "cim10")
    if problems:
        logger.warning(
            "%d curated lexicon entries are not valid in %s and are skipped (first: %s)",
            len(problems), cim10.edition, problems[0][1],
        )
        bad = {id(entry) for entry, _ in problems}
        curated = [e for e in curated if id(e) not in bad]
    entries: list[LexiconEntry] = list(curated)
    entries.extend(fracture_entries(curated, cim10))
    if labels:
        entries.extend(label_entries("cim10"))
    if cim11_titles:
        entries.extend(cim11_title_entries())
    lexicon = Lexicon("cim10", cim10.edition, tuple(entries))
    logger.info("lexicon: %d entries (%s)", len(lexicon), lexicon.counts())
    return lexicon.for_terminology(terminology)
