"""One schema for every source of coded stays.

A *stay* (séjour) is what the PMSI codes: one or more documents written during the stay
and its diagnosis codes, each with a PMSI role. Every loader returns a `Corpus`, whose
`LoadReport` lists what was skipped and why, so that nothing is dropped silently.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["DP", "DR", "DAS", "unknown"]
ROLES: tuple[Role, ...] = ("DP", "DR", "DAS", "unknown")
CODED_ROLES: tuple[Role, ...] = ("DP", "DR", "DAS")  # the roles a source may state
Sex = Literal["M", "F"]
SEXES: tuple[Sex, ...] = ("M", "F")
DOCUMENT_SEPARATOR = "\n\n"


class Document(BaseModel):
    """One text written during the stay (compte-rendu d'hospitalisation by default)."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="Plain text of the document.")
    doc_type: str = Field(default="crh", description="Document type: crh, cro, lettre, ...")
    date: datetime.date | None = Field(default=None, description="Date the document was written.")


class Diagnosis(BaseModel):
    """One diagnosis code of the stay, with its PMSI role."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="Canonical code of the stay's terminology (e.g. 'I50.0').")
    role: Role = Field(default="unknown", description="PMSI role: DP, DR, DAS or unknown.")
    source_code: str | None = Field(
        default=None, description="Code as written in the source, before normalisation/mapping."
    )
    span: tuple[int, int] | None = Field(
        default=None,
        description="Char offsets in `Stay.text` of the mention supporting the code, when known "
        "(synthetic stays record it; evidence gold).",
    )


class StayContext(BaseModel):
    """Structured context of the stay, when the source has it."""

    model_config = ConfigDict(extra="forbid")

    unit: str | None = Field(default=None, description="Care unit (unité médicale) or specialty.")
    age: int | None = Field(default=None, ge=0, le=130, description="Age in years at admission.")
    sex: Sex | None = Field(default=None, description="Sex: M or F.")
    length_of_stay: int | None = Field(default=None, ge=0, description="Length of stay, days.")


class Stay(BaseModel):
    """A coded hospital stay."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="Stay identifier, unique in its corpus.")
    patient_id: str | None = Field(default=None, description="Patient identifier, for grouping.")
    documents: list[Document] = Field(min_length=1, description="Documents of the stay.")
    diagnoses: list[Diagnosis] = Field(default_factory=list, description="Coded diagnoses.")
    terminology: Literal["cim10", "cim11"] = Field(default="cim10", description="Code system.")
    edition: str | None = Field(default=None, description="Terminology edition the codes follow.")
    context: StayContext | None = Field(default=None, description="Optional structured context.")
    synthetic: bool = Field(default=False, description="True for generated (synthetic) stays.")
    template: str | None = Field(
        default=None,
        description="Generated stays: the template (scenario) written out. Stays of one template"
        " are near-duplicates: cross-fitting keeps them in one fold, as it keeps a patient's stays.",
    )

    @field_validator("id", "patient_id", mode="before")
    @classmethod
    def _ids_as_text(cls, value: object) -> object:
        # Sources often store ids as integers (OMOP, CSV); the schema keeps them as text.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @property
    def text(self) -> str:
        """The documents' texts joined with blank lines."""
        return DOCUMENT_SEPARATOR.join(doc.text for doc in self.documents)

    @property
    def codes(self) -> list[str]:
        """Distinct codes, in order of first appearance."""
        return list(dict.fromkeys(diag.code for diag in self.diagnoses))

    @property
    def date(self) -> datetime.date | None:
        """Earliest document date, if any."""
        dates = [doc.date for doc in self.documents if doc.date is not None]
        return min(dates) if dates else None


@dataclass(frozen=True)
class SkippedRecord:
    """A record a loader did not load, and why."""

    reason: str
    file: str | None = None
    line: int | None = None
    resource_id: str | None = None

    def where(self) -> str:
        parts = [self.file or "?"]
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.resource_id is not None:
            parts.append(f"id {self.resource_id}")
        return ", ".join(parts)

    def __str__(self) -> str:
        return f"{self.where()}: {self.reason}"


@dataclass(frozen=True)
class CodeIssue:
    """A code that could not be used as is.

    `kind` is "unmapped" (the source code has no equivalent in the terminology, e.g. a CodiEsp
    ICD-10-CM-only category), "invalid" (not a code at all) or "unknown" (well formed but absent
    from the terminology). `kept` says whether the stay kept it as a diagnosis.
    """

    kind: Literal["unmapped", "invalid", "unknown"]
    stay_id: str
    source_code: str
    kept: bool
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file or '?'}" + (f", line {self.line}" if self.line is not None else "")
        fate = "kept" if self.kept else "not in the stay's diagnoses"
        return f"{where}: stay {self.stay_id}: {self.kind} code {self.source_code!r} ({fate})"


@dataclass
class LoadReport:
    """What a loader read, skipped and could not map."""

    source: str
    records_read: int = 0
    skipped: list[SkippedRecord] = field(default_factory=list)
    code_issues: list[CodeIssue] = field(default_factory=list)

    def skip(
        self,
        reason: str,
        *,
        file: str | None = None,
        line: int | None = None,
        resource_id: str | None = None,
    ) -> None:
        self.skipped.append(SkippedRecord(reason, file, line, resource_id))

    @property
    def unknown_codes(self) -> list[CodeIssue]:
        """Invalid or unknown codes (not the expected unmapped source codes)."""
        return [issue for issue in self.code_issues if issue.kind != "unmapped"]

    @property
    def unmapped_codes(self) -> list[CodeIssue]:
        return [issue for issue in self.code_issues if issue.kind == "unmapped"]

    @property
    def ok(self) -> bool:
        """True when nothing was skipped and every code is known (unmapped ones are expected)."""
        return not self.skipped and not self.unknown_codes

    def summary(self) -> dict[str, object]:
        kinds = Counter(issue.kind for issue in self.code_issues)
        return {
            "source": self.source,
            "records_read": self.records_read,
            "skipped": len(self.skipped),
            "code_issues": dict(sorted(kinds.items())),
        }


@dataclass
class Corpus:
    """Stays loaded from one source, with the load report."""

    stays: list[Stay]
    report: LoadReport
    name: str = ""

    def __len__(self) -> int:
        return len(self.stays)

    def __iter__(self) -> Iterator[Stay]:
        return iter(self.stays)

    def __getitem__(self, index: int) -> Stay:
        return self.stays[index]

    @property
    def texts(self) -> list[str]:
        return [stay.text for stay in self.stays]

    @property
    def codes(self) -> list[list[str]]:
        return [stay.codes for stay in self.stays]

    def subset(self, stays: list[Stay], name: str) -> Corpus:
        """A corpus over some of these stays, sharing this load report."""
        return Corpus(stays=stays, report=self.report, name=name)
