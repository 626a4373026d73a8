"""The provider interface: how a job asks a model for media without ever waiting on it.

A provider is driven in short, non-blocking steps. `create` starts a prediction and returns at
once; `get` reports where it stands (the worker re-schedules itself with a countdown while it
runs); `fetch` opens a finished output as a checked byte stream that goes straight into storage
(never whole in memory); `cancel` stops it upstream. No method may sleep for the model: that is
what keeps thousands of jobs in flight on one worker process.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from mediagen.catalog import Endpoint, ModelRoute
from mediagen.errors import NoCapacityError
from mediagen.jobs.models import Job


class PredictionStatus(enum.StrEnum):
    """Where a prediction stands upstream: the statuses Replicate's and Cog's APIs share."""

    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in FINISHED

    @classmethod
    def parse(cls, value: object) -> PredictionStatus | None:
        """An upstream status, as either API writes it; None for one it does not know.
        `aborted` (Replicate: terminated before it ran, e.g. a deadline) counts as failed."""
        if value == "aborted":
            return cls.FAILED
        try:
            return cls(str(value))
        except ValueError:
            return None


FINISHED = frozenset(
    {PredictionStatus.SUCCEEDED, PredictionStatus.FAILED, PredictionStatus.CANCELED}
)


def finished(value: object) -> bool:
    """Whether an upstream status (as either API writes it) says the prediction is over."""
    status = PredictionStatus.parse(value)
    return status is not None and status.is_terminal


@dataclass(frozen=True)
class InputRef:
    """An input file a job's parameter names (`mediagen.files.inputs`), as a provider hands it
    on: by `url` when the model's servers can fetch one, else by its bytes (`read`)."""

    key: str  # in storage
    content_type: str
    size: int
    url: str | None = None  # absolute and fetchable from outside (presigned, or signed /media)
    read: Callable[[], Awaitable[bytes]] | None = None  # the bytes, read from storage when asked

    async def data(self) -> bytes:
        if self.read is None:
            raise RuntimeError(f"input {self.key} cannot be read here")
        return await self.read()

    async def as_uri(self) -> str:
        """`url`, else the bytes as a `data:` URI (what Replicate and Cog accept for a file)."""
        if self.url:
            return self.url
        encoded = base64.b64encode(await self.data()).decode("ascii")
        return f"data:{self.content_type};base64,{encoded}"


@dataclass(frozen=True)
class GenerationRequest:
    """What a provider needs to know about one attempt of one job."""

    job_id: str
    prompt: str
    parameters: dict[str, Any]
    model: str | None = None
    attempt: int = 1
    webhook_url: str | None = None
    # The job's model route (mediagen.catalog): Cog endpoints and deadline, a Replicate `ref`.
    route: ModelRoute | None = None
    # Parameters that name input files (their values in `parameters` are the names the client
    # gave, e.g. `mediagen://files/<id>`): parameter -> the file. Empty for most jobs.
    inputs: Mapping[str, InputRef] = field(default_factory=dict)

    async def provider_input(self, prompt: bool = True) -> dict[str, Any]:
        """`parameters` with each input file as a URL or a `data:` URI, and the prompt (unless
        `prompt` is False: a Cog model takes it only as an input it declares)."""
        given = {**self.parameters, "prompt": self.prompt} if prompt else dict(self.parameters)
        for name, ref in self.inputs.items():
            given[name] = await ref.as_uri()
        return given


@dataclass(frozen=True)
class Output:
    """One output file of a finished prediction: inline bytes (built-in) or a URL to download,
    and where it sits in the prediction's output value (`Prediction.output`; None: the output
    is a list of files, as the built-in generator's)."""

    url: str | None = None
    data: bytes | None = None
    content_type: str | None = None
    at: tuple[str | int, ...] | None = None


@dataclass(frozen=True)
class Prediction:
    id: str
    status: PredictionStatus
    outputs: list[Output] = field(default_factory=list)
    error: str | None = None
    logs: str | None = None
    # Bytes of the prediction's log before `logs` (a provider that keeps only its newest part).
    logs_omitted: int = 0
    # The provider's own measure of the prediction's run, in seconds, once it has ended.
    predict_time: float | None = None
    # How long the provider suggests waiting before the next `get` (None: use POLL_INTERVAL).
    poll_after: float | None = None
    # The output value (`mediagen.jobs.values`): once succeeded, what the model returned with
    # None at each file's place (`Output.at`); while it runs, the chunks streamed so far (a
    # list), or None.
    output: Any = None


@dataclass
class Fetched:
    """An output opened for storing: its body with its checked type and extension.

    `body` is the whole output (`bytes`) or a stream of it (`AsyncIterator[bytes]`), usable only
    while the `fetch` context that yielded it is open, and only once. A stream checks as it goes
    and raises `PermanentProviderError` / `RetryableProviderError` from inside the iteration
    (over the size limit, truncated, interrupted), so whatever consumes it fails with that same
    error and keeps nothing.
    """

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

    async def reported(self, prediction_id: str) -> bool:
        """Whether upstream already reported the prediction's end, before its id was recorded
        (a webhook faster than the create's own write): then it is looked at at once, not a
        poll interval later. False where a poll asks upstream anyway."""
        ...

    def fetch(self, output: Output) -> AbstractAsyncContextManager[Fetched]:
        """Open the output for reading; `Fetched.body` streams (checked as it goes) while open.

            async with provider.fetch(output) as fetched:
                size = await storage.save(key, fetched.body, fetched.content_type)

        What can be checked before any byte is read (address, status, type, declared size)
        raises on entering; what only the bytes tell (size, truncation, a dropped connection)
        raises from the body's iteration. Leaving the context releases the download whatever
        happened; the provider's download deadline covers the context's whole lifetime.
        """
        ...

    async def close(self) -> None: ...


Lose = Callable[[str, str], Awaitable[None]]


class Capacity(Protocol):
    """What a provider with servers of its own (Cog) adds to the scheduler's slots
    (`mediagen.scheduling`), for the providers that need it (`Providers.capacity`): it never
    reaches into the pipeline."""

    async def turned_away(self, slot: Endpoint, exc: NoCapacityError) -> NoCapacityError:
        """The server of `slot` refused or could not be reached: set it aside; what the job
        retries with (uncounted)."""
        ...

    async def canceled(self, prediction_id: str) -> None:
        """Upstream confirmed a cancel: the prediction's slot is free once its job is over."""
        ...

    async def release(self, job: Job) -> None:
        """The job's prediction is over (its terminal webhook): its slot goes to the next."""
        ...

    async def sweep(self, lose: Lose) -> None:
        """Health checks and stale entries, staged outputs no job will use (the sweeper);
        `lose(job_id, reason)` for each job whose server died with its prediction."""
        ...
