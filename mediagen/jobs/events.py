"""Live job events: one Redis Stream per job, `mediagen:events:{job_id}`, so any API instance can
serve them (`mediagen.jobs.live` streams them as Server-Sent Events).

Postgres stays the source of truth; the stream only says that something changed. Right after a
successful guarded transition the process that made it appends a `status` event, read back from
the row; a poll that sees new progress appends a `progress` event. Publishing never fails a
transition: any error (Redis down, the read-back failing) is logged and ignored, and readers
reconcile with Postgres when the stream is quiet.

Every transition raises the pair (attempt, rank of the state), so readers can drop a stale or
duplicated `status` event by comparing it with the last one they sent.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis

from mediagen.config import Settings
from mediagen.jobs.models import Job
from mediagen.jobs.states import JobStatus

log = logging.getLogger(__name__)

STREAM_PREFIX = "mediagen:events:"
STREAM_MAXLEN = 1000  # approximate (`MAXLEN ~`): never fewer entries than this once trimmed
STREAM_TTL = 24 * 3600  # refreshed by every event

_RANK = {
    JobStatus.PENDING: 0,
    JobStatus.PROCESSING: 1,
    JobStatus.RETRYING: 2,
    JobStatus.COMPLETED: 3,
    JobStatus.FAILED: 3,
    JobStatus.CANCELED: 3,
}
_STATUS_FIELDS = ("status", "retry_count", "error", "attempt", "result_key")


def stream_key(job_id: uuid.UUID | str) -> str:
    return f"{STREAM_PREFIX}{job_id}"


def status_payload(job_id: uuid.UUID | str, row: dict[str, Any]) -> dict[str, Any]:
    """What a `status` event stores (`result_key` becomes `result_url` when served)."""
    return {
        "job_id": str(job_id),
        "status": str(JobStatus(row["status"])),
        "retry_count": row["retry_count"],
        "error": row["error"],
        "attempts": row["attempt"],
        "result_key": row["result_key"],
    }


def payload_of(job: Job) -> dict[str, Any]:
    return status_payload(job.id, {name: getattr(job, name) for name in _STATUS_FIELDS})


def order(payload: dict[str, Any]) -> tuple[int, int]:
    """Strictly increasing over a job's transitions: a later state sorts after an earlier one."""
    return int(payload["attempts"]), _RANK[JobStatus(payload["status"])]


class Publisher:
    """Appends events to the jobs' streams (XADD with MAXLEN ~, then EXPIRE, in one MULTI)."""

    def __init__(self, client: aioredis.Redis, owned: bool = False) -> None:
        self.client = client
        self.owned = owned

    async def add(self, job_id: uuid.UUID | str, event: str, data: dict[str, Any]) -> None:
        key = stream_key(job_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(
                key,
                {"event": event, "data": orjson.dumps(data)},
                maxlen=STREAM_MAXLEN,
                approximate=True,
            )
            pipe.expire(key, STREAM_TTL)
            await pipe.execute()

    async def close(self) -> None:
        if self.owned:
            await self.client.aclose()


_publisher: Publisher | None = None


def install(client: aioredis.Redis, owned: bool = False) -> None:
    """Publish this process's transitions through `client` (the API's shared Redis client)."""
    global _publisher
    _publisher = Publisher(client, owned)


async def open_publisher(settings: Settings) -> None:
    """A client of the publisher's own (worker processes)."""
    install(
        aioredis.from_url(
            settings.redis_url or "redis://localhost:6379/0",
            socket_connect_timeout=2,
            socket_timeout=2,
        ),
        owned=True,
    )


async def close_publisher() -> None:
    global _publisher
    publisher, _publisher = _publisher, None
    if publisher is not None:
        await publisher.close()


async def _publish(job_id: uuid.UUID | str, event: str, data: dict[str, Any]) -> None:
    if _publisher is None:
        return
    try:
        await _publisher.add(job_id, event, data)
    except Exception as exc:  # a notification layer: never fail the caller
        log.warning("job %s: %s event not published: %s", job_id, event, exc)


async def job_created(job: Job) -> None:
    """The `pending` event of a new job (before it is dispatched)."""
    await _publish(job.id, "status", payload_of(job))


async def job_moved(job_id: uuid.UUID | str, to: JobStatus) -> None:
    """Called right after a successful guarded transition to `to`: publish the row as it is.

    If the row has already moved on (a concurrent transition), nothing is published: the later
    transition publishes its own event. Client webhooks (`mediagen.notify`) are queued first.
    """
    from mediagen.notify import service as notify

    await notify.job_moved(job_id, to)
    if _publisher is None:
        return
    try:
        row = await Job.filter(id=job_id).first().values(*_STATUS_FIELDS)
    except Exception as exc:
        log.warning("job %s: %s event not published: %s", job_id, to, exc)
        return
    if row is None or JobStatus(row["status"]) is not to:
        return
    await _publish(job_id, "status", status_payload(job_id, row))


async def progress_changed(job_id: uuid.UUID | str, progress: dict[str, int]) -> None:
    from mediagen.notify import service as notify

    await notify.progress_changed(job_id, progress)
    await _publish(job_id, "progress", progress)
