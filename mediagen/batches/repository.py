"""Every write to a batch, in SQL through asyncpg (as the jobs' writes, `mediagen.jobs.repository`).

- `insert`: the batch, all its jobs (and their webhooks) and their places in the owner's
  unfinished-jobs counter, in one transaction: all or none, and all N within
  MAX_JOBS_IN_FLIGHT or none.
- `settle`: the guarded UPDATE that marks a batch finished once no job of it is unfinished,
  with its `batch.completed` webhook delivery written by the same statement; the guard
  (`completed_at IS NULL`) makes it happen once, however many jobs finish at the same moment
  and however often it is tried again (the sweeper: `settle_finished`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from asyncpg import Record

from mediagen.db import pool
from mediagen.jobs.models import ANONYMOUS, COUNTER_SHARDS
from mediagen.jobs.repository import _ADD_SHARDS
from mediagen.jobs.states import UNFINISHED, JobStatus
from mediagen.keys.owners import owner_sql

_UNFINISHED = ", ".join(f"'{status}'" for status in sorted(UNFINISHED))
_ISO = """'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'"""


@dataclass(frozen=True)
class NewJob:
    """One job of a batch, as `jobs.repository.insert` takes it."""

    id: uuid.UUID
    prompt: str
    parameters: dict[str, Any]
    model: str | None
    provider: str
    priority: str
    retention_seconds: int | None = None
    input_files: Sequence[str] | None = None
    webhook: str | None = None
    webhook_events: Sequence[str] = ()
    # How long it may wait to start (its own, its key's or its model's; None: no limit).
    max_queue_seconds: int | None = None


def plan_shards(
    counters: Sequence[Record], size: int, max_in_flight: int
) -> list[tuple[int, int]] | None:
    """How many of `size` new jobs each counter row (`id`, `shard`, `unfinished`) takes, each
    within its share of the limit (as `jobs.repository.insert` counts it); None if they do
    not all fit. Without a limit they are spread evenly."""
    if max_in_flight == 0:
        rows = [row["id"] for row in counters]
        return [(row, size // len(rows) + (i < size % len(rows))) for i, row in enumerate(rows)]
    taken: list[tuple[int, int]] = []
    left = size
    for row in counters:
        share = max_in_flight // COUNTER_SHARDS + (row["shard"] < max_in_flight % COUNTER_SHARDS)
        room = min(left, max(0, share - row["unfinished"]))
        if room:
            taken.append((row["id"], room))
            left -= room
    return taken if left == 0 else None


# Every shard of the owner's counter, locked in shard order (so two batches never deadlock; a
# single submission locks one shard and waits or passes over it).
_LOCK_SHARDS = (
    "SELECT id, shard, unfinished FROM job_counters WHERE scope = $1 ORDER BY shard FOR UPDATE"
)
# The counters, the batch, its jobs (in order: `batch_index`, and `created_at` one µs apart so
# listings and the queue keep that order) and their webhooks.
_INSERT_BATCH = f"""
WITH counted AS (
    UPDATE job_counters SET unfinished = job_counters.unfinished + a.n,
                            pending = job_counters.pending + a.n
    FROM unnest($1::int[], $2::int[]) AS a(id, n) WHERE job_counters.id = a.id
), made AS (
    INSERT INTO batches (id, api_key_id, size, webhook, created_at)
    VALUES ($3, $4, $5, $6, now())
    RETURNING created_at
), created AS (
    INSERT INTO jobs (id, status, prompt, parameters, model, provider, api_key_id, outputs,
                      attempt, retry_count, quota_shard, dispatched_at, created_at, updated_at,
                      request_id, traceparent, priority, retention_seconds, batch_id,
                      batch_index, input_files, queue_deadline)
    SELECT j.id, '{JobStatus.PENDING}', j.prompt, j.parameters::jsonb, j.model, j.provider, $4,
           '[]'::jsonb, 0, 0, j.shard, now(), now() + (j.n - 1) * interval '1 microsecond',
           now(), $7, $8, j.priority, j.retention, $3, j.n - 1, j.input_files::jsonb,
           now() + make_interval(secs => j.max_queue)
    FROM unnest($9::uuid[], $10::text[], $11::text[], $12::text[], $13::text[], $14::int[],
                $15::text[], $16::int[], $17::text[], $20::int[]) WITH ORDINALITY
         AS j(id, prompt, parameters, model, provider, shard, priority, retention, input_files,
              max_queue, n)
    RETURNING id
), hooked AS (
    INSERT INTO job_webhooks (id, job_id, url, events, created_at)
    SELECT gen_random_uuid(), h.id, h.url, h.events::jsonb, now()
    FROM unnest($9::uuid[], $18::text[], $19::text[]) AS h(id, url, events)
    JOIN created ON created.id = h.id
    WHERE h.url IS NOT NULL
)
SELECT created_at FROM made
"""  # noqa: S608 (assembled from constants of this module; every value is a parameter)


async def insert(
    batch_id: uuid.UUID,
    jobs: Sequence[NewJob],
    *,
    owner: uuid.UUID | None,
    max_in_flight: int,
    webhook: str | None,
    request_id: str | None = None,
    traceparent: str | None = None,
) -> datetime | None:
    """Create the batch and its pending jobs if all of them fit within the owner's
    `max_in_flight` unfinished jobs (0: no limit): the batch's `created_at` (its job i was
    created i µs later), or None, and nothing written, when they do not."""
    scope = owner or ANONYMOUS
    async with (await pool()).acquire() as db, db.transaction():
        counters = await db.fetch(_LOCK_SHARDS, scope)
        if not counters:  # the key's first jobs
            await db.execute(_ADD_SHARDS, scope)
            counters = await db.fetch(_LOCK_SHARDS, scope)
        plan = plan_shards(counters, len(jobs), max_in_flight)
        if plan is None:
            return None
        shards = {row["id"]: row["shard"] for row in counters}
        job_shards = [shards[row] for row, n in plan for _ in range(n)]
        created: datetime = await db.fetchval(
            _INSERT_BATCH,
            [row for row, _ in plan],
            [n for _, n in plan],
            batch_id,
            owner,
            len(jobs),
            webhook,
            request_id,
            traceparent,
            [job.id for job in jobs],
            [job.prompt for job in jobs],
            [orjson.dumps(job.parameters).decode() for job in jobs],
            [job.model for job in jobs],
            [job.provider for job in jobs],
            job_shards,
            [job.priority for job in jobs],
            [job.retention_seconds for job in jobs],
            [
                orjson.dumps(list(job.input_files)).decode() if job.input_files else None
                for job in jobs
            ],
            [job.webhook for job in jobs],
            [orjson.dumps(list(job.webhook_events)).decode() for job in jobs],
            [job.max_queue_seconds for job in jobs],
        )
    return created


# --- reading ---------------------------------------------------------------------------------
_GET = """
SELECT b.id, b.api_key_id, b.size, b.webhook, b.created_at, b.canceled_at, b.completed_at,
       coalesce(array_agg(j.id ORDER BY j.batch_index) FILTER (WHERE j.id IS NOT NULL), '{{}}')
           AS job_ids,
       coalesce(array_agg(j.status ORDER BY j.batch_index) FILTER (WHERE j.id IS NOT NULL),
                '{{}}') AS statuses,
       max(j.completed_at) AS last_completed_at
FROM batches b LEFT JOIN jobs j ON j.batch_id = b.id
WHERE b.id = $1 AND {owner}
GROUP BY b.id
"""


async def get_owned(batch_id: uuid.UUID, owner: uuid.UUID | None) -> Record | None:
    """The batch with its jobs' ids and states in order (one statement), if `owner` (None:
    anonymous) created it."""
    args: list[Any] = [batch_id]
    sql = _GET.format(owner=owner_sql(owner, args, "b.api_key_id"))
    return await (await pool()).fetchrow(sql, *args)


_MARK_CANCELED = f"""
UPDATE batches b SET canceled_at = now() WHERE id = $1 AND canceled_at IS NULL
AND EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id AND j.status IN ({_UNFINISHED}))
"""  # noqa: S608


async def mark_canceled(batch_id: uuid.UUID) -> bool:
    """Remember that the batch was canceled, if it was not and still has unfinished jobs (a
    batch that finished keeps its outcome): whether this call did."""
    status = await (await pool()).execute(_MARK_CANCELED, batch_id)
    return bool(status == "UPDATE 1")


# --- finishing -------------------------------------------------------------------------------
def _iso(column: str) -> str:
    return f"to_char({column} AT TIME ZONE 'UTC', {_ISO})"


_COUNTS = "jsonb_build_object({})".format(
    ", ".join(f"'{s}', count(*) FILTER (WHERE j.status = '{s}')" for s in JobStatus)
)
# The batch as `GET /api/v1/batches/{id}` shows it (`BatchDetail`), plus the event's name.
_PAYLOAD = f"""jsonb_build_object(
    'event', 'batch.completed', 'id', done.id::text,
    'status', CASE WHEN done.canceled_at IS NULL THEN 'completed' ELSE 'canceled' END,
    'size', done.size,
    'counts', (SELECT {_COUNTS} FROM jobs j WHERE j.batch_id = done.id),
    'job_ids', (SELECT coalesce(jsonb_agg(j.id::text ORDER BY j.batch_index), '[]'::jsonb)
                FROM jobs j WHERE j.batch_id = done.id),
    'webhook', done.webhook,
    'created_at', {_iso("done.created_at")},
    'canceled_at', {_iso("done.canceled_at")},
    'completed_at', {_iso("done.completed_at")})"""  # noqa: S608

_SETTLE = f"""
WITH done AS (
    UPDATE batches b SET completed_at = coalesce(
        (SELECT max(j.completed_at) FROM jobs j WHERE j.batch_id = b.id), now())
    WHERE b.id IN ({{candidates}}) AND b.completed_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id
                      AND j.status IN ({_UNFINISHED}))
    RETURNING b.*
), delivered AS (
    INSERT INTO webhook_deliveries (id, job_id, batch_id, event, url, payload, status, attempts,
                                    created_at)
    SELECT gen_random_uuid(), NULL, done.id, 'batch.completed', done.webhook, {_PAYLOAD},
           'pending', 0, clock_timestamp()
    FROM done WHERE done.webhook IS NOT NULL
    RETURNING id
)
SELECT (SELECT count(*) FROM done) AS settled, ARRAY(SELECT id FROM delivered) AS delivery_ids
"""  # noqa: S608
_SETTLE_ONE = _SETTLE.format(candidates="$1::uuid")
# Finished batches whose settle was lost (a process died between a job's commit and its
# announcement): the open ones (a partial index) with no unfinished job, at most $1.
_SETTLE_FOUND = _SETTLE.format(
    candidates=f"""SELECT o.id FROM batches o WHERE o.completed_at IS NULL AND NOT EXISTS
        (SELECT 1 FROM jobs j WHERE j.batch_id = o.id AND j.status IN ({_UNFINISHED}))
        ORDER BY o.created_at LIMIT $1"""  # noqa: S608
)


async def settle(batch_id: uuid.UUID | str) -> tuple[bool, list[uuid.UUID]]:
    """Mark the batch finished if no job of it is unfinished and it was not marked yet: whether
    this call marked it, and the webhook delivery it wrote (at most one)."""
    record = await (await pool()).fetchrow(
        _SETTLE_ONE, batch_id if isinstance(batch_id, uuid.UUID) else uuid.UUID(batch_id)
    )
    assert record is not None
    return bool(record["settled"]), list(record["delivery_ids"])


async def settle_finished(limit: int) -> tuple[int, list[uuid.UUID]]:
    """`settle` every finished batch not marked yet (at most `limit`): how many, and the
    deliveries written."""
    record = await (await pool()).fetchrow(_SETTLE_FOUND, limit)
    assert record is not None
    return int(record["settled"]), list(record["delivery_ids"])
