"""The HTTP API's bodies as pydantic models: they validate requests and make the OpenAPI description."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Decision = Literal["ok", "flagged", "reformed", "rejected_rows", "alert"]


class PredictRequest(BaseModel):
    """Either `inputs` (nested N,C,H,W lists, or flat rows of C*H*W numbers) or `inputs_b64` + `dtype` + `shape`."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] | None = Field(
        default=None, description="N,C,H,W nested lists, or N rows of C*H*W numbers"
    )
    inputs_b64: str | None = Field(
        default=None, description="base64 of little-endian float32 or uint8 values"
    )
    dtype: Literal["float32", "uint8"] | None = Field(
        default=None, description="dtype of inputs_b64; uint8 means value/255 scaled into the input range"
    )
    shape: list[int] | None = Field(
        default=None, description="shape of inputs_b64: [N, C, H, W] or [N, C*H*W]"
    )


class Flag(BaseModel):
    adversarial: bool
    score: float = Field(description="max over detectors of (score - threshold); > 0 means flagged")


class AlarmInfo(BaseModel):
    statistic: float = Field(description="PRADA's Shapiro-Wilk W of the key's minimum distances")
    delta: float


class PredictResponse(BaseModel):
    request_id: str
    labels: list[int] = Field(description="predicted class per row; -1 for a row rejected by the detectors")
    scores: list[list[float] | None] | None = Field(
        description="class probabilities after the key's output mode; null for label-only keys"
    )
    output: str
    decision: Decision
    flags: list[Flag] | None
    alarm: AlarmInfo | None


class EncryptedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    public_context_b64: str = Field(description="base64 of public.ctx (ramparts.protection.he_files)")
    inputs_b64: str = Field(description="base64 of an inputs ciphertext file (ramparts.protection.he_files)")


class EncryptedResponse(BaseModel):
    request_id: str
    outputs_b64: str = Field(description="base64 of an outputs ciphertext file, for the client to decrypt")


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    input_shape: list[int]
    classes: int


class ErrorDetail(BaseModel):
    code: str
    message: str
    param: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (401, "missing or unknown key"),
        (403, "key blocked or revoked, or budget exhausted"),
        (413, "body too large"),
        (415, "body is not JSON"),
        (422, "invalid input"),
        (429, "rate limited (see Retry-After)"),
    )
}

__all__ = [
    "ERROR_RESPONSES",
    "AlarmInfo",
    "Decision",
    "EncryptedRequest",
    "EncryptedResponse",
    "ErrorBody",
    "ErrorDetail",
    "Flag",
    "Health",
    "PredictRequest",
    "PredictResponse",
]
