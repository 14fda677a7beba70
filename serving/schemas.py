"""Request and response bodies of the HTTP API (separate from the predictor's own models)."""

from __future__ import annotations

import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cimcoder.inference.schemas import StayPrediction
from cimcoder.serving.validation import STAY_ID_RULE, PlainText, ReportText, StayId

# --- requests ---------------------------------------------------------------------------


class DocumentIn(BaseModel):
    """One document of a stay."""

    model_config = ConfigDict(extra="forbid")

    text: ReportText = Field(min_length=1, description="Plain text of the document.")
    doc_type: PlainText = Field(default="crh", max_length=64, description="crh, cro, lettre, ...")
    date: datetime.date | None = Field(default=None, description="Date the document was written.")


class CodeRequest(BaseModel):
    """One report (`text`) or one stay of several documents (`documents`) to code."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "sejour-42",
                    "text": "Insuffisance cardiaque congestive décompensée. HTA ancienne.",
                },
                {
                    "id": "sejour-43",
                    "documents": [
                        {"text": "CRH : pneumopathie franche lobaire aiguë.", "doc_type": "crh"},
                        {"text": "Diabète de type 2 sous metformine.", "doc_type": "lettre"},
                    ],
                },
            ]
        },
    )

    id: StayId | None = Field(default=None, description=f"Stay or report id: {STAY_ID_RULE}.")
    text: ReportText | None = Field(
        default=None, description="The report, when there is one document."
    )
    documents: list[DocumentIn] | None = Field(
        default=None, min_length=1, max_length=200, description="The stay's documents, in order."
    )

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("the report text is empty")
        return value

    @model_validator(mode="after")
    def _one_of_text_or_documents(self) -> CodeRequest:
        if (self.text is None) == (self.documents is None):
            raise ValueError("give exactly one of 'text' (one report) or 'documents' (a stay)")
        if self.documents is not None and not any(d.text.strip() for d in self.documents):
            raise ValueError("every document of the stay is empty")
        return self

    def texts(self) -> list[str]:
        return [self.text] if self.text is not None else [d.text for d in self.documents or []]


class BatchRequest(BaseModel):
    """Several reports or stays, answered in the same order."""

    model_config = ConfigDict(extra="forbid")

    items: list[CodeRequest] = Field(min_length=1, description="Reports or stays to code.")


# --- responses --------------------------------------------------------------------------


class BatchResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    results: list[StayPrediction] = Field(description="One answer per item, in request order.")


class CodeConcept(BaseModel):
    """A terminology entry with its PMSI restrictions and CIM-11 equivalents."""

    model_config = ConfigDict(extra="forbid")

    code: str
    label: str
    long_label: str
    kind: str
    parent: str | None
    chapter: str
    block: str | None
    terminology: str
    edition: str
    restrictions: dict[str, object] | None = Field(
        default=None, description="CIM-10 FR PMSI restrictions (ATIH types), with French wording."
    )
    cim11: list[str] = Field(default_factory=list, description="CIM-11 equivalents (crosswalk).")
    in_model: bool = Field(description="Whether the loaded model scores this code.")
    train_count: int | None = Field(
        default=None, description="Training stays carrying the code (None without a model)."
    )


class SearchResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    label: str
    score: float


class SearchResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str
    terminology: str
    edition: str
    results: list[SearchResult]


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer."""

    model_config = ConfigDict(extra="allow")

    detail: str = Field(description="What went wrong, in words a caller can act on.")
    errors: list[dict[str, object]] | None = Field(
        default=None, description="Field errors (422): location and message."
    )
    suggestions: list[str] | None = Field(
        default=None, description="Nearest valid codes (404 on an unknown code)."
    )


class Health(BaseModel):
    status: str
    version: str


class Ready(BaseModel):
    ready: bool
    model: dict[str, object] | None = None
    detail: str | None = None
