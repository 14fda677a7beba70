"""CIM-11 MMS in French, from the `cim-11-certic` package (WHO data, French and English titles)."""

from __future__ import annotations

import bisect
import functools
import importlib.metadata
import importlib.util
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

from cimcoder.terminologies.cache import cached, file_digest
from cimcoder.terminologies.codes import normalize_code
from cimcoder.terminologies.errors import TerminologyFileError, UnknownCodeError
from cimcoder.terminologies.model import Concept
from cimcoder.terminologies.table import ConceptTable

logger = logging.getLogger(__name__)

# The first character of a stem code gives its chapter; I and O are never used.
_CHAPTER_OF_FIRST = {c: f"{i:02d}" for i, c in enumerate("123456789ABCDEFGHJKLMNPQRS", start=1)}
_CHAPTER_OF_FIRST.update({"V": "V", "X": "X"})
_ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
_MAX_SUGGESTIONS = 8


def chapter_of_code(code: str) -> str | None:
    return _CHAPTER_OF_FIRST.get(code[:1])


def certic_database() -> Path:
    """The SQLite file of `cim-11-certic` (found without importing the package)."""
    spec = importlib.util.find_spec("cim_11")
    if spec is None or not spec.submodule_search_locations:
        raise TerminologyFileError(
            "cim-11-certic is not installed: it carries the CIM-11 MMS in French"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "cim-11.sqlite3"
        if path.is_file():
            return path
    raise TerminologyFileError("cim_11/cim-11.sqlite3 is missing from the cim-11-certic package")


def default_edition() -> str:
    return f"cim11-mms-certic-{importlib.metadata.version('cim-11-certic')}"


@dataclass(frozen=True)
class Cim11(ConceptTable):
    """The CIM-11 MMS in French. Immutable; build with `load_cim11`."""

    terminology: ClassVar[str] = "cim11"

    def _grouping_key(self, key: str) -> str | None:
        return key.zfill(2) if key.isdigit() or key in ("V", "X") else None  # chapters

    def chapter(self, code: str) -> str:
        concept = self.get(code)
        if concept is not None:
            return concept.chapter
        key = normalize_code(code, "cim11")
        chapter = chapter_of_code(key)
        if chapter is None:
            raise UnknownCodeError(key, self.edition, self.suggest(key))
        return chapter

    def cluster(self, code: str) -> list[Concept]:
        """The concepts of a post-coordinated code: `1A00&XN8P1` -> [1A00, XN8P1]."""
        key = normalize_code(code, "cim11")
        parts = [part for stem in key.split("/") for part in stem.split("&")]
        return [self[part] for part in parts]

    def cluster_title(self, code: str, english: bool = False) -> str:
        """French (or English) title of a code or cluster; parts absent from the edition
        keep their bare code."""
        titles = []
        for stem in normalize_code(code, "cim11").split("/"):
            parts = []
            for part in stem.split("&"):
                concept = self.get(part)
                title = (concept.label_en if english else concept.label) if concept else None
                parts.append(title or part)
            titles.append(" & ".join(parts))
        return " / ".join(titles)

    @cached_property
    def _sorted(self) -> tuple[str, ...]:
        return tuple(sorted(self._codes))

    def suggest(self, code: str) -> list[str]:
        """Nearest valid codes of a code absent from the edition."""
        key = code.split("&")[0].split("/")[0]
        found: list[str] = []

        def add(candidate: str) -> None:
            if (
                candidate in self._concepts
                and candidate not in found
                and len(found) < _MAX_SUGGESTIONS
            ):
                found.append(candidate)

        if key != code:  # a cluster: its stem is the nearest concept
            add(key)
        stem = key.split(".")[0]
        if stem in self._concepts:
            for child in self._children.get(stem, ()):
                add(child)
        compact = key.replace(".", "")
        for i in range(len(compact)):
            for ch in _ALPHABET:
                variant = compact[:i] + ch + compact[i + 1 :]
                if variant != compact:
                    add(_dot(variant))
            if i + 1 < len(compact):
                add(_dot(compact[:i] + compact[i + 1] + compact[i] + compact[i + 2 :]))
        if not found:
            position = bisect.bisect_left(self._sorted, key)
            for candidate in self._sorted[max(0, position - 3) : position + 3]:
                add(candidate)
        return found

    def warm(self) -> None:
        _ = self._index, self._sorted

    def _search_entries(self) -> list[tuple[str, str, str]]:
        return [
            (c, self._concepts[c].label_en or "", self._concepts[c].label) for c in self._codes
        ]

    def _exact_hit(self, concept: Concept) -> bool:
        return concept.kind != "chapter"


def _dot(compact: str) -> str:
    if compact.startswith("X") or len(compact) <= 4:
        return compact
    return f"{compact[:4]}.{compact[4:]}"


def build_cim11(
    rows: Sequence[tuple[str, str, str, str | None, str]], edition: str, source: str
) -> Cim11:
    """Build from (entity id, code, French title, parent entity id, English title) rows."""
    by_id = {row[0]: row for row in rows}
    root_chapter: dict[str, str] = {}

    def root_of(entity: str) -> str:
        seen = 0
        while by_id.get(entity) and by_id[entity][3] and seen < 64:
            entity = by_id[entity][3]  # type: ignore[assignment]
            seen += 1
        return entity

    for entity, code, *_ in rows:
        if code and chapter_of_code(code):
            root_chapter.setdefault(root_of(entity), chapter_of_code(code))  # type: ignore[arg-type]

    concepts: dict[str, Concept] = {}
    for entity, chapter in root_chapter.items():
        _, _, label, _, label_en = by_id[entity]
        concepts[chapter] = Concept(
            chapter, label, label, "chapter", None, chapter, None, None, label_en
        )

    def coded_parent(entity: str) -> str | None:
        parent = by_id[entity][3]
        while parent:
            row = by_id.get(parent)
            if row is None:
                return None
            if row[1]:
                return row[1]
            if not row[3]:
                return root_chapter.get(parent)
            parent = row[3]
        return None

    codes: list[str] = []
    children: dict[str, list[str]] = {}
    for entity, code, label, _parent, label_en in rows:
        if not code:
            continue
        code_chapter = chapter_of_code(code)
        if code_chapter is None:
            raise TerminologyFileError(f"{source}: CIM-11 code {code!r} has no chapter")
        parent = coded_parent(entity) or code_chapter
        kind = "extension_code" if code.startswith("X") else "stem"
        concepts[code] = Concept(
            code, label, label, kind, parent, code_chapter, None, None, label_en
        )
        codes.append(code)
        children.setdefault(parent, []).append(code)
    return Cim11(
        name="cim11",
        edition=edition,
        source=source,
        _concepts=concepts,
        _codes=tuple(codes),
        _children={k: tuple(v) for k, v in children.items()},
    )


def _read_rows(path: Path) -> list[tuple[str, str, str, str | None, str]]:
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            cursor = connection.execute(
                "SELECT idc_id, icode, label, parent_idc_id, label_en FROM cim11"
            )
            return [
                (
                    r[0],
                    (r[1] or "").strip(),
                    (r[2] or "").strip(),
                    r[3] or None,
                    (r[4] or "").strip(),
                )
                for r in cursor
            ]
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise TerminologyFileError(f"cannot read the CIM-11 database {path}: {exc}") from exc


@functools.cache
def load_cim11() -> Cim11:
    """The CIM-11 MMS in French (`cim11-mms-certic-<version>`), loaded once per process."""
    source = certic_database()
    edition = default_edition()

    def build() -> Cim11:
        logger.info("building CIM-11 %s from %s", edition, source)
        terminology = build_cim11(_read_rows(source), edition, str(source))
        terminology.warm()
        return terminology

    return cached("cim11", [edition, file_digest(source)], build)
