"""Output models of the predictor: one `StayPrediction` per scored stay.

Its JSON is exactly one line of `cimcoder predict` and the body of `POST /v1/code`:

    {"id": ..., "codes": [{"code", "label", "score", "decision", "role", "cim11",
      "evidence": [{"start", "end", "text"}], "flags"}, ...], "model": {...}}

Extra keys live only inside the nested objects ("flags" in a code; "input" in "model").
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Decision = Literal["auto", "review", "reject"]
DECISIONS: tuple[Decision, ...] = ("auto", "review", "reject")
ProposedRole = Literal["DP", "DR", "DAS"]
Runtime = Literal["torch", "onnx", "onnx-int8"]
RUNTIMES: tuple[Runtime, ...] = ("torch", "onnx", "onnx-int8")


class Evidence(BaseModel):
    """A span of the stay's text (documents joined with blank lines) supporting a code.

    Offsets count Unicode code points (Python `str` indices), not UTF-16 units as JavaScript
    strings do: they differ after any character outside the BMP (an emoji, 𝔸).
    """

    model_config = ConfigDict(extra="forbid")

    start: int = Field(
        ge=0,
        description="Start offset in the stay's text, in Unicode code points (not UTF-16 "
        "units: in JavaScript, index `Array.from(text)`, not `text`).",
    )
    end: int = Field(ge=0, description="End offset (exclusive), in Unicode code points.")
    text: str = Field(description="The text of the span.")


class CodePrediction(BaseModel):
    """One candidate code of the stay."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="Canonical code in the model's terminology (e.g. 'I50.0').")
    label: str | None = Field(description="Label of the code in the terminology edition.")
    score: float = Field(ge=0.0, le=1.0, description="Calibrated probability (raw if no policy).")
    decision: Decision = Field(description="auto (code it), review (a coder checks), reject.")
    role: ProposedRole = Field(description="Proposed PMSI role: DP (one per stay), DR (when the DP is a Z51 session: the disease treated) or DAS.")
    cim11: list[str] = Field(description="Equivalent CIM-11 MMS code(s).")
    evidence: list[Evidence] = Field(description="Spans of the report supporting the code.")
    flags: list[str] = Field(
        default_factory=list,
        description="PMSI checks raised by the code, e.g. 'interdit en DP'.",
    )


class InputInfo(BaseModel):
    """How much of the stay's text the model read."""

    model_config = ConfigDict(extra="forbid")

    chars: int = Field(description="Characters in the stay's text.")
    chars_read: int = Field(description="Characters within the model's chunk budget.")
    truncated: bool = Field(description="True when the text went beyond the chunk budget.")


class ModelInfo(BaseModel):
    """Which model, terminology edition and thresholds produced the answer."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Model name (run name or registered model).")
    version: str = Field(description="Model version: run id, registry version or folder hash.")
    source: str = Field(description="Where the model was loaded from (run folder or URI).")
    architecture: str = Field(description="Scorer kind, e.g. plm_icd or tfidf_lr.")
    runtime: Runtime = Field(
        default="torch",
        description="What ran the scoring: torch, onnx (ONNX Runtime fp32) or onnx-int8 "
        "(ONNX Runtime, dynamically quantized int8 weights: scores differ slightly).",
    )
    terminology: str = Field(description="cim10 or cim11.")
    edition: str = Field(description="Terminology edition of the label space.")
    labels: int = Field(description="Number of codes the model scores.")
    thresholds_version: str | None = Field(
        description="Version of policy.json (calibration + thresholds); None without one."
    )
    calibrated: bool = Field(description="False when no policy.json: scores are raw.")
    note: str | None = Field(default=None, description="Caveat, e.g. no decision policy.")
    input: InputInfo | None = Field(default=None, description="How much of the text was read.")


class StayPrediction(BaseModel):
    """The answer for one stay (one `cimcoder predict` JSONL line)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(description="Stay or report identifier (as given).")
    codes: list[CodePrediction] = Field(description="Candidates, best score first.")
    model: ModelInfo = Field(description="Model, terminology and thresholds versions.")
