"""Request and response bodies of the jobs API (Pydantic v2). A job's `parameters` are the
model's inputs, checked as `mediagen.jobs.parameters` says.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
)
from pydantic_core import PydanticCustomError

from mediagen.catalog import MODEL_PATTERN
from mediagen.config import MAX_QUEUE_SECONDS_LIMIT, get_settings
from mediagen.jobs import paging
from mediagen.jobs.parameters import NO_NUL, Parameters
from mediagen.jobs.states import JobStatus, Priority

_MODEL = re.compile(MODEL_PATTERN)

# http(s) with a DNS name or IPv4 host, optional port (0..65535), printable ASCII after it.
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
_WEBHOOK = re.compile(
    r"^https?://[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
    rf"(:{_PORT})?([/?#][\x21-\x7e]*)?$"
)
WebhookEvent = Literal["start", "progress", "completed"]


def _all_events() -> list[WebhookEvent]:
    return ["start", "progress", "completed"]


# What counts as blank around a prompt: Python's and JSON Schema's (ECMAScript) whitespace
# together, so the schema's pattern and the validator agree on every string.
BLANK = (
    " \t\n\r\f\v\x1c\x1d\x1e\x1f\x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_PROMPT_PATTERN = "^[^\\u0000]*[^\\u0000{}][^\\u0000]*$".format(
    "".join(f"\\u{ord(c):04x}" for c in BLANK)
)
_SETTINGS = get_settings()  # bounds that the OpenAPI schema states, as configured


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

    prompt: str = Field(
        ...,
        description="What to generate; not blank, at most MAX_PROMPT_LENGTH characters.",
        json_schema_extra={
            "minLength": 1,
            "maxLength": _SETTINGS.max_prompt_length,
            "pattern": _PROMPT_PATTERN,
        },
    )
    parameters: Parameters = Field(default_factory=dict)
    model: str | None = Field(
        None,
        description="The model to run: `owner/name`, `owner/name:version` or a version id, "
        "one this service allows (`GET /api/v1/models` lists them); without one, the default "
        "model. Picks the provider that runs the job.",
        json_schema_extra={"pattern": _MODEL.pattern},
    )

    priority: Priority = Field(
        Priority.NORMAL,
        description="How soon the job starts among queued ones: `high` before `normal` before "
        "`low`. A key may ask for up to its ceiling (403 above it).",
    )
    retention: int | None = Field(
        None,
        ge=60,
        le=_SETTINGS.result_ttl,
        description="Seconds the outputs are kept after the job completes, at most RESULT_TTL "
        "(the default); then they are deleted and the job becomes `expired`.",
    )
    max_queue_seconds: int | None = Field(
        None,
        ge=1,
        le=MAX_QUEUE_SECONDS_LIMIT,
        description="Seconds the job may wait to start: still pending then, it fails with "
        "`error_code` `queue_timeout` (found within SWEEP_INTERVAL). Without it, the key's "
        "default, else the model's, else MAX_QUEUE_SECONDS (0: no limit).",
    )

    webhook: str | None = Field(
        None,
        max_length=2000,
        pattern=_WEBHOOK.pattern,
        description="http(s) URL that receives the job's events as signed POSTs (Standard "
        "Webhooks); a host resolving to a private, loopback or link-local address is refused.",
    )
    webhook_events_filter: list[WebhookEvent] = Field(
        default_factory=_all_events,
        min_length=1,
        description="Which events are sent to `webhook`; all three by default.",
        json_schema_extra={"uniqueItems": True},
    )

    @field_validator("webhook_events_filter")
    @classmethod
    def _unique_events(cls, value: list[WebhookEvent]) -> list[WebhookEvent]:
        if len(set(value)) != len(value):
            raise ValueError("events must not repeat")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        limit = get_settings().max_prompt_length
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters")
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        value = value.strip(BLANK)
        if not value:
            raise ValueError("must not be blank")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        if value is not None and not _MODEL.match(value):
            raise ValueError("must be `owner/name`, `owner/name:<64-hex version>` or a version id")
        return value


class InputsRequest(GenerateRequest):
    """A job whose model may take no prompt (a Cog model through `/v1`, which takes its inputs
    as the model declares them): without one, its prompt, its label, is empty."""

    prompt: str = Field(
        "",
        description="The input `prompt`, when the model has one.",
        json_schema_extra={"maxLength": _SETTINGS.max_prompt_length, "pattern": NO_NUL},
    )


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
    thumbnail_url: str | None = Field(
        None,
        description="An image's small copy (WebP, at most 256 px a side), signed as `url` is; "
        "null for other files, images that small already, or when none could be made.",
    )


class JobProgress(BaseModel):
    current: int
    total: int
    percent: int


class JobMetrics(BaseModel):
    """What the job cost. Recorded when it completes (or its prediction fails); for another job
    that has started, what its timestamps tell (queue time, and run time once it ended)."""

    queue_seconds: float | None = Field(None, description="From creation to its first start.")
    run_seconds: float | None = Field(None, description="From its first start to its end.")
    predict_time: float | None = Field(
        None,
        description="The provider's own measure of the prediction, in seconds, when it gives "
        "one (the built-in generator: its render time).",
    )
    bytes_stored: int | None = Field(None, description="The total size of its stored outputs.")


class JobDetail(JobStatusResponse):
    prompt: str
    parameters: dict[str, Any]
    model: str | None
    provider: str
    error: str | None
    error_code: str | None = Field(
        None, description="What kind of failure `error` is, for machines: `queue_timeout`."
    )
    outputs: list[OutputInfo]
    output: Any = Field(
        None,
        description="What the model returned, in its shape: text, a number, a list, a JSON "
        "object, each file in it as the URL of its stored copy (the same as in `outputs`); an "
        "image model's files: the list of their URLs. While a model streams: the chunks so far "
        "(a list). Null until then, and once the outputs expired.",
    )
    attempts: int = Field(description="How many times generation was started.")
    max_retries: int
    prediction_id: str | None
    started_at: datetime | None
    completed_at: datetime | None
    next_attempt_at: datetime | None = Field(description="When a retrying job runs again.")
    duration_seconds: float | None = Field(description="From creation to completion.")
    progress: JobProgress | None = Field(
        description="The prediction's last reported progress (parsed from its logs)."
    )
    queue_position: int | None = Field(
        description="While pending: how many jobs of its model start before this one as things "
        "stand (higher priorities first, then keys take turns by weight, and each key's jobs in "
        "the order they came). An estimate: jobs that other keys submit later can take turns "
        "ahead of it, a key at most its weight for each turn this job's key still waits."
    )
    paused: bool | None = Field(
        None,
        description="While pending: true when its model is paused by an operator (it stays "
        "queued and starts in turn once the model is resumed).",
    )
    priority: Priority = Priority.NORMAL
    batch_id: uuid.UUID | None = Field(None, description="The batch the job was submitted in.")
    expires_at: datetime | None = Field(
        None, description="When the outputs are deleted (set once the job completes)."
    )
    queue_deadline: datetime | None = Field(
        None,
        description="When the job fails with `queue_timeout` if it has not started by then.",
    )
    logs: str | None = Field(
        None,
        description="The model's logs: the newest JOB_LOGS_MAX_BYTES, cut at a line; a first "
        "line `[... N bytes earlier omitted]` says what was dropped.",
    )
    metrics: JobMetrics | None = None


class ErrorResponse(BaseModel):
    """Every error answer: a human message, a machine code, and details when there are any."""

    detail: str
    code: str
    errors: list[dict[str, Any]] | None = Field(None, description="Each invalid field (422).")
    status: JobStatus | None = Field(None, description="The job's state (409 on cancel).")
    allowed: list[str] | None = Field(
        None, description="The models this service allows (422 `model_not_allowed`)."
    )
    max_priority: str | None = Field(
        None, description="The highest priority the key may ask for (403 `priority_not_allowed`)."
    )


def _iso_datetime(value: object) -> object:
    """Only ISO 8601 date-times, as the schema says (not pydantic's Unix timestamps)."""
    if isinstance(value, str) and not re.match(r"^\d{4}-\d\d-\d\d", value):
        raise PydanticCustomError("datetime_format", "Input should be an ISO 8601 date-time")
    return value


def _in_utc(value: datetime) -> datetime:
    """The instant in UTC; one that falls outside the years 1..9999 there (year 1 at +23:00,
    say) is the nearest end of the range, which compares the same to every job."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return (datetime.min if value.year < 5000 else datetime.max).replace(tzinfo=UTC)


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_datetime), AfterValidator(_in_utc)]


class JobQuery(BaseModel):
    """Filters and paging of `GET /api/v1/jobs`."""

    model_config = ConfigDict(extra="forbid")

    status: JobStatus | None = None
    model: str | None = Field(None, pattern=_MODEL.pattern, description="`owner/name[:version]`.")
    created_after: IsoDatetime | None = None
    created_before: IsoDatetime | None = None
    limit: int = Field(20, ge=1, le=100)
    cursor: str | None = Field(
        None, pattern=rf"^{paging.CURSOR}$", description="From the previous page's `next`."
    )


class JobSummary(JobStatusResponse):
    prompt: str
    model: str | None
    error: str | None
    thumbnail_url: str | None = Field(
        None, description="The first output's `thumbnail_url` (see the job's `outputs`)."
    )


class JobList(BaseModel):
    data: list[JobSummary]
    next: str | None = Field(description="URL of the next page; null on the last one.")
