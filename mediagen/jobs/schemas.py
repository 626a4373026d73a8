"""Request and response bodies of the jobs API (Pydantic v2).

Unknown keys in `parameters` are passed through to the provider (a Replicate model has inputs of
its own) when their names are identifiers and their values JSON scalars or short lists; the
built-in generator ignores them.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mediagen.config import get_settings
from mediagen.jobs.states import JobStatus

MAX_EXTRA_PARAMETERS = 32
_EXTRA_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_MODEL = re.compile(r"^[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*(:[0-9a-f]{64})?$|^[0-9a-f]{64}$")

Scalar = str | int | float | bool | None


class GenerationParameters(BaseModel):
    """Generation settings. Width and height must be multiples of 8 within the configured bounds
    (64..2048 by default)."""

    model_config = ConfigDict(extra="allow")

    width: int = Field(1024, description="Image width in pixels, a multiple of 8.")
    height: int = Field(1024, description="Image height in pixels, a multiple of 8.")
    num_inference_steps: int = Field(50, ge=1, le=150)
    seed: int | None = Field(
        None, ge=0, le=2**32 - 1, description="Same prompt + seed, same image."
    )
    output_format: Literal["png", "jpg", "jpeg", "webp"] = "png"
    num_outputs: int = Field(1, ge=1, le=4)
    guidance_scale: float | None = Field(None, ge=0, le=50)
    negative_prompt: str | None = Field(None, max_length=2000)

    @field_validator("width", "height")
    @classmethod
    def _dimension(cls, value: int) -> int:
        settings = get_settings()
        low, high = settings.min_dimension, settings.max_dimension
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        if value % 8:
            raise ValueError("must be a multiple of 8")
        return value

    @model_validator(mode="after")
    def _extras(self) -> GenerationParameters:
        extra = self.model_extra or {}
        if len(extra) > MAX_EXTRA_PARAMETERS:
            raise ValueError(f"at most {MAX_EXTRA_PARAMETERS} extra parameters are accepted")
        for key, value in extra.items():
            if not _EXTRA_KEY.match(key):
                raise ValueError(f"parameter name {key!r} is not an identifier")
            values = value if isinstance(value, list) else [value]
            if len(values) > 64 or not all(isinstance(v, Scalar) for v in values):
                raise ValueError(
                    f"parameter {key!r} must be a scalar or a list of up to 64 scalars"
                )
            if any(isinstance(v, str) and len(v) > 10_000 for v in values):
                raise ValueError(f"parameter {key!r} is longer than 10000 characters")
        return self


class GenerateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "prompt": "A beautiful sunset over mountains",
                    "parameters": {"width": 1024, "height": 1024, "num_inference_steps": 50},
                }
            ]
        },
    )

    prompt: str = Field(..., description="What to generate; not blank, at most MAX_PROMPT_LENGTH.")
    parameters: GenerationParameters = Field(default_factory=GenerationParameters)
    model: str | None = Field(
        None,
        description="Replicate model `owner/name`, `owner/name:version` or a version id; "
        "defaults to REPLICATE_DEFAULT_MODEL. Ignored by the built-in generator.",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        limit = get_settings().max_prompt_length
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters")
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        if value is not None and not _MODEL.match(value):
            raise ValueError("must be `owner/name`, `owner/name:<64-hex version>` or a version id")
        return value


class GenerateResponse(BaseModel):
    job_id: uuid.UUID
    status: JobStatus
    message: str


class JobStatusResponse(BaseModel):
    job_id: uuid.UUID
    status: JobStatus
    result_url: str | None
    created_at: datetime
    updated_at: datetime
    retry_count: int


class OutputInfo(BaseModel):
    url: str
    content_type: str
    size: int


class JobDetail(JobStatusResponse):
    prompt: str
    parameters: dict[str, Any]
    model: str | None
    provider: str
    error: str | None
    outputs: list[OutputInfo]
    attempts: int = Field(description="How many times generation was started.")
    max_retries: int
    prediction_id: str | None
    started_at: datetime | None
    completed_at: datetime | None
    next_attempt_at: datetime | None = Field(description="When a retrying job runs again.")
    duration_seconds: float | None = Field(description="From creation to completion.")


class ErrorResponse(BaseModel):
    """Every error answer: a human message, a machine code, and details when there are any."""

    detail: str
    code: str
    errors: list[dict[str, Any]] | None = None
