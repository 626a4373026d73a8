"""Bodies of the Replicate-compatible surface (`/v1`), as Replicate's HTTP API shapes them, so
the official clients parse mediagen's answers unchanged."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from mediagen.catalog import MODEL_PATTERN
from mediagen.jobs.event_schema import json_data, sse_event
from mediagen.jobs.parameters import MAX_PARAMETERS, GenerationParameters
from mediagen.jobs.schemas import GenerateRequest

_GENERATE: dict[str, Any] = GenerateRequest.model_json_schema()


def _input_schema(schema: JsonDict) -> None:
    """`input` is the model's inputs: the rules every model shares, and the built-in
    generator's own (`prompt`, which it needs, and its parameters) as the example."""
    parameters = GenerationParameters.model_json_schema()
    names = dict(parameters["propertyNames"])
    names.pop("not", None)  # `prompt` is one of the inputs here
    schema.clear()
    schema.update(
        {
            **parameters,
            "title": "Input",
            "description": "The model's inputs, as its schema declares them (`GET "
            "/v1/models/{owner}/{name}`, `latest_version.openapi_schema`), checked against it "
            "where it is known. These properties are the built-in generator's, which needs "
            "`prompt`; a Cog model takes `prompt` only if it declares it.",
            "properties": {"prompt": _GENERATE["properties"]["prompt"], **parameters["properties"]},
            "propertyNames": names,
            "maxProperties": MAX_PARAMETERS + 1,
        }
    )


PredictionStatus = Literal["starting", "processing", "succeeded", "failed", "canceled"]
# Replicate's webhook events; `output` and `logs` both become mediagen's `progress`.
ReplicateEvent = Literal["start", "output", "logs", "completed"]


class _Create(BaseModel):
    # Unknown fields (`stream`, `webhook_completed`, ...) are accepted and ignored, as
    # Replicate ignores what a model does not use.
    model_config = ConfigDict(extra="ignore")

    input: dict[str, Any] = Field(
        description="The model's inputs: `prompt` is the job's prompt, the rest its parameters "
        "(as `parameters` of `POST /api/v1/generate`); a model that takes no `prompt` (a Cog "
        "model may not) needs none.",
        json_schema_extra=_input_schema,
    )
    webhook: str | None = Field(
        None,
        max_length=2000,
        pattern=_GENERATE["properties"]["webhook"]["anyOf"][0]["pattern"],
        description="http(s) URL that receives the prediction as signed POSTs (Standard "
        "Webhooks, as Replicate signs them).",
    )
    webhook_events_filter: list[ReplicateEvent] | None = Field(
        None,
        description="Which events are sent: `start`, `output`, `logs`, `completed` (all "
        "by default); `output` and `logs` are sent as progress updates.",
    )


class ModelPredictionRequest(_Create):
    """`POST /v1/models/{owner}/{name}/predictions`."""


class PredictionRequest(_Create):
    """`POST /v1/predictions`: the model as `owner/name`, `owner/name:version` or a version id."""

    version: str = Field(max_length=200, pattern=MODEL_PATTERN)


class PredictionUrls(BaseModel):
    get: str
    cancel: str
    stream: str


class PredictionMetrics(BaseModel):
    predict_time: float | None = Field(None, description="Seconds the model ran.")


class ReplicatePrediction(BaseModel):
    """A prediction: one mediagen job (same id) as Replicate shows it.

    States: pending -> `starting`, processing/retrying -> `processing`, completed ->
    `succeeded`, failed -> `failed`, canceled -> `canceled`; an expired job is `succeeded`
    with `data_removed: true` and no output."""

    id: str
    model: str
    version: str
    input: dict[str, Any]
    output: Any = Field(
        None,
        description="What the model returned, in its shape (text, a number, a list, a JSON "
        "object), each file as its URL; a streaming model's: the list of its chunks, the ones "
        "so far while it runs.",
    )
    logs: str
    error: str | None
    status: PredictionStatus
    created_at: str
    started_at: str | None
    completed_at: str | None
    urls: PredictionUrls
    metrics: PredictionMetrics
    data_removed: bool
    source: Literal["api", "web"]


class PredictionPage(BaseModel):
    """A page of predictions, newest first: follow `next` (a URL) until it is null."""

    next: str | None
    previous: str | None
    results: list[ReplicatePrediction]


class FileUrls(BaseModel):
    get: str = Field(
        description="This file's address (`GET /v1/files/{id}`): give it as a prediction's "
        "input and the prediction uses the file (of the same key)."
    )


class ReplicateFile(BaseModel):
    """An input file (`/api/v1/files`, same id) as Replicate's files API shows it."""

    id: str
    name: str = Field(description="The name it was uploaded under.")
    content_type: str = Field(description="Its media type, found from its bytes.")
    size: int = Field(description="In bytes.")
    etag: str = Field(description="Stands for its bytes, which never change under an id.")
    checksums: dict[str, str] = Field(
        description="`sha256` and `md5` of its bytes, in hex (empty for a file kept before "
        "the service took them)."
    )
    metadata: dict[str, Any] = Field(description="What the upload's `metadata` gave, or `{}`.")
    created_at: str
    expires_at: str = Field(
        description="When it is deleted (FILE_TTL after upload, later while a prediction uses it)."
    )
    urls: FileUrls


class FilePage(BaseModel):
    """A page of files, newest first: follow `next` (a URL) until it is null."""

    next: str | None
    previous: str | None
    results: list[ReplicateFile]


class ModelVersion(BaseModel):
    id: str = Field(description="A 64-hex version id.")
    created_at: str
    cog_version: str | None
    openapi_schema: dict[str, Any] = Field(
        description="`components.schemas.Input` is the model's input schema."
    )


class ReplicateModel(BaseModel):
    url: str
    owner: str
    name: str
    description: str | None
    visibility: Literal["public", "private"]
    github_url: str | None
    paper_url: str | None
    license_url: str | None
    run_count: int
    cover_image_url: str | None
    default_example: ReplicatePrediction | None
    latest_version: ModelVersion | None


class WebhookSecret(BaseModel):
    key: str = Field(description="`whsec_...`: verifies this key's prediction webhooks.")


class Problem(BaseModel):
    """Every error on `/v1` (`application/problem+json`, RFC 9457)."""

    type: str
    title: str
    detail: str
    status: int


# One event of `GET /v1/predictions/{id}/stream` (`mediagen.replicate_api.streaming`).
STREAM_EVENT_SCHEMA: dict[str, Any] = {
    "oneOf": [
        sse_event("logs", {"type": "string", "description": "Text the log gained."}),
        sse_event(
            "output",
            {
                "type": "string",
                "description": "One chunk or item of the output: a text as it is, a file's URL, "
                "any other value as JSON.",
            },
        ),
        sse_event(
            "error",
            json_data(
                {
                    "type": "object",
                    "required": ["detail"],
                    "properties": {"detail": {"type": "string"}},
                }
            ),
        ),
        sse_event(
            "done",
            json_data(
                {"type": "object", "properties": {"reason": {"enum": ["canceled", "error"]}}}
            ),
        ),
    ]
}
