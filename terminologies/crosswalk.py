"""WHO ICD-10 <-> ICD-11 crosswalk, applied to CIM-10 FR and CIM-11 MMS in French.

Source: World Health Organization, ICD-11 mapping tables, release 2020-01-22 (CC BY-ND 3.0
IGO), shipped unmodified in `data/who/`. French CIM-10 extension codes (E11.00, C16.9+0)
are not in the WHO tables: they map through their nearest WHO parent, and say so (`via`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources

from cimcoder.terminologies.cache import cached, file_digest
from cimcoder.terminologies.chapters import (
    WHO_11_TO_10,
    WHO_MULTIPLE_CATEGORIES,
    WHO_ONE_CATEGORY,
    read_who_table,
    who_file,
)
from cimcoder.terminologies.cim10 import Cim10Fr, load_cim10
from cimcoder.terminologies.cim11 import Cim11, load_cim11
from cimcoder.terminologies.codes import normalize_code
from cimcoder.terminologies.errors import InvalidCodeError, UnknownCodeError

logger = logging.getLogger(__name__)

WHO_RELEASE = "who-icd10-icd11-mapping-2020-01-22"
RELATION_WORDS = {
    "Equivalent": "équivalent",
    "Subclass": "le code source est plus précis que la cible",
    "Superclass": "le code source est plus large que la cible",
}


@dataclass(frozen=True, slots=True)
class _WhoRow:
    source: str
    target: str  # "" when WHO gives no target
    title_en: str
    relation: str
    match_type: str


@dataclass(frozen=True, slots=True)
class CrosswalkTarget:
    """One target of a code in the other terminology."""

    source: str  # the code asked for (canonical)
    code: str  # target code; CIM-11 targets may be clusters such as 1A00&XN8P1
    title: str  # French title (of each part, joined with " & " for clusters)
    title_en: str  # WHO's English title
    relation: str  # Equivalent | Subclass | Superclass, of the source with respect to the target
    who_relation: str  # the relation of the WHO row (differs when mapped `via` a parent)
    primary: bool  # WHO's one-category choice (True) or a further candidate
    via: str | None = None  # the WHO parent a French extension code was mapped through
    parts: tuple[tuple[str, str], ...] = ()  # (code, French title) of each part of a cluster
    match_type: str = ""

    @property
    def post_coordinated(self) -> bool:
        return "&" in self.code or "/" in self.code

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "code": self.code,
            "title": self.title,
            "title_en": self.title_en,
            "relation": self.relation,
            "who_relation": self.who_relation,
            "primary": self.primary,
            "via": self.via,
            "post_coordinated": self.post_coordinated,
            "parts": [{"code": c, "title": t} for c, t in self.parts],
            "match_type": self.match_type,
        }


@dataclass(frozen=True, slots=True)
class _Tables:
    one: dict[str, _WhoRow]
    multiple: dict[str, tuple[_WhoRow, ...]]
    reverse: dict[str, _WhoRow]


_NO_CODE = "_NOCODEASSIGNED"


def _cim11_target_code(raw: str) -> tuple[str, str]:
    """(canonical target, note) of a WHO ICD-11 cell; "" when it names no code."""
    value = raw.strip()
    if not value:
        return "", ""
    if value.isdigit() or value in ("V", "X"):
        return "", f"maps to the whole ICD-11 chapter {value}"
    parts = [p for p in value.split("&") if p != _NO_CODE]
    if not parts:
        return "", "WHO assigned no ICD-11 code"
    note = (
        "WHO assigned no code to a part of the cluster" if len(parts) < value.count("&") + 1 else ""
    )
    try:
        return normalize_code("&".join(parts), "cim11"), note
    except InvalidCodeError:
        return "", f"unusable ICD-11 cell {value!r}"


def _read_tables() -> _Tables:
    one: dict[str, _WhoRow] = {}
    for row in read_who_table(WHO_ONE_CATEGORY):
        if row["10ClassKind"] not in ("category", "modifiedcategory"):
            continue  # chapters and blocks
        source = normalize_code(row["icd10Code"], "cim10")
        target, note = _cim11_target_code(row["icd11Code"])
        one[source] = _WhoRow(
            source,
            target,
            row["icd11Title"].strip(),
            row["Relation"].strip(),
            "; ".join(x for x in (row.get("Match Type", "").strip(), note) if x),
        )
    multiple: dict[str, list[_WhoRow]] = {}
    for row in read_who_table(WHO_MULTIPLE_CATEGORIES):
        if row["10ClassKind"] not in ("category", "modifiedcategory"):
            continue
        target, note = _cim11_target_code(row["icd11Code"])
        if not target:
            continue
        source = normalize_code(row["icd10Code"], "cim10")
        multiple.setdefault(source, []).append(
            _WhoRow(
                source,
                target,
                row["icd11Title"].strip(),
                row["Relation"].strip(),
                "; ".join(x for x in (row.get("IssueType", "").strip(), note) if x),
            )
        )
    reverse: dict[str, _WhoRow] = {}
    for row in read_who_table(WHO_11_TO_10):
        source, _ = _cim11_target_code(row["icd11Code"])
        target = row["icd10Code"].strip()
        if not source or "&" in source:
            continue  # an ICD-11 chapter or grouping without a code
        try:
            target = normalize_code(target, "cim10") if target else ""
        except InvalidCodeError:
            target = ""  # an ICD-10 chapter or block: no code to give
        reverse[source] = _WhoRow(
            source, target, row["icd10Title"].strip(), row["Relation"].strip(), ""
        )
    return _Tables(one, {k: tuple(v) for k, v in multiple.items()}, reverse)


@dataclass(frozen=True)
class Crosswalk:
    """CIM-10 FR <-> CIM-11 MMS (French titles). Build with `load_crosswalk`."""

    cim10: Cim10Fr = field(repr=False)
    cim11: Cim11 = field(repr=False)
    _tables: _Tables = field(repr=False)
    release: str = WHO_RELEASE

    @property
    def edition(self) -> str:
        return f"{self.release} ({self.cim10.edition} -> {self.cim11.edition})"

    # --- CIM-10 -> CIM-11 ------------------------------------------------------------
    def _who_source(self, code: str) -> tuple[str, str | None]:
        """The WHO ICD-10 code to look up for a CIM-10 FR code, and the parent used if any."""
        key = normalize_code(code, "cim10")
        if key in self._tables.one:
            return key, None
        if key not in self.cim10:
            raise UnknownCodeError(key, self.cim10.edition, self.cim10.suggest(key))
        for ancestor in self.cim10.ancestors(key):
            if ancestor in self._tables.one:
                return ancestor, ancestor
        return key, None

    def _cim11_target(
        self, source: str, row: _WhoRow, primary: bool, via: str | None
    ) -> CrosswalkTarget:
        parts = tuple(
            (part, self.cim11.cluster_title(part))
            for stem in row.target.split("/")
            for part in stem.split("&")
        )
        known = all(part in self.cim11 for part, _ in parts)
        relation = (
            "Subclass" if via and row.relation in ("Equivalent", "Subclass") else row.relation
        )
        return CrosswalkTarget(
            source=source,
            code=row.target,
            title=self.cim11.cluster_title(row.target) if known else row.title_en,
            title_en=row.title_en,
            relation=relation,
            who_relation=row.relation,
            primary=primary,
            via=via,
            parts=parts,
            match_type=row.match_type,
        )

    def to_cim11(self, code: str) -> list[CrosswalkTarget]:
        """CIM-11 targets of a CIM-10 FR code: WHO's one-category choice first, then the other
        candidates. Empty when WHO gives no mapping (see `no_mapping_reason`)."""
        source = normalize_code(code, "cim10")
        who_code, via = self._who_source(source)
        targets: list[CrosswalkTarget] = []
        row = self._tables.one.get(who_code)
        if row is not None and row.target:
            targets.append(self._cim11_target(source, row, True, via))
        for candidate in self._tables.multiple.get(who_code, ()):
            if all(candidate.target != t.code for t in targets):
                targets.append(self._cim11_target(source, candidate, False, via))
        return targets

    def no_mapping_reason(self, code: str) -> str | None:
        """WHO's reason when a CIM-10 code has no CIM-11 target, else None."""
        who_code, _ = self._who_source(code)
        row = self._tables.one.get(who_code)
        if row is None:
            return "absent from the WHO ICD-10 -> ICD-11 table"
        if row.target:
            return None
        return row.match_type or "NoMapping"

    # --- CIM-11 -> CIM-10 ------------------------------------------------------------
    def to_cim10(self, code: str) -> list[CrosswalkTarget]:
        """CIM-10 targets of a CIM-11 code (a cluster maps through its first stem)."""
        key = normalize_code(code, "cim11")
        stem = key.split("/")[0].split("&")[0]
        if stem not in self.cim11:
            raise UnknownCodeError(stem, self.cim11.edition, self.cim11.suggest(stem))
        via = stem if stem != key else None
        lookup = stem
        row = self._tables.reverse.get(lookup)
        if row is None or not row.target:
            for ancestor in self.cim11.ancestors(stem):
                candidate = self._tables.reverse.get(ancestor)
                if candidate is not None and candidate.target:
                    row, via = candidate, ancestor
                    break
        targets: list[CrosswalkTarget] = []
        # A post-coordinated code that WHO gives as the target of a CIM-10 code maps back to it.
        for source in self._inverse_exact.get(key, ()) if via == stem else ():
            forward = self._tables.one[source]
            targets.append(
                self._cim10_target(key, source, "", _invert(forward.relation), True, None)
            )
        if row is not None and row.target and all(row.target != t.code for t in targets):
            primary = not targets
            targets.append(
                self._cim10_target(key, row.target, row.title_en, row.relation, primary, via)
            )
        for source in self._inverse.get(stem, ()):
            if all(source != t.code for t in targets):
                forward = self._tables.one[source]
                targets.append(
                    self._cim10_target(key, source, "", _invert(forward.relation), False, None)
                )
        return targets

    def _cim10_target(
        self, source: str, target: str, title_en: str, relation: str, primary: bool, via: str | None
    ) -> CrosswalkTarget:
        concept = self.cim10.get(target)
        title = concept.long_label if concept is not None else title_en
        return CrosswalkTarget(
            source=source,
            code=target,
            title=title,
            title_en=title_en,
            relation="Subclass" if via and relation == "Equivalent" else relation,
            who_relation=relation,
            primary=primary,
            via=via,
            parts=((target, title),),
        )

    @cached_property
    def _inverse_exact(self) -> dict[str, tuple[str, ...]]:
        """CIM-11 post-coordinated target -> the CIM-10 codes WHO maps onto exactly it."""
        inverse: dict[str, list[str]] = {}
        for source, row in self._tables.one.items():
            if "&" in row.target or "/" in row.target:
                inverse.setdefault(row.target, []).append(source)
        return {k: tuple(v) for k, v in inverse.items()}

    @cached_property
    def _inverse(self) -> dict[str, tuple[str, ...]]:
        """CIM-11 stem -> the CIM-10 codes WHO maps onto it (from the 10 -> 11 table)."""
        inverse: dict[str, list[str]] = {}
        for source, row in self._tables.one.items():
            if row.target:
                inverse.setdefault(row.target.split("&")[0].split("/")[0], []).append(source)
        return {k: tuple(v) for k, v in inverse.items()}

    # --- coverage ---------------------------------------------------------------------
    @cached_property
    def _stats(self) -> dict[str, object]:
        direct = via_parent = no_mapping = 0
        codable_total = codable_mapped = 0
        for code in self.cim10.codes():
            who_code, via = self._who_source(code)
            row = self._tables.one.get(who_code)
            mapped = row is not None and bool(row.target)
            if mapped and via is None:
                direct += 1
            elif mapped:
                via_parent += 1
            else:
                no_mapping += 1
            restrictions = self.cim10[code].restrictions
            if restrictions is not None and restrictions.codable:
                codable_total += 1
                codable_mapped += mapped
        total = len(self.cim10.codes())
        stems = [c for c in self.cim11.codes() if self.cim11[c].kind == "stem"]
        stems_mapped = sum(1 for c in stems if self._reverse_mapped(c))
        return {
            "release": self.release,
            "cim10_edition": self.cim10.edition,
            "cim11_edition": self.cim11.edition,
            "cim10_codes": total,
            "cim10_mapped_direct": direct,
            "cim10_mapped_via_parent": via_parent,
            "cim10_no_mapping": no_mapping,
            "cim10_coverage": (direct + via_parent) / total if total else 0.0,
            "cim10_codable_codes": codable_total,
            "cim10_codable_coverage": codable_mapped / codable_total if codable_total else 0.0,
            "cim11_stem_codes": len(stems),
            "cim11_coverage": stems_mapped / len(stems) if stems else 0.0,
        }

    def _reverse_mapped(self, stem: str) -> bool:
        row = self._tables.reverse.get(stem)
        if row is not None and row.target:
            return True
        return (
            any(
                (r := self._tables.reverse.get(a)) is not None and bool(r.target)
                for a in self.cim11.ancestors(stem)
            )
            or stem in self._inverse
        )

    def stats(self) -> dict[str, object]:
        """Coverage of the crosswalk: the fraction of CIM-10 FR codes that get a CIM-11 target
        (directly, or through their WHO parent), and of CIM-11 stem codes that get a CIM-10 one."""
        return dict(self._stats)


def _invert(relation: str) -> str:
    return {"Subclass": "Superclass", "Superclass": "Subclass"}.get(relation, relation)


def _sources_digest() -> Sequence[str]:
    digests = []
    for name in (WHO_ONE_CATEGORY, WHO_MULTIPLE_CATEGORIES, WHO_11_TO_10):
        with resources.as_file(who_file(name)) as path:
            digests.append(file_digest(path))
    return digests


@functools.cache
def load_crosswalk() -> Crosswalk:
    """The WHO crosswalk between the default CIM-10 FR and CIM-11 editions, loaded once."""
    tables = cached("who-crosswalk", [WHO_RELEASE, *_sources_digest()], _read_tables)
    return Crosswalk(load_cim10(), load_cim11(), tables)
