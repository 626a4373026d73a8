"""The Job the client returns, built from the API's job JSON (detail, summary or status), and
the error that carries one.

Below the clients: a Job bound to a sync Client knows it only as :class:`BoundClient`, so this
module imports neither client (and they import it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from mediagen.client._errors import MediagenError
from mediagen.client._logs import LogCallback
from mediagen.client._states import TERMINAL

# progress(event_name, data): "status" events carry {job_id, status, retry_count, error,
# error_code, attempts, result_url, output}, "progress" events {current, total, percent},
# "output" events (a model that streams) {job_id, attempt, output: [new chunks], offset},
# "queue" events (while pending, when it changed) {job_id, queue_position}, "logs" events (when
# the logs are followed) {job_id, logs: the new text, offset: its first byte in the log}. The
# async client also awaits a callback that returns an awaitable.
ProgressCallback = Callable[[str, dict[str, Any]], object]


class BoundClient(Protocol):
    """What a bound Job calls: the sync :class:`~mediagen.client.Client`'s methods."""

    def get(self, job_id: str) -> Job: ...

    def wait(
        self,
        job_id: str,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
        raise_on_failure: bool = False,
        *,
        logs: bool = False,
        on_log: LogCallback | None = None,
    ) -> Job: ...

    def download(self, job_or_id: Job | str, directory: str | Path) -> list[Path]: ...

    def cancel(self, job_id: str) -> Job: ...


@dataclass(frozen=True)
class Output:
    """One output file of a completed job: a signed URL (relative to the API for local storage)."""

    url: str
    content_type: str | None = None
    size: int | None = None
    thumbnail_url: str | None = None  # a small WebP of an image output (None: none made)


@dataclass(frozen=True)
class Model:
    """A model the service runs (`GET /api/v1/models`): what `generate(model=...)` takes."""

    name: str
    provider: str
    default: bool = False
    input_schema: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Model:
        schema = data.get("input_schema")
        return cls(
            name=str(data["name"]),
            provider=str(data.get("provider") or ""),
            default=bool(data.get("default")),
            input_schema=schema if isinstance(schema, dict) else None,
        )


@dataclass(frozen=True)
class Progress:
    current: int
    total: int
    percent: int


@dataclass(frozen=True)
class Metrics:
    """What a job cost (seconds; bytes): what is not known yet, or not reported, is None."""

    queue_seconds: float | None = None
    run_seconds: float | None = None
    predict_time: float | None = None
    bytes_stored: int | None = None

    @classmethod
    def from_json(cls, data: Any) -> Metrics | None:
        if not isinstance(data, dict):
            return None
        return cls(
            data.get("queue_seconds"),
            data.get("run_seconds"),
            data.get("predict_time"),
            data.get("bytes_stored"),
        )


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass
class Job:
    """A job as `GET /api/v1/jobs/{id}` describes it. Lists carry fewer fields (the rest keep
    their defaults); ``raw`` is the JSON it was read from.

    From a sync :class:`~mediagen.client.Client`, ``job.wait()``, ``job.download(dir)``,
    ``job.cancel()`` and ``job.refresh()`` use that client."""

    id: str
    status: str
    result_url: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    retry_count: int = 0
    prompt: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    provider: str | None = None
    error: str | None = None
    error_code: str | None = None  # what kind of failure: `queue_timeout` (waited too long)
    outputs: list[Output] = field(default_factory=list)
    # What the model returned, in its shape: text, a number, a list, a dict, each file in it as
    # its URL (an image model: the list of its files' URLs); while it streams, the chunks so far.
    output: Any = None
    attempts: int = 0
    max_retries: int | None = None
    prediction_id: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    next_attempt_at: datetime | None = None
    duration_seconds: float | None = None
    progress: Progress | None = None
    queue_position: int | None = None
    paused: bool | None = None  # while pending: its model is paused by an operator
    logs: str | None = None  # the model's logs, the newest part (JOB_LOGS_MAX_BYTES)
    metrics: Metrics | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _client: BoundClient | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any], client: BoundClient | None = None) -> Job:
        progress = data.get("progress")
        return cls(
            id=str(data["job_id"]),
            status=str(data["status"]),
            result_url=data.get("result_url"),
            created_at=_time(data.get("created_at")),
            updated_at=_time(data.get("updated_at")),
            retry_count=int(data.get("retry_count") or 0),
            prompt=data.get("prompt"),
            parameters=dict(data.get("parameters") or {}),
            model=data.get("model"),
            provider=data.get("provider"),
            error=data.get("error"),
            error_code=data.get("error_code"),
            outputs=[
                Output(str(o["url"]), o.get("content_type"), o.get("size"), o.get("thumbnail_url"))
                for o in data.get("outputs") or []
            ],
            output=data.get("output"),
            attempts=int(data.get("attempts") or 0),
            max_retries=data.get("max_retries"),
            prediction_id=data.get("prediction_id"),
            started_at=_time(data.get("started_at")),
            completed_at=_time(data.get("completed_at")),
            next_attempt_at=_time(data.get("next_attempt_at")),
            duration_seconds=data.get("duration_seconds"),
            progress=Progress(
                int(progress["current"]), int(progress["total"]), int(progress["percent"])
            )
            if isinstance(progress, dict)
            else None,
            queue_position=data.get("queue_position"),
            paused=data.get("paused"),
            logs=data.get("logs"),
            metrics=Metrics.from_json(data.get("metrics")),
            raw=data,
            _client=client,
        )

    @property
    def done(self) -> bool:
        """Finished: completed, failed, canceled or expired (completed, its outputs deleted
        since, when their retention ended)."""
        return self.status in TERMINAL

    def _bound(self) -> BoundClient:
        if self._client is None:
            raise RuntimeError("this Job is not bound to a sync Client: use the client's methods")
        return self._client

    def refresh(self) -> Job:
        return self._bound().get(self.id)

    def wait(
        self,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
        raise_on_failure: bool = False,
        *,
        logs: bool = False,
        on_log: LogCallback | None = None,
    ) -> Job:
        return self._bound().wait(
            self.id,
            progress=progress,
            timeout=timeout,
            raise_on_failure=raise_on_failure,
            logs=logs,
            on_log=on_log,
        )

    def download(self, directory: str | Path) -> list[Path]:
        return self._bound().download(self, directory)

    def cancel(self) -> Job:
        return self._bound().cancel(self.id)


class JobFailedError(MediagenError):
    """A waited-for job ended without outputs to download: ``failed``, ``canceled`` or
    ``expired``. Beside Job rather than in ``_errors``, so that ``_errors`` needs no Job."""

    def __init__(self, job: Job) -> None:
        super().__init__(
            job.error or f"job {job.id} {job.status}",
            code=f"job_{job.status}",
            status=None,
        )
        self.job = job
        self.job_status = job.status
