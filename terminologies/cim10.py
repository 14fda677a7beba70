"""CIM-10 FR à usage PMSI: the edsnlp-bundled table (default) and the ATIH yearly files."""

from __future__ import annotations

import bisect
import csv
import functools
import gzip
import importlib.metadata
import importlib.util
import io
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

from cimcoder.terminologies.cache import cached, file_digest
from cimcoder.terminologies.chapters import CIM10_CHAPTERS, Block, chapter_of_category, who_blocks
from cimcoder.terminologies.codes import dotted_cim10, normalize_code, undotted
from cimcoder.terminologies.errors import (
    InvalidCodeError,
    TerminologyError,
    TerminologyFileError,
    UnknownCodeError,
    UnknownEditionError,
)
from cimcoder.terminologies.model import Concept, Restrictions
from cimcoder.terminologies.table import ConceptTable

logger = logging.getLogger(__name__)

_DELETED = re.compile(r"\*{3}\s*SU\s*(\d{2,4})\s*\*{3}")
_SMR = re.compile(r"^[ON]{3,4}$")
_MAX_SUGGESTIONS = 8


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    code: str  # canonical
    mco_type: int
    smr: str
    psy: int | None
    short: str
    long: str


def edsnlp_table() -> Path:
    """The CIM-10 FR table bundled with edsnlp (found without importing edsnlp)."""
    spec = importlib.util.find_spec("edsnlp")
    if spec is None or not spec.submodule_search_locations:
        raise TerminologyFileError(
            "edsnlp is not installed: it carries the default CIM-10 FR table"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "resources" / "cim10.csv.gz"
        if path.is_file():
            return path
    raise TerminologyFileError(
        "the CIM-10 FR table edsnlp/resources/cim10.csv.gz is missing from edsnlp"
    )


def default_edition() -> str:
    return f"cim10-fr-edsnlp-{importlib.metadata.version('edsnlp')}"


def _parse_code(raw: str, source: str, line: int) -> str:
    try:
        return normalize_code(raw, "cim10")
    except InvalidCodeError as exc:
        raise TerminologyFileError(f"{source}, line {line}: invalid code {raw.strip()!r}") from exc


def _parse_int(raw: str, what: str, allowed: set[int], source: str, line: int) -> int:
    value = raw.strip()
    if not value.isdigit() or int(value) not in allowed:
        raise TerminologyFileError(
            f"{source}, line {line}: {what} must be one of {sorted(allowed)}, got {value!r}"
        )
    return int(value)


def _row(fields: Sequence[str], source: str, line: int) -> _Row:
    code, mco, smr, psy, short, long = fields
    smr = smr.strip().upper()
    if smr and not _SMR.match(smr):
        raise TerminologyFileError(
            f"{source}, line {line}: SMR profile must be O/N flags, got {smr!r}"
        )
    return _Row(
        line=line,
        code=_parse_code(code, source, line),
        mco_type=_parse_int(mco, "type MCO/HAD", {0, 1, 2, 3, 4}, source, line),
        smr=smr,
        psy=_parse_int(psy, "type PSY", {0, 1, 2, 3}, source, line) if psy.strip() else None,
        short=short.strip(),
        long=long.strip() or short.strip(),
    )


def read_edsnlp_rows(path: Path) -> Iterator[_Row]:
    """Rows of the edsnlp CSV (`code,type,ssr,psy,short,long`)."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != ["code", "type", "ssr", "psy", "short", "long"]:
            raise TerminologyFileError(f"{path}: unexpected header {header!r}")
        for number, fields in enumerate(reader, start=2):
            if len(fields) != 6:
                raise TerminologyFileError(
                    f"{path}, line {number}: expected 6 fields, got {len(fields)}"
                )
            yield _row(fields, str(path), number)


def read_atih_rows(path: Path) -> Iterator[_Row]:
    """Rows of an ATIH LIBCIM10MULTI file.

    ISO-8859-1, `|`-separated: code (undotted, padded to 6), type MCO/HAD, SMR profile,
    type PSY, short label, long label.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TerminologyFileError(
            f"cannot read the ATIH CIM-10 file {path}: {exc.strerror}"
        ) from exc
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    text = data.decode("iso-8859-1")
    count = 0
    for number, line in enumerate(io.StringIO(text), start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("|")
        if fields and fields[-1] == "" and len(fields) == 7:
            fields = fields[:6]  # a trailing separator
        if len(fields) != 6:
            raise TerminologyFileError(
                f"{path}, line {number}: expected 6 '|'-separated fields "
                f"(code|type MCO/HAD|profil SMR|type PSY|libellé court|libellé long), got {len(fields)}"
            )
        count += 1
        yield _row(fields, str(path), number)
    if count == 0:
        raise TerminologyFileError(f"{path}: no CIM-10 code in the file")


@dataclass(frozen=True)
class Cim10Fr(ConceptTable):
    """One edition of the CIM-10 FR à usage PMSI. Immutable; build with `load_cim10`."""

    terminology: ClassVar[str] = "cim10"

    def _grouping_key(self, key: str) -> str | None:
        return key if key in self._concepts else None  # chapters ("IX"), blocks ("I30-I52")

    def codable_codes(self) -> Sequence[str]:
        """Codes the PMSI accepts in at least one role (type MCO/HAD other than 3)."""
        return tuple(c for c in self._codes if _codable(self._concepts[c]))

    def is_leaf(self, code: str) -> bool:
        return not self.children(code)

    def chapter(self, code: str) -> str:
        """Chapter (roman numeral) of a code; works for well-formed codes of other editions too."""
        concept = self.get(code)
        if concept is not None:
            return concept.chapter
        key = normalize_code(code, "cim10")
        chapter = chapter_of_category(key[:3])
        if chapter is None:
            raise UnknownCodeError(key, self.edition, self.suggest(key))
        return chapter

    def chapters(self) -> list[Concept]:
        return [self._concepts[c[0]] for c in CIM10_CHAPTERS]

    def restrictions(self, code: str) -> Restrictions:
        """PMSI restrictions of a code (not of a chapter or block, which are never coded)."""
        concept = self[code]
        if concept.restrictions is None:
            raise TerminologyError(
                f"{concept.code} is a {concept.kind}: PMSI restrictions belong to codes"
            )
        return concept.restrictions

    # --- suggestions and search ----------------------------------------------------
    @cached_property
    def _sorted_compact(self) -> tuple[str, ...]:
        return tuple(sorted(undotted(c) for c in self._codes))

    def suggest(self, code: str) -> list[str]:
        """Nearest valid codes of a code absent from the edition."""
        try:
            key = undotted(normalize_code(code, "cim10"))
        except InvalidCodeError:
            return []
        table = set(self._sorted_compact)
        found: list[str] = []

        def add(compact: str) -> None:
            canonical = dotted_cim10(compact)
            if canonical not in found and canonical in self._concepts:
                found.append(canonical)

        # Its own subdivisions (an I50.0 asked for where only I50.00... exist is handled
        # by `children`; here the code is absent, so look at its nearest present ancestor).
        prefix = key
        while prefix and prefix not in table:
            prefix = prefix.rstrip("+")[:-1] if len(prefix) > 3 else ""
        if prefix:
            for child in self._children.get(dotted_cim10(prefix), ()):
                add(undotted(child))
        # Close spellings: one substitution or one swap of adjacent characters.
        alphabet = "0123456789+" if len(key) > 1 else ""
        for i in range(1, len(key)):
            for ch in alphabet:
                if ch != key[i]:
                    add(key[:i] + ch + key[i + 1 :])
            if i + 1 < len(key):
                add(key[:i] + key[i + 1] + key[i] + key[i + 2 :])
        if not found:  # neighbouring codes in the table
            position = bisect.bisect_left(self._sorted_compact, key)
            for compact in self._sorted_compact[max(0, position - 3) : position + 3]:
                add(compact)
        return found[:_MAX_SUGGESTIONS]

    def warm(self) -> None:
        """Build the lazy structures (search index...) now, e.g. before caching to disk."""
        _ = self._index, self._sorted_compact

    def _search_entries(self) -> list[tuple[str, str, str]]:
        return [
            (c, self._concepts[c].short_label or "", self._concepts[c].long_label)
            for c in self._codes
        ]

    def _exact_hit(self, concept: Concept) -> bool:
        return concept.restrictions is not None  # a code, not a chapter or block


def _codable(concept: Concept) -> bool:
    return concept.restrictions is not None and concept.restrictions.codable


def _deleted_in(row: _Row) -> str | None:
    for label in (row.long, row.short):
        match = _DELETED.search(label)
        if match:
            year = match.group(1)
            return f"20{year}" if len(year) == 2 else year
    return None


def build_cim10(
    rows: Sequence[_Row], edition: str, source: str, blocks: Sequence[Block]
) -> Cim10Fr:
    concepts: dict[str, Concept] = {}
    for chapter, _first, _last, title in CIM10_CHAPTERS:
        concepts[chapter] = Concept(chapter, title, title, "chapter", None, chapter)
    # Blocks nest (C00-C97 > C00-C75 > C15-C26): a block's parent is the narrowest other
    # block enclosing it, else its chapter.
    for block in blocks:
        chapter = chapter_of_category(block.first) or block.chapter
        enclosing = [
            b
            for b in blocks
            if b.code != block.code and b.first <= block.first and block.last <= b.last
        ]
        parent = min(enclosing, key=lambda b: b.width).code if enclosing else chapter
        concepts[block.code] = Concept(
            block.code,
            block.title_en,
            block.title_en,
            "block",
            parent,
            chapter,
            block.code,
            None,
            block.title_en,
        )
    narrowest_first = sorted(blocks, key=lambda b: (b.width, b.first))

    @functools.cache
    def block_of(category: str) -> str | None:
        for block in narrowest_first:  # narrowest first
            if block.first <= category <= block.last:
                return block.code
        return None

    seen: dict[str, int] = {}
    compact_rows: dict[str, _Row] = {}
    for row in rows:
        if row.code in seen:
            raise TerminologyFileError(
                f"{source}, line {row.line}: code {row.code} already given on line {seen[row.code]}"
            )
        seen[row.code] = row.line
        compact_rows[undotted(row.code)] = row

    codes: list[str] = []
    children: dict[str, list[str]] = {}
    # A few dozen distinct restriction triples: share them (memory, and pickle size).
    restriction_values: dict[tuple[int, str, int | None], Restrictions] = {}
    for compact, row in compact_rows.items():
        category = compact[:3]
        row_chapter = chapter_of_category(category)
        if row_chapter is None:
            raise TerminologyFileError(
                f"{source}, line {row.line}: {row.code} is in no CIM-10 chapter"
            )
        row_block = block_of(category)
        if len(compact) == 3:
            kind, parent = "category", row_block or row_chapter
        else:
            kind = "subcategory" if len(compact) == 4 and "+" not in compact else "extension"
            parent_compact = compact[:-1].rstrip("+")
            while parent_compact not in compact_rows and len(parent_compact) > 3:
                parent_compact = parent_compact[:-1].rstrip("+")
            if parent_compact not in compact_rows:
                raise TerminologyFileError(
                    f"{source}, line {row.line}: {row.code} has no parent category {dotted_cim10(parent_compact)}"
                )
            parent = dotted_cim10(parent_compact)
        deleted = _deleted_in(row)
        concepts[row.code] = Concept(
            code=row.code,
            label=row.long,
            long_label=row.long,
            kind=kind,
            parent=parent,
            chapter=row_chapter,
            block=row_block,
            restrictions=restriction_values.setdefault(
                (row.mco_type, row.smr, row.psy), Restrictions(row.mco_type, row.smr, row.psy)
            ),
            short_label=row.short,
            deleted_in=deleted,
        )
        if deleted is None:
            codes.append(row.code)
            children.setdefault(parent, []).append(row.code)
    return Cim10Fr(
        name="cim10",
        edition=edition,
        source=source,
        _concepts=concepts,
        _codes=tuple(codes),
        _children={k: tuple(v) for k, v in children.items()},
    )


@functools.cache
def _load(edition: str | None, path: str | None) -> Cim10Fr:
    if path is None:
        source = edsnlp_table()
        name = default_edition()
        if edition not in (None, name):
            raise UnknownEditionError(
                f"CIM-10 FR edition {edition!r} is not bundled (bundled: {name}); "
                f"give the ATIH LIBCIM10MULTI file with path=... to load it"
            )
        read = read_edsnlp_rows
    else:
        source = Path(path)
        if not source.is_file():
            raise TerminologyFileError(f"ATIH CIM-10 file not found: {source}")
        year = edition or source.stem
        name = year if year.startswith("cim10-") else f"cim10-fr-atih-{year}"
        read = read_atih_rows

    def build() -> Cim10Fr:
        logger.info("building CIM-10 FR %s from %s", name, source)
        terminology = build_cim10(list(read(source)), name, str(source), who_blocks())
        terminology.warm()
        return terminology

    return cached("cim10", [name, file_digest(source)], build)


def load_cim10(edition: str | None = None, path: str | Path | None = None) -> Cim10Fr:
    """The CIM-10 FR edition, loaded once per process.

    Without arguments: the table bundled with edsnlp (`cim10-fr-edsnlp-<version>`).
    With `path`: an ATIH LIBCIM10MULTI file, named `cim10-fr-atih-<edition>`
    (e.g. `load_cim10(edition="2026", path="LIBCIM10MULTI.TXT")`).
    """
    return _load(edition, str(Path(path).resolve()) if path is not None else None)
