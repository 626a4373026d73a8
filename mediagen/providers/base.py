"""The provider interface: how a job asks a model for media without ever waiting on it.

A provider is driven in short, non-blocking steps. `create` starts a prediction and returns at
once; `get` reports where it stands (the worker re-schedules itself with a countdown while it
runs); `fetch` turns a finished output into bytes to store; `cancel` stops it upstream. No method
may sleep for the model: that is what keeps thousands of jobs in flight on one worker process.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class PredictionStatus(enum.StrEnum):
    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in (self.SUCCEEDED, self.FAILED, self.CANCELED)


@dataclass(frozen=True)
class GenerationRequest:
    """What a provider needs to know about one attempt of one job."""

    job_id: str
    prompt: str
    parameters: dict[str, Any]
    model: str | None = None
    attempt: int = 1
    webhook_url: str | None = None


@dataclass(frozen=True)
class Output:
    """One output of a finished prediction: inline bytes (built-in) or a URL to download."""

    url: str | None = None
    data: bytes | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class Prediction:
    id: str
    status: PredictionStatus
    outputs: list[Output] = field(default_factory=list)
    error: str | None = None
    logs: str | None = None
    # How long the provider suggests waiting before the next `get` (None: use POLL_INTERVAL).
    poll_after: float | None = None


@dataclass
class Fetched:
    """A downloaded output ready to store: a byte stream with its checked type and extension."""

    body: bytes | AsyncIterator[bytes]
    content_type: str
    ext: str


@runtime_checkable
class Provider(Protocol):
    name: str

    async def create(self, request: GenerationRequest) -> Prediction:
        """Start a prediction. Raises `RetryableProviderError` or `PermanentProviderError`."""
        ...

    async def get(self, prediction_id: str, request: GenerationRequest) -> Prediction:
        """The prediction's current state (never waits for it to finish)."""
        ...

    async def cancel(self, prediction_id: str) -> None:
        """Ask upstream to stop; a prediction already terminal is not an error."""
        ...

    async def fetch(self, output: Output) -> Fetched:
        """The output's bytes, checked (type, size, address) before anything is stored."""
        ...

    async def close(self) -> None: ...
