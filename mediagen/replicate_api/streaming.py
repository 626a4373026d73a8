"""`GET /v1/predictions/{id}/stream`: a prediction's output as Replicate streams it, so the
clients' `stream()` works against mediagen.

Replicate's stream is Server-Sent Events: `logs` (log text as it grows), `output` (one output
each), `error` (`{"detail": ...}`) and `done` (`{}`, or `{"reason": "canceled"}`), after which
the stream ends. A model that streams (text chunks) has an `output` event per chunk as the job
gets them; the rest of its output (files are stored only when it ends, and a model that does
not stream returns its value at the end) comes when it finished, just before `done`: each item
of a list, else the value. A text is sent as it is, any other value as JSON. The events
underneath are the job's own (`mediagen.jobs.live`: a snapshot from Postgres, then its Redis
Stream), served by `live.serve` and written here.

The URL in `urls.stream` is signed (MEDIA_URL_TTL), as Replicate's stream URLs are
capabilities: the JavaScript client opens it without its token. Without a valid signature the
caller's token must own the prediction.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request

from mediagen.base_url import service_root
from mediagen.errors import NotFoundError
from mediagen.jobs import live
from mediagen.jobs import repository as repo
from mediagen.jobs.feed import Event, stream_end
from mediagen.jobs.models import Job
from mediagen.jobs.states import JobStatus
from mediagen.keys.models import ApiKey
from mediagen.keys.owners import owner_id
from mediagen.replicate_api.auth import SCHEMES, replicate_caller
from mediagen.replicate_api.predictions import output_of, stream_key
from mediagen.storage.base import Storage
from mediagen.storage.signing import MediaSigner


def signed(request: Request, job_id: uuid.UUID) -> bool:
    """Whether the request carries a valid, unexpired signature for this prediction's stream."""
    signer: MediaSigner | None = request.app.state.storage.signer
    query = request.scope.get("query_string", b"")
    return signer is not None and signer.verify(stream_key(job_id), query)


class ReplicateFeed:
    """One job's events (`feed.JobFeed`, with logs) written as Replicate's stream has them."""

    def __init__(self, job_id: uuid.UUID, storage: Storage, base: str) -> None:
        self.job_id = job_id
        self.storage = storage
        self.base = base
        self.sent = 0  # items of the output sent (chunks as they came)

    def _items(self, items: list[Any], offset: int, event_id: str | None) -> list[ServerSentEvent]:
        """The items from index `offset` of the output that were not sent yet (a new attempt's
        first chunks, which a stream cannot take back, go on from where the client is)."""
        fresh = items[max(self.sent - offset, 0) :]
        self.sent = max(self.sent, offset + len(items))
        return [ServerSentEvent(data=_text(item), event="output", id=event_id) for item in fresh]

    async def write(self, event: Event) -> list[ServerSentEvent]:
        data = event.data
        if event.name == "logs":
            return [ServerSentEvent(data=data["logs"], event="logs", id=event.id)]
        if event.name == "output":
            return self._items(list(data["output"]), int(data["offset"]), event.id)
        if event.name != "status":
            return []  # progress: Replicate's stream has no such event (nor `queue`, not read)
        status = JobStatus(data["status"])
        if not status.is_terminal:
            return []
        if status is JobStatus.FAILED:
            return [
                _json("error", {"detail": data["error"] or "the prediction failed"}, event.id),
                _json("done", {"reason": "error"}, event.id),
            ]
        if status is JobStatus.CANCELED:
            return [_json("done", {"reason": "canceled"}, event.id)]
        job = await Job.get_or_none(id=self.job_id)
        output = await output_of(job, self.storage, self.base) if job is not None else None
        if isinstance(output, list):
            sent = self._items(output, 0, event.id)
        else:
            sent = [] if output is None else self._items([output], 0, event.id)
        return [*sent, _json("done", {}, event.id)]


def _text(item: Any) -> str:
    """An output item as an event's data: a text as it is, anything else as JSON."""
    return item if isinstance(item, str) else orjson.dumps(item).decode()


def _json(kind: str, data: dict[str, str], event_id: str | None) -> ServerSentEvent:
    return ServerSentEvent(data=orjson.dumps(data).decode(), event=kind, id=event_id)


async def open_stream(request: Request, job_id: uuid.UUID) -> EventSourceResponse:
    """The stream of a prediction, for a signed URL or its owner's token; it counts as a read
    and takes a stream place: one of the prediction's through a signed URL (whoever holds the
    URL must not spend its owner's), else one of the owner's (MAX_STREAMS_PER_KEY)."""
    state = request.app.state
    base = service_root(request)
    # The stream's end first, then the row (as `live.job_events`).
    info = await stream_end(state.events_redis, job_id)
    allowed: Callable[[], Awaitable[bool]]
    by_signature = signed(request, job_id)
    if by_signature:
        job = await repo.get(job_id)
        owner = await ApiKey.get_or_none(id=job.api_key_id) if job and job.api_key_id else None
        if owner is not None and owner.revoked_at is not None:
            job = None
        allowed = _key_active(owner)
    else:
        owner = await replicate_caller(request)
        job = await repo.get_owned(job_id, owner_id(owner))
        allowed = live.still_allowed(request, SCHEMES)
    if job is None:
        raise NotFoundError(f"prediction {job_id} not found")
    state.read_limiter.check(owner)
    feed = ReplicateFeed(job.id, state.storage, base)
    return await live.serve(
        request,
        job,
        owner,
        None,
        info,
        allowed,
        feed.write,
        logs=True,
        signed=by_signature,
        queue=False,
    )


def _key_active(owner: ApiKey | None) -> Callable[[], Awaitable[bool]]:
    """A signed stream stays open while the prediction's key is not revoked."""

    async def allowed() -> bool:
        if owner is None:
            return True  # an anonymous prediction: the signature is the only credential
        return await ApiKey.filter(id=owner.id, revoked_at=None).exists()

    return allowed
