"""The events of one job for one client (`JobFeed`), as every event stream serves them
(`mediagen.jobs.live`).

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
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from mediagen.jobs import events, joblogs
from mediagen.jobs.models import Job
from mediagen.jobs.payloads import served, status_payload
from mediagen.jobs.states import JobStatus
from mediagen.limits.streams import Slot
from mediagen.scheduling import queue_position
from mediagen.storage.base import Storage

log = logging.getLogger(__name__)

BLOCK_SECONDS = 10.0  # XREAD BLOCK: how often a stream checks its key and renews its place
RECONCILE_SECONDS = 30.0  # a quiet stream is reconciled with Postgres this often
BATCH = 100
QUEUE_SECONDS = 1.0  # a pending job's `queue` event: at most this often, and when it changed
_MAX_ID_PART = 2**64 - 1

StreamId = tuple[int, int]


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
