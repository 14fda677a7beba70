"""Value objects shared by every terminology: concepts, PMSI restrictions, search hits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

ConceptKind = Literal[
    "chapter", "block", "category", "subcategory", "extension", "stem", "extension_code"
]

# ATIH "type MCO/HAD" of a code, as the CIM-10 FR table carries it.
_MCO_TYPE_WORDS = {
    0: "autorisé en DP, DR et DAS",
    1: "interdit en DP et DR, autorisé en DAS",
    2: "cause externe : interdit en DP et DR, autorisé en DAS",
    3: "interdit en DP, DR et DAS (code père ou catégorie non vide : coder un code plus précis)",
    4: "interdit en DP, autorisé en DR et DAS",
}
_PSY_TYPE_WORDS = {
    0: "autorisé en psychiatrie",
    1: "interdit en diagnostic principal en psychiatrie",
    3: "interdit en psychiatrie (code père)",
}


_SMR_FLAGS = (
    "finalité principale de prise en charge",
    "manifestation morbide principale",
    "affection étiologique",
    "diagnostic associé",
)


@dataclass(frozen=True, slots=True)
class Restrictions:
    """PMSI usage restrictions of a CIM-10 FR code (ATIH type MCO/HAD, SMR profile, type PSY)."""

    mco_type: int
    smr_profile: str
    psy_type: int | None

    @property
    def allowed_dp(self) -> bool:
        return self.mco_type == 0

    @property
    def allowed_dr(self) -> bool:
        return self.mco_type in (0, 4)

    @property
    def allowed_das(self) -> bool:
        return self.mco_type != 3

    @property
    def codable(self) -> bool:
        """False for the codes the groupage rejects whatever the role (type 3)."""
        return self.mco_type != 3

    @property
    def external_cause(self) -> bool:
        return self.mco_type == 2

    def __reduce__(self) -> tuple[type[Restrictions], tuple[object, ...]]:
        return (Restrictions, (self.mco_type, self.smr_profile, self.psy_type))

    def allows(self, role: str) -> bool:
        """Whether the code may be recorded in `role` ("DP", "DR", "DAS") in MCO/HAD."""
        return {"DP": self.allowed_dp, "DR": self.allowed_dr, "DAS": self.allowed_das}.get(
            role.upper(), False
        )

    def describe(self) -> str:
        """The MCO/HAD restriction in French words, as a DIM reads it."""
        return _MCO_TYPE_WORDS.get(self.mco_type, f"type MCO/HAD {self.mco_type} inconnu")

    def describe_smr(self) -> str:
        flags = self.smr_profile
        if not flags or set(flags) - {"O", "N"}:
            return f"profil SMR {flags or 'absent'}"
        # ATIH profile: 3 flags (MMP, AE, DA), preceded since 2023 by the FPP flag.
        names = _SMR_FLAGS[-len(flags) :] if len(flags) <= len(_SMR_FLAGS) else _SMR_FLAGS
        allowed = [name for name, flag in zip(names, flags, strict=False) if flag == "O"]
        return ("autorisé en " + ", ".join(allowed)) if allowed else "non autorisé en SMR"

    def short_description(self) -> str:
        """A few words for lists: what the code may not be used for."""
        return {
            0: "",
            1: "pas en DP/DR",
            2: "cause externe, pas en DP/DR",
            3: "non codable : préciser",
            4: "pas en DP",
        }.get(self.mco_type, f"type {self.mco_type}")

    def describe_psy(self) -> str:
        if self.psy_type is None:
            return "type PSY absent"
        return _PSY_TYPE_WORDS.get(self.psy_type, f"type PSY {self.psy_type}")

    def to_dict(self) -> dict[str, object]:
        return {
            "mco_type": self.mco_type,
            "smr_profile": self.smr_profile,
            "psy_type": self.psy_type,
            "allowed_dp": self.allowed_dp,
            "allowed_dr": self.allowed_dr,
            "allowed_das": self.allowed_das,
            "description": self.describe(),
        }


@dataclass(frozen=True, slots=True)
class Concept:
    """One entry of a terminology, at any level of its hierarchy."""

    code: str
    label: str
    long_label: str
    kind: str
    parent: str | None
    chapter: str
    block: str | None = None
    restrictions: Restrictions | None = None  # CIM-10 FR only
    label_en: str | None = None
    short_label: str | None = None  # ATIH's abbreviated upper-case label (CIM-10 FR)
    deleted_in: str | None = None  # ATIH files keep deleted codes labelled "*** SUaa ***"

    def __reduce__(self) -> tuple[type[Concept], tuple[object, ...]]:
        # Positional state: a much smaller and faster pickle for the on-disk cache.
        return (
            Concept,
            (
                self.code,
                self.label,
                self.long_label,
                self.kind,
                self.parent,
                self.chapter,
                self.block,
                self.restrictions,
                self.label_en,
                self.short_label,
                self.deleted_in,
            ),
        )

    @property
    def deleted(self) -> bool:
        return self.deleted_in is not None

    @property
    def unspecified(self) -> bool:
        """An unspecified form ("sans précision" in the label: I48.9, E03.9, N23)."""
        return "sans précision" in (self.label or "").lower()

    @property
    def precision(self) -> int:
        """How much the code says, to compare codes of one category: 0 for the category, then
        1 to 3: a subdivision, not "sans précision", a fourth character other than 9 (I48.9 1,
        J18.1 "pneumopathie lobaire, sans précision" 2, I48.0 3)."""
        key = self.code.replace(".", "")
        if len(key) < 4:
            return 0
        return 1 + int(not self.unspecified) + int(key[3] != "9")

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "code": self.code,
            "label": self.label,
            "long_label": self.long_label,
            "kind": self.kind,
            "parent": self.parent,
            "chapter": self.chapter,
            "block": self.block,
        }
        if self.short_label is not None:
            data["short_label"] = self.short_label
        if self.label_en is not None:
            data["label_en"] = self.label_en
        if self.restrictions is not None:
            data["restrictions"] = self.restrictions.to_dict()
        if self.deleted_in is not None:
            data["deleted_in"] = self.deleted_in
        return data


@dataclass(frozen=True, slots=True)
class SearchHit:
    code: str
    label: str
    score: float

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "label": self.label, "score": round(self.score, 4)}


@runtime_checkable
class Terminology(Protocol):
    """What every terminology offers (see docs/ARCHITECTURE.md)."""

    # Read-only: terminologies are immutable (frozen dataclasses satisfy a property).
    @property
    def name(self) -> str: ...
    @property
    def edition(self) -> str: ...

    def get(self, code: str) -> Concept | None: ...
    def __getitem__(self, code: str) -> Concept: ...
    def __contains__(self, code: object) -> bool: ...
    def codes(self) -> Sequence[str]: ...
    def search(self, text: str, limit: int = 10) -> list[SearchHit]: ...
    def ancestors(self, code: str) -> list[str]: ...
    def children(self, code: str) -> tuple[str, ...]: ...
    def chapter(self, code: str) -> str: ...
    def normalize(self, raw: str) -> str: ...
