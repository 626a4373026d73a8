"""`GET /api/v1/jobs/{job_id}/events`: a job's status changes and progress as Server-Sent Events.

The first event is a snapshot of the job from Postgres (`id:` the newest stream entry it
covers); then the job's Redis Stream (`mediagen.jobs.events`) is followed with XREAD BLOCK, so
any API instance serves any job. `Last-Event-ID` resumes after that entry (replaying what the
stream still holds) instead of sending a snapshot; an id the stream no longer covers (trimmed,
expired, unknown) gets a snapshot. The server closes the stream after the terminal event, and
answers a resume of a finished job that has nothing more to say with 204, which tells an
`EventSource` to stop reconnecting.

Events are checked against what was already sent: a `status` event not newer than the last one
(see `events.order`) and a repeated `progress` are dropped. When the stream is quiet, or Redis is
unreachable, the job is re-read from Postgres, so a lost event delays an update but never hides
the end.

With `?logs=true` the model's logs come too (`logs` events, `mediagen.jobs.joblogs`): each
carries its byte offset in the job's log, and only text past what this client was sent goes
out. A resumed stream knows nothing of what the client has until the stream's own `logs`
entries tell it, so until then the re-reads from Postgres send no logs (they would repeat text).

A model that streams its output (text chunks) has `output` events while it runs: the chunks
new to this client and the index of the first in the attempt's output (the job's row holds the
chunks so far, which a snapshot sends). Resumed streams follow the same rule as logs.

While the job is `pending`, a `queue` event says how many jobs are ahead of it
(`queue_position`, as in its detail) and whether its model is paused, when that changed, at most
once per QUEUE_SECONDS. It is read here, for the streams that are open, from its model's queue
(`mediagen.scheduling`: one O(log n) Redis read
per open stream of a pending job per QUEUE_SECONDS), rather than written to every pending job's
stream on every start, which would cost the backlog times the starts. Its `id:` is that of the
last entry sent, so resuming from it misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
import redis.asyncio as aioredis
from fastapi import APIRouter, FastAPI, Header, Query, Request, Response
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Message

from mediagen.errors import AuthenticationError
from mediagen.jobs import events, joblogs, service
from mediagen.jobs.event_schema import EVENT_SCHEMA, STREAM_DOC
from mediagen.jobs.models import Job
from mediagen.jobs.payloads import served, status_payload
from mediagen.jobs.router import READ, Reader
from mediagen.jobs.schemas import ErrorResponse
from mediagen.jobs.states import JobStatus
from mediagen.keys.auth import BEARER, identify
from mediagen.keys.models import ApiKey
from mediagen.limits.streams import Slot, StreamSlots, blocking_client
from mediagen.scheduling import queue_position
from mediagen.storage.base import Storage

log = logging.getLogger(__name__)

BLOCK_SECONDS = 10.0  # XREAD BLOCK: how often a stream checks its key and renews its place
RECONCILE_SECONDS = 30.0  # a quiet stream is reconciled with Postgres this often
BATCH = 100
PING_SECONDS = 15
SEND_TIMEOUT = 30.0
QUEUE_SECONDS = 1.0  # a pending job's `queue` event: at most this often, and when it changed
_MAX_ID_PART = 2**64 - 1

StreamId = tuple[int, int]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Read streams on a client of their own whose socket timeout outlasts a blocked XREAD; its
    pool holds one connection per open stream (MAX_STREAMS) and a few for the rest."""
    settings = app.state.settings
    app.state.events_redis = blocking_client(
        settings, "mediagen-events", settings.max_streams, BLOCK_SECONDS
    )
    app.state.stream_slots = StreamSlots(
        app.state.events_redis, settings.max_streams_per_key, settings.max_streams
    )
    try:
        yield
    finally:
        await app.state.events_redis.aclose()


router = APIRouter(tags=["jobs"], lifespan=lifespan)


def parse_id(value: str) -> StreamId | None:
    """A Redis stream id `ms-seq`; None if `value` is not one."""
    ms, dash, seq = value.partition("-")
    if not (dash and ms.isdigit() and seq.isdigit() and ms.isascii() and seq.isascii()):
        return None
    parsed = int(ms), int(seq)
    return parsed if max(parsed) <= _MAX_ID_PART else None


@dataclass(frozen=True)
class StreamInfo:
    first: StreamId
    last: str
    length: int


async def stream_info(client: aioredis.Redis, key: str) -> StreamInfo | None:
    """The stream's first entry, last id and length; None if it does not exist."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.xrange(key, count=1)
        pipe.xrevrange(key, count=1)
        pipe.xlen(key)
        head, tail, length = await pipe.execute()
    if not head or not tail:
        return None
    first = parse_id(head[0][0])
    return StreamInfo(first or (0, 0), tail[0][0], int(length))


async def stream_end(client: aioredis.Redis, job_id: uuid.UUID) -> StreamInfo | None:
    """`stream_info` of the job's stream, read before its row (so a snapshot covers at least
    every entry up to the id it is sent with); None when Redis does not answer (the stream is
    then followed from Postgres until it does)."""
    try:
        return await stream_info(client, events.stream_key(job_id))
    except RedisError as exc:
        log.warning("job %s: events stream unreadable (%s); using Postgres", job_id, exc)
        return None


def resumable(last_event_id: str, info: StreamInfo) -> bool:
    """The stream still holds every entry after `last_event_id`, which it issued."""
    wanted, last = parse_id(last_event_id), parse_id(info.last)
    if wanted is None or last is None or wanted > last:
        return False
    # Trimming (MAXLEN ~) never leaves fewer than STREAM_MAXLEN entries: a shorter stream is whole.
    return info.length < events.STREAM_MAXLEN or wanted >= info.first


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a job, before any API writes it: `status`, `progress`, `logs`, `output` or
    `queue`, the stream
    entry it covers (`id`) and its payload (`data`, JSON-ready)."""

    name: str
    id: str
    data: dict[str, Any]


class JobFeed:
    """The events of one job for one client, while the client may see them: the stream closes
    within BLOCK_SECONDS of its key being revoked. Each surface writes them its own way
    (`serve`)."""

    def __init__(
        self,
        job: Job,
        client: aioredis.Redis,
        storage: Storage,
        slot: Slot,
        allowed: Callable[[], Awaitable[bool]],
        logs: bool = False,
        queue: bool = True,
    ) -> None:
        self.job = job
        self.key = events.stream_key(job.id)
        self.client = client
        self.storage = storage
        self.slot = slot
        self.allowed = allowed
        self.sent: tuple[int, int] | None = None  # events.order of the last status sent
        self.progress: dict[str, Any] | None = None
        self.finished = False
        # `logs` events wanted; how far the client has the job's log (None: not known, as
        # after a resume, where only the stream's events may add to what it has).
        self.logs = logs
        self.logs_sent: int | None = None
        # How many chunks of the current attempt's streamed output the client has (None: not
        # known, after a resume), and that attempt.
        self.output_sent: int | None = 0
        self.output_attempt = 0
        self.resumed = False
        # `queue` events wanted; the job's status as last seen, the position last sent and
        # when it was last read (monotonic seconds).
        self.queue = queue
        self.status = job.status
        self.position: tuple[int, bool] | None = None  # and whether its model is paused
        self.position_read = -QUEUE_SECONDS

    async def run(self, cursor: str | None, info: StreamInfo | None) -> AsyncGenerator[Event, None]:
        """`cursor`: resume after this stream id (no snapshot); None: snapshot first."""
        try:
            async for event in self._follow(cursor, info):
                yield event
        finally:
            await self.slot.release()

    async def _follow(self, cursor: str | None, info: StreamInfo | None) -> AsyncIterator[Event]:
        self.resumed = cursor is not None
        if self.resumed:
            self.output_sent = None
        if cursor is None:
            cursor = info.last if info else "0-0"
            for event in await self._snapshot(self.job, cursor):
                yield event
        quiet, checked = 0.0, time.monotonic()
        while not self.finished:
            for event in await self._queue(cursor):
                yield event
            waiting = self._queued()
            block = QUEUE_SECONDS if waiting else BLOCK_SECONDS
            try:
                entries = _entries(
                    await self.client.xread(
                        {self.key: cursor}, count=BATCH, block=int(block * 1000)
                    )
                )
            except RedisError as exc:
                log.warning(
                    "job %s: events stream unreadable (%s); using Postgres", self.job.id, exc
                )
                await asyncio.sleep(block)
                entries = []
            # The key and the stream's place are checked every BLOCK_SECONDS, however short the
            # wait (a pending job's stream wakes every QUEUE_SECONDS for its position).
            if entries or not waiting or time.monotonic() - checked >= BLOCK_SECONDS:
                checked = time.monotonic()
                if not await self.allowed():
                    return  # the key was revoked meanwhile
                with contextlib.suppress(RedisError):
                    await self.slot.renew()
            if not entries:  # quiet (or Redis down): now and then, make sure nothing was missed
                quiet += block
                if quiet < RECONCILE_SECONDS:
                    continue
                quiet = 0.0
                job = await Job.get_or_none(id=self.job.id)
                if job is None:
                    return  # deleted
                for event in await self._snapshot(job, cursor):
                    yield event
                continue
            quiet = 0.0
            for entry_id, fields in entries:
                cursor = entry_id
                for event in await self._entry(entry_id, fields):
                    yield event
                if self.finished:
                    break

    def _queued(self) -> bool:
        return self.queue and not self.finished and self.status is JobStatus.PENDING

    async def _queue(self, event_id: str) -> list[Event]:
        """A `queue` event, if the job is pending, its position was not read in the last
        QUEUE_SECONDS, and it changed since the last one sent."""
        now = time.monotonic()
        if not self._queued() or now - self.position_read < QUEUE_SECONDS:
            return []
        self.position_read = now
        try:
            queued = await queue_position(self.client, self.job.id)
        except RedisError:
            return []
        if queued is None or queued == self.position:
            return []
        self.position = queued
        position, paused = queued
        payload = {"job_id": str(self.job.id), "queue_position": position, "paused": paused}
        return [_event("queue", payload, event_id)]

    async def _entry(self, entry_id: str, fields: dict[str, str]) -> list[Event]:
        try:
            kind, data = fields["event"], orjson.loads(fields["data"])
            if kind == "status":
                events.order(data)  # checks the fields it needs
                return await self._status(data, entry_id)
            if kind == "progress" and isinstance(data, dict):
                return self._progress(data, entry_id)
            if kind == "logs" and isinstance(data, dict):
                return self._logs(data["logs"], data["offset"], entry_id)
            if kind == "output" and isinstance(data, dict):
                return self._output(data["output"], data["offset"], data["attempt"], entry_id)
            if kind not in ("status", "progress", "logs", "output"):
                return []  # a kind this version does not serve
        except (KeyError, TypeError, ValueError):
            pass
        log.warning("job %s: malformed event %s ignored", self.job.id, entry_id)
        return []

    async def _snapshot(self, job: Job, event_id: str) -> list[Event]:
        """The job as Postgres has it, where it is newer than what was sent (its log first,
        so a reader that stops at the final status has all of it)."""
        sent = []
        if job.logs and not (self.resumed and self.logs_sent is None):
            start, kept = joblogs.split(job.logs)
            sent += self._logs(kept, start, event_id)
        streaming = job.status is JobStatus.PROCESSING and isinstance(job.output, list)
        if streaming and not (self.resumed and self.output_sent is None):
            sent += self._output(job.output, 0, job.attempt, event_id)
        sent += await self._status(status_payload(job), event_id)
        if job.progress and job.status is JobStatus.PROCESSING:
            sent += self._progress(job.progress, event_id)
        return sent

    async def _status(self, payload: dict[str, Any], event_id: str) -> list[Event]:
        order = events.order(payload)
        if self.finished or (self.sent is not None and order <= self.sent):
            return []  # stale or already sent
        self.sent = order
        status = self.status = JobStatus(payload["status"])
        self.finished = status.is_terminal
        return [_event("status", await served(payload, self.storage), event_id)]

    def _progress(self, data: dict[str, Any], event_id: str) -> list[Event]:
        if self.finished or data == self.progress:
            return []
        self.progress = data
        return [_event("progress", data, event_id)]

    def _output(self, chunks: list[Any], offset: int, attempt: int, event_id: str) -> list[Event]:
        """The chunks of the attempt's streamed output the client has not got (a new attempt
        streams its own from the start)."""
        if self.finished or not isinstance(chunks, list):
            return []
        offset, attempt = int(offset), int(attempt)
        if attempt < self.output_attempt:
            return []  # an earlier attempt's, which ended
        if attempt > self.output_attempt:
            self.output_attempt, self.output_sent = attempt, 0
        sent = self.output_sent
        end = offset + len(chunks)
        if sent is not None and end <= sent:
            return []
        if sent is not None and offset < sent:
            chunks, offset = chunks[sent - offset :], sent
        self.output_sent = end
        return [
            _event("output", events.output_payload(self.job.id, attempt, chunks, offset), event_id)
        ]

    def _logs(self, text: str, offset: int, event_id: str) -> list[Event]:
        """What the client has not got of the log, if it asked for logs."""
        part = joblogs.unsent(self.logs_sent, str(text), int(offset)) if self.logs else None
        if part is None:
            return []
        self.logs_sent = part[1] + len(part[0].encode())
        return [_event("logs", events.logs_payload(self.job.id, *part), event_id)]


def _entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """The entries of an XREAD reply on one stream (RESP2: [[key, entries]]; RESP3: a dict)."""
    if not reply:
        return []
    streams = list(reply.values()) if isinstance(reply, dict) else [s[1] for s in reply]
    return [(str(entry_id), dict(fields or {})) for entry_id, fields in streams[0]]


def _event(kind: str, data: dict[str, Any], event_id: str) -> Event:
    return Event(kind, event_id, data)


# How a surface writes a job's events: each one as none, one or several events of its own.
Writer = Callable[[Event], Awaitable[Sequence[ServerSentEvent]]]


async def _as_json(event: Event) -> list[ServerSentEvent]:
    """`/api/v1`'s events: the event as it is, its payload as JSON."""
    return [ServerSentEvent(data=orjson.dumps(event.data).decode(), event=event.name, id=event.id)]


async def serve(
    request: Request,
    job: Job,
    owner: ApiKey | None,
    cursor: str | None,
    info: StreamInfo | None,
    allowed: Callable[[], Awaitable[bool]],
    write: Writer,
    logs: bool = False,
    signed: bool = False,
    queue: bool = True,
) -> EventSourceResponse:
    """The events of `job` (after the stream entry `cursor`, else a snapshot first), as
    `write` writes them, while `allowed()` says the caller may see them. The stream takes one
    of `owner`'s places (MAX_STREAMS_PER_KEY: 429; MAX_STREAMS on this server: 503), or, opened
    through a `signed` URL, one of the job's (`limits.streams.SIGNED_PER_JOB`), and frees it
    when the client leaves; it is pinged every PING_SECONDS, and a client that does not read
    for SEND_TIMEOUT is dropped. `queue`: read the pending job's position (`queue` events)."""
    state = request.app.state
    slots: StreamSlots = state.stream_slots
    slot = await (slots.take_signed(job.id) if signed else slots.take(owner))
    feed = JobFeed(job, state.events_redis, state.storage, slot, allowed, logs, queue)

    async def written() -> AsyncIterator[ServerSentEvent]:
        async with contextlib.aclosing(feed.run(cursor, info)) as followed:
            async for event in followed:
                for sent in await write(event):
                    yield sent

    async def closed(_: Message) -> None:  # the client left: free its place at once
        await slot.release()

    return EventSourceResponse(
        written(),
        ping=PING_SECONDS,
        send_timeout=SEND_TIMEOUT,
        client_close_handler_callable=closed,
    )


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    summary="Follow a job's status and progress (Server-Sent Events)",
    description=STREAM_DOC,
    responses={
        200: {
            "description": "The job's events, until its terminal status.",
            "content": {"text/event-stream": {"schema": EVENT_SCHEMA}},
        },
        204: {"description": "Resumed after the end of a finished job: nothing more to send."},
        **READ,
        429: {
            "model": ErrorResponse,
            "description": "Read rate limit, or MAX_STREAMS_PER_KEY streams already open.",
        },
        503: {"model": ErrorResponse, "description": "MAX_STREAMS open here, or Redis down."},
    },
)
async def job_events(
    job_id: uuid.UUID,
    request: Request,
    owner: Reader,
    last_event_id: Annotated[
        str | None,
        Header(
            description="Resume after this event id (`EventSource` sends it on reconnect); "
            "`0-0`: the whole history. Anything else gets a snapshot first.",
        ),
    ] = None,
    logs: Annotated[bool, Query(description="Also send the model's logs (`logs` events).")] = False,
) -> Response:
    # The stream's end first, then the row: the snapshot then covers at least every entry up to
    # the id it is sent with (a later one it already reflects is dropped as not newer).
    info = await stream_end(request.app.state.events_redis, job_id)
    job = await service.get_job(job_id, owner)
    if last_event_id is not None and parse_id(last_event_id) is None:
        last_event_id = None  # not one of ours: start afresh
    cursor = last_event_id if last_event_id and info and resumable(last_event_id, info) else None
    if last_event_id and job.status.is_terminal:
        at_end = cursor is not None and info is not None and parse_id(cursor) == parse_id(info.last)
        if info is None or at_end:
            return Response(status_code=204)
    return await serve(request, job, owner, cursor, info, still_allowed(request), _as_json, logs)


def still_allowed(
    request: Request, schemes: Collection[str] = BEARER
) -> Callable[[], Awaitable[bool]]:
    """Whether the caller of this stream may still see it: the caller rule again, on the same
    header (its key not revoked; for an anonymous caller, keys still not required)."""
    state, authorization = request.app.state, request.headers.get("authorization")

    async def allowed() -> bool:
        try:
            await identify(state, authorization, schemes)
        except AuthenticationError:
            return False
        return True

    return allowed
