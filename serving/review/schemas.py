"""Request and response bodies of the review API."""

from __future__ import annotations

import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cimcoder.inference.schemas import StayPrediction


class ReviewDocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, description="Plain text of the document.")
    doc_type: str = Field(default="crh", max_length=32, description="crh, cro, lettre, ...")
    date: datetime.date | None = Field(default=None, description="Date the document was written.")


class StayIn(BaseModel):
    """A stay entering the review queue (its text must be the one the predictor scored)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128, description="Stay identifier.")
    patient_id: str | None = Field(default=None, max_length=128)
    unit: str | None = Field(default=None, max_length=128, description="Unité médicale.")
    date: datetime.date | None = Field(default=None, description="Stay date (discharge).")
    text: str | None = Field(default=None, description="The report, when there is one document.")
    documents: list[ReviewDocumentIn] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _text_or_documents(self) -> StayIn:
        if (self.text is None) == (self.documents is None):
            raise ValueError("give exactly one of 'text' or 'documents'")
        if self.text is not None and not self.text.strip():
            raise ValueError("the report text is empty")
        return self

    def document_list(self) -> list[ReviewDocumentIn]:
        if self.documents is not None:
            return self.documents
        return [ReviewDocumentIn(text=self.text or "", date=self.date)]


class EnqueueRequest(BaseModel):
    """`POST /v1/review/stays`: a stay and the predictor's answer for it."""

    model_config = ConfigDict(extra="forbid")

    stay: StayIn
    prediction: StayPrediction


class EnqueueResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    status: str
    auto_coded: bool
    qc_sampled: bool
    created: bool = Field(description="False when the same stay and input were already queued.")


class CodeDecisionIn(BaseModel):
    """The coder's decision on one code."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=16, description="Suggested or added code.")
    action: Literal["accept", "reject", "change", "add"]
    new_code: str | None = Field(default=None, max_length=16, description="Target of a change.")
    reason: str | None = Field(default=None, max_length=2000, description="Why (optional).")

    @model_validator(mode="after")
    def _change_has_target(self) -> CodeDecisionIn:
        if self.action == "change" and not self.new_code:
            raise ValueError(f"'change' of {self.code} needs 'new_code'")
        if self.action != "change" and self.new_code:
            raise ValueError(f"'new_code' is only for a 'change' (code {self.code})")
        return self


class ReviewIn(BaseModel):
    """One save of the coder on a stay."""

    model_config = ConfigDict(extra="forbid")

    decision_id: str = Field(
        min_length=8,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Client-generated id (UUID): a retried save is applied once.",
    )
    base_version: int = Field(ge=1, description="Stay version the coder saw (optimistic lock).")
    codes: list[CodeDecisionIn] = Field(default_factory=list, max_length=2000)
    dp: str | None = Field(default=None, max_length=16, description="Chosen DP (final code).")
    status: Literal["validated", "in_review"] = Field(
        default="validated", description="validated: coding done; in_review: draft."
    )

    @field_validator("dp")
    @classmethod
    def _blank_dp_is_none(cls, value: str | None) -> str | None:
        return value if value and value.strip() else None


class ReviewResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision_id: str
    stay_id: str
    version: int
    status: str
    dp: str | None
    codes: list[dict[str, str | None]]
    replayed: bool = Field(description="True when this decision id had already been saved.")
    warnings: list[str] = Field(
        default_factory=list, description="PMSI checks, e.g. a forbidden parent code kept."
    )


class QcSettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    qc_rate: float = Field(ge=0.0, le=1.0, description="Fraction of auto-coded stays reviewed.")
