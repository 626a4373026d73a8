"""A mediagen job as a Replicate prediction, and the version ids of the models it runs.

Shared by the API (answers) and the worker (webhook bodies), so both show the same object."""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from mediagen.base_url import absolute
from mediagen.files.uris import FILE_URI
from mediagen.jobs import values
from mediagen.jobs.models import Job
from mediagen.jobs.payloads import predict_time
from mediagen.jobs.states import JobStatus
from mediagen.replicate_api.schemas import (
    PredictionMetrics,
    PredictionStatus,
    PredictionUrls,
    ReplicatePrediction,
)
from mediagen.storage.base import Storage
from mediagen.storage.signing import MediaSigner

PREFIX = "/v1"
FILES_PATH = "/files"  # Replicate's files API (`mediagen.replicate_api.files`)
_VERSION = re.compile(r"^[0-9a-f]{64}$")

STATUS: dict[JobStatus, PredictionStatus] = {
    JobStatus.PENDING: "starting",
    JobStatus.PROCESSING: "processing",
    JobStatus.RETRYING: "processing",
    JobStatus.COMPLETED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELED: "canceled",
    JobStatus.EXPIRED: "succeeded",  # with `data_removed: true`
}


def version_id(model: str) -> str:
    """The version id a model shows: the one its name carries (`owner/name:<id>`, or a bare
    id), else a stable one derived from the name (mediagen models have no versions)."""
    name, _, version = model.partition(":")
    if version:
        return version
    if _VERSION.match(name):
        return name
    return hashlib.sha256(f"mediagen:{name}".encode()).hexdigest()


def model_name(model: str) -> str:
    """`owner/name` without its version (a bare version id stays as it is)."""
    return model.partition(":")[0]


def timestamp(value: datetime | None) -> str | None:
    """As Replicate writes times: ISO 8601 in UTC with a `Z`."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def stream_key(job_id: uuid.UUID | str) -> str:
    """What a stream URL's signature covers (no storage key looks like it)."""
    return f"v1-stream:{job_id}"


def stream_url(job_id: uuid.UUID | str, base: str, signer: MediaSigner | None) -> str:
    """The prediction's Replicate-format stream (`streaming`), signed when a signer is loaded:
    the JavaScript client opens it without its token, as Replicate's stream URLs allow."""
    url = f"{base}{PREFIX}/predictions/{job_id}/stream"
    return f"{url}?{signer.query(stream_key(job_id))}" if signer else url


def file_urls(base: str) -> str:
    """The start of every file's `urls.get` (`/v1/files`) at the service root `base`; its id
    follows."""
    return f"{base}{PREFIX}{FILES_PATH}/"


def input_of(job: Job, base: str) -> dict[str, Any]:
    """The inputs it was given: its parameters, each input file as its `urls.get`, and its
    prompt as `prompt` (a prediction made without one, for a model that takes none, has an
    empty prompt: none is shown)."""
    files = file_urls(base)
    parameters = {
        name: f"{files}{value.removeprefix(FILE_URI)}"
        if isinstance(value, str) and value.startswith(FILE_URI)
        else value
        for name, value in (job.parameters or {}).items()
    }
    return {"prompt": job.prompt, **parameters} if job.prompt else parameters


async def output_of(job: Job, storage: Storage, base: str, status: JobStatus | None = None) -> Any:
    """The prediction's output as Replicate returns it, as of `status` (the job's by default):
    once succeeded, what the model returned, each file as its URL (signed or presigned,
    absolute); while it runs (or after it failed or was canceled), the chunks it streamed so
    far; else None (`mediagen.jobs.values`)."""
    state = status or job.status
    if state is JobStatus.COMPLETED and job.status is JobStatus.COMPLETED:
        urls = [absolute(await storage.url_for(o["key"]), base) for o in job.outputs]
        return values.shown(job.output, job.outputs, urls)
    if state is not JobStatus.EXPIRED and not job.outputs and isinstance(job.output, list):
        return job.output
    return None


async def prediction_of(
    job: Job,
    storage: Storage,
    base: str,
    default_model: str,
    *,
    status: JobStatus | None = None,
    with_logs: bool = True,
) -> ReplicatePrediction:
    """`job` as a prediction; `status` shows it as of that state (a webhook's event), `base`
    the service root its URLs start with."""
    state = status or job.status
    model = job.model or default_model
    urls = f"{base}{PREFIX}/predictions/{job.id}"
    return ReplicatePrediction(
        id=str(job.id),
        model=model_name(model),
        version=version_id(model),
        input=input_of(job, base),
        output=await output_of(job, storage, base, state),
        logs=(job.logs or "") if with_logs else "",
        error=job.error if state is JobStatus.FAILED else None,
        status=STATUS[state],
        created_at=timestamp(job.created_at) or "",
        started_at=timestamp(job.started_at),
        completed_at=timestamp(job.completed_at) if state.is_terminal else None,
        urls=PredictionUrls(
            get=urls,
            cancel=f"{urls}/cancel",
            stream=stream_url(job.id, base, storage.signer),
        ),
        metrics=PredictionMetrics(predict_time=predict_time(job) if state.is_terminal else None),
        data_removed=state is JobStatus.EXPIRED,
        source="api",
    )


def as_json(prediction: ReplicatePrediction) -> dict[str, Any]:
    return prediction.model_dump(mode="json")
