"""Request and response bodies of the review API."""

from __future__ import annotations

import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cimcoder.inference.schemas import Evidence
from cimcoder.serving.validation import (
    STAY_ID_RULE,
    PlainText,
    ReportText,
    StayId,
)


class ReviewDocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: ReportText = Field(min_length=1, description="Plain text of the document.")
    doc_type: PlainText = Field(default="crh", max_length=32, description="crh, cro, lettre, ...")
    date: datetime.date | None = Field(default=None, description="Date the document was written.")


class StayIn(BaseModel):
    """A stay entering the review queue (its text must be the one the predictor scored)."""

    model_config = ConfigDict(extra="forbid")

    id: StayId = Field(description=f"Stay identifier: {STAY_ID_RULE}.")
    patient_id: PlainText | None = Field(default=None, max_length=128)
    unit: PlainText | None = Field(default=None, max_length=128, description="Unité médicale.")
    date: datetime.date | None = Field(default=None, description="Stay date (discharge).")
    text: ReportText | None = Field(
        default=None, description="The report, when there is one document."
    )
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
    """`POST /v1/review/stays`: a stay, which the service scores with its loaded model.

    A prediction sent along is refused, never trusted: what the coders review, what is
    auto-coded and what the monitoring measures must be the model's own answer. The
    administrator imports a predictions file with `cimcoder review import` (audited as such).
    """

    model_config = ConfigDict(extra="forbid")

    stay: StayIn

    @model_validator(mode="before")
    @classmethod
    def _no_prediction(cls, data: Any) -> Any:
        if isinstance(data, dict) and "prediction" in data:
            raise ValueError(
                "'prediction' is not accepted: the service scores the stay with its own model "
                "(send only 'stay'; predictions files go through `cimcoder review import`)"
            )
        return data


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

    code: PlainText = Field(min_length=1, max_length=16, description="Suggested or added code.")
    action: Literal["accept", "reject", "change", "add"]
    new_code: PlainText | None = Field(
        default=None, max_length=16, description="Target of a change."
    )
    reason: PlainText | None = Field(default=None, max_length=2000, description="Why (optional).")

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
    dp: PlainText | None = Field(default=None, max_length=16, description="Chosen DP (final code).")
    dr: PlainText | None = Field(
        default=None,
        max_length=16,
        description="Chosen DR (final code), only when the DP is a Z code for the care given "
        "(e.g. DP Z51.1 chemotherapy session, DR C50.4 the cancer treated); null: no DR.",
    )
    status: Literal["validated", "in_review"] = Field(
        default="validated", description="validated: coding done; in_review: draft."
    )

    @field_validator("dp", "dr")
    @classmethod
    def _blank_role_is_none(cls, value: str | None) -> str | None:
        return value if value and value.strip() else None


class ReviewResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision_id: str
    stay_id: str
    version: int
    status: str
    dp: str | None
    dr: str | None = Field(description="DR of the saved coding (null: none).")
    codes: list[dict[str, str | None]]
    replayed: bool = Field(description="True when this decision id had already been saved.")
    warnings: list[str] = Field(
        default_factory=list, description="PMSI checks, e.g. a forbidden parent code kept."
    )


class QcSettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    qc_rate: float = Field(ge=0.0, le=1.0, description="Fraction of auto-coded stays reviewed.")


# -- answers of the GET endpoints ---------------------------------------------------------


class QcSettings(BaseModel):
    """`GET/PUT /v1/review/settings`."""

    model_config = ConfigDict(extra="forbid")

    qc_rate: float = Field(description="Fraction of auto-coded stays sent to quality control.")


class StaySummary(BaseModel):
    """One stay of the review queue."""

    model_config = ConfigDict(extra="forbid")

    id: str
    unit: str | None = Field(description="Unité médicale.")
    date: str | None = Field(description="Stay date, ISO 8601.")
    status: str = Field(description="to_code, auto_coded, in_review or validated.")
    status_label: str = Field(description="The status in French words, as the page shows it.")
    auto_coded: bool
    qc_sampled: bool = Field(description="Auto-coded but drawn for quality control.")
    version: int = Field(description="Bumped by every save (optimistic lock).")
    dp: str | None = Field(description="DP of the stay's current coding.")
    dr: str | None = Field(description="DR of the stay's current coding (DP a Z care code).")
    updated_at: str = Field(description="Last change, ISO 8601 UTC.")
    validated_by: str | None


class StayQueue(BaseModel):
    """`GET /v1/review/stays`: one page of the filtered queue."""

    model_config = ConfigDict(extra="forbid")

    total: int = Field(description="Stays matching the filter, all pages.")
    stays: list[StaySummary]


class DocumentInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    doc_type: str
    date: str | None
    chars: int = Field(description="Length of the document's text.")


class StayModel(BaseModel):
    """What scored the stay."""

    model_config = ConfigDict(extra="forbid")

    version: str | None
    thresholds_version: str | None
    terminology: str
    edition: str | None
    input_hash: str = Field(description="Hash of the text the model scored.")


class Suggestion(BaseModel):
    """One code the model proposed (or rejected, kept for the coder to rescue)."""

    model_config = ConfigDict(extra="forbid")

    code: str
    label: str | None
    score: float
    decision: str = Field(description="auto, review or reject.")
    role: str | None
    cim11: list[str]
    evidence: list[Evidence]
    flags: list[str]


class CodedCode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    role: str | None


class CurrentCoding(BaseModel):
    """The stay's coding now: the last save's final codes, else the model's kept proposal."""

    model_config = ConfigDict(extra="forbid")

    dp: str | None
    dr: str | None
    codes: list[CodedCode]
    source: Literal["review", "model"]


class ReviewedCode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    action: str
    final_code: str | None
    role: str | None
    reason: str | None


class LastReview(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision_id: str
    coder: str
    at: str = Field(description="ISO 8601 UTC.")
    dp: str | None
    dr: str | None
    status: str
    codes: list[ReviewedCode]


class StayView(StaySummary):
    """`GET /v1/review/stays/{id}`: everything the stay page needs."""

    patient_id: str | None
    text: str = Field(
        description="The documents joined with blank lines (evidence offsets refer to it)."
    )
    documents: list[DocumentInfo]
    model: StayModel
    suggestions: list[Suggestion]
    coding: CurrentCoding
    last_review: LastReview | None


class MonitoringTotals(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stays: int
    auto_coded: int
    by_status: dict[str, int]


class MonitoringWeek(BaseModel):
    model_config = ConfigDict(extra="forbid")

    week: str = Field(description="ISO week, e.g. 2025-W07.")
    stays: int
    auto_coded: int
    qc_sampled: int
    validated: int
    codes_kept: int = Field(description="Suggestions decided auto or review.")
    codes_auto: int
    auto_rate: float | None = Field(description="Share of the week's stays fully auto-coded.")
    auto_code_rate: float | None = Field(description="Share of kept suggestions auto-coded.")
    score_psi: float | None = Field(description="PSI of the week's scores against the first week.")
    score_drift: str | None = Field(description="stable, modérée or majeure.")


class QcPrecision(BaseModel):
    """Precision of auto-coded codes measured on the quality-control sample."""

    model_config = ConfigDict(extra="forbid")

    stays_reviewed: int
    auto_codes_checked: int
    auto_codes_confirmed: int
    precision: float | None
    precision_ci95: list[float] | None = Field(description="95 % Wilson interval [low, high].")


class CorrectedCode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    rejected: int
    changed: int
    added: int = Field(description="Added by coders: codes the model missed.")
    accepted: int
    corrections: int


class CodeShare(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str
    train_share: float
    production_share: float
    ratio: float | None


class CodeFrequencyDrift(BaseModel):
    model_config = ConfigDict(extra="forbid")

    psi: float | None
    level: str | None
    codes: list[CodeShare]
    note: str | None = Field(default=None, description="Why there is no comparison (only then).")


class MonitoringDrift(BaseModel):
    model_config = ConfigDict(extra="forbid")

    score_reference_week: str | None
    score_bins: list[float]
    code_frequency: CodeFrequencyDrift


class MonitoringReport(BaseModel):
    """`GET /v1/monitoring`."""

    model_config = ConfigDict(extra="forbid")

    generated_at: str
    totals: MonitoringTotals
    weekly: list[MonitoringWeek]
    qc: QcPrecision
    most_corrected: list[CorrectedCode]
    drift: MonitoringDrift
