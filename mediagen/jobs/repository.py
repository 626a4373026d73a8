"""Every write to a job, and the reads the steps make: each write one guarded statement
(`mediagen.jobs.statements`: why a late or duplicated task changes nothing, and what the
statement writes with the move), which returns the row as it now is. Publishing what a move
means is the caller's, after it committed (`mediagen.jobs.lifecycle`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from types import EllipsisType
from typing import Any

import orjson
from asyncpg import Record

from mediagen.db import pool
from mediagen.jobs.models import ANONYMOUS, COUNTER_SHARDS, Job
from mediagen.jobs.payloads import STATUS_COLUMNS
from mediagen.jobs.sql import Expr, plus_one, seconds_from_now
from mediagen.jobs.statements import Moved, Statement, execute
from mediagen.jobs.states import ALLOWED_FROM, OUTCOMES, JobStatus
from mediagen.keys.owners import owner_sql


def now() -> datetime:
    return datetime.now(UTC)


# When a completing job's outputs expire: its retention (seconds), at most the given RESULT_TTL
# (`least` skips a NULL retention).
_KEPT_UNTIL = Expr("now() + make_interval(secs => least(retention_seconds, {})::float8)")
# A final state keeps the moment it was first reached (an expired job: when it completed).
_FINISHED_AT = Expr("coalesce(completed_at, now())")


def _event_of(to: JobStatus) -> tuple[str, ...]:
    """The client webhook event a move to `to` may send (`start`: only the first attempt's)."""
    if to in OUTCOMES:  # (an expiry is a retention step, not news to the client)
        return ("completed",)
    if to is JobStatus.PROCESSING:
        return ("start",)
    return ()


# --- creating --------------------------------------------------------------------------------
# A shard of the owner's counter with room (its share of the limit; `$2 = 0`: no limit), then
# the job counted in it, then its webhook. `{lock}` is SKIP LOCKED first: a shard another
# submission holds is passed over rather than waited for (models.JobCounter).
_INSERT_JOB = f"""
WITH slot AS (
    SELECT id FROM job_counters
    WHERE scope = $1 AND ($2::int = 0
        OR unfinished < $2::int / {COUNTER_SHARDS} + (shard < $2::int % {COUNTER_SHARDS})::int)
    LIMIT 1 FOR UPDATE {{lock}}
), counted AS (
    UPDATE job_counters SET unfinished = job_counters.unfinished + 1,
                            pending = job_counters.pending + 1
    FROM slot WHERE job_counters.id = slot.id
    RETURNING job_counters.shard
), created AS (
    INSERT INTO jobs (id, status, prompt, parameters, model, provider, api_key_id, outputs,
                      attempt, retry_count, quota_shard, dispatched_at, created_at, updated_at,
                      request_id, traceparent, priority, retention_seconds, batch_id,
                      input_files, surface, surface_base, queue_deadline)
    SELECT $3, '{JobStatus.PENDING}', $4, $5::jsonb, $6, $7, $8, '[]'::jsonb, 0, 0,
           counted.shard, now(), now(), now(), $11, $12, $13, $14, $15, $16::jsonb, $17, $18,
           now() + make_interval(secs => $19::int)
    FROM counted
    RETURNING id, created_at
), hooked AS (
    INSERT INTO job_webhooks (id, job_id, url, events, created_at)
    SELECT gen_random_uuid(), created.id, $9::text, $10::jsonb, now()
    FROM created WHERE $9::text IS NOT NULL
)
SELECT (SELECT created_at FROM created) AS created_at,
       EXISTS (SELECT 1 FROM job_counters WHERE scope = $1) AS scope_known
"""
_INSERT_SKIPPING = _INSERT_JOB.format(lock="SKIP LOCKED")
_INSERT_WAITING = _INSERT_JOB.format(lock="")
_ADD_SHARDS = f"""
INSERT INTO job_counters (scope, shard, unfinished)
SELECT $1, g, 0 FROM generate_series(0, {COUNTER_SHARDS - 1}) AS g
ON CONFLICT (scope, shard) DO NOTHING
"""


async def insert(
    job_id: uuid.UUID,
    *,
    prompt: str,
    parameters: dict[str, Any],
    model: str | None,
    provider: str,
    owner: uuid.UUID | None,
    max_in_flight: int,
    webhook: str | None = None,
    webhook_events: Sequence[str] = (),
    request_id: str | None = None,
    traceparent: str | None = None,
    priority: str = "normal",
    retention_seconds: int | None = None,
    batch_id: uuid.UUID | None = None,
    input_files: Sequence[str] | None = None,
    surface: str | None = None,
    surface_base: str | None = None,
    max_queue_seconds: int | None = None,
) -> datetime | None:
    """Create a pending job (and its webhook) if its owner has fewer than `max_in_flight`
    unfinished jobs (0: no limit): its `created_at`, or None when the limit is reached. Its
    `queue_deadline` is `max_queue_seconds` after its creation (None: none).

    One statement in the common case. A second one only when every shard with room was held by
    a concurrent submission (more at once than COUNTER_SHARDS), or for a key's first job.

    `dispatched_at` is set at once: the caller publishes the start right after the commit, and
    clears it if that fails (`clear_dispatched`), so the sweeper dispatches it soon."""
    db = await pool()
    args = (
        owner or ANONYMOUS,
        max_in_flight,
        job_id,
        prompt,
        orjson.dumps(parameters).decode(),
        model,
        provider,
        owner,
        webhook,
        orjson.dumps(list(webhook_events)).decode(),
        request_id,
        traceparent,
        priority,
        retention_seconds,
        batch_id,
        orjson.dumps(list(input_files)).decode() if input_files else None,
        surface,
        surface_base,
        max_queue_seconds,
    )
    record = await db.fetchrow(_INSERT_SKIPPING, *args)
    assert record is not None
    if record["created_at"] is None and not record["scope_known"]:
        await db.execute(_ADD_SHARDS, owner or ANONYMOUS)  # a key's first job
        record = await db.fetchrow(_INSERT_SKIPPING, *args)
        assert record is not None
    if record["created_at"] is None:  # full, or every shard with room was busy: wait for them
        record = await db.fetchrow(_INSERT_WAITING, *args)
        assert record is not None
    created: datetime | None = record["created_at"]
    return created


# --- reading ---------------------------------------------------------------------------------
_GET = "SELECT * FROM jobs WHERE id = $1"
_STATUS = f"SELECT {', '.join(STATUS_COLUMNS)} FROM jobs WHERE id = $1"


async def get(job_id: uuid.UUID | str) -> Job | None:
    record = await (await pool()).fetchrow(_GET, _uuid(job_id))
    return None if record is None else Job._init_from_db(**record)


async def get_owned(job_id: uuid.UUID, owner: uuid.UUID | None) -> Job | None:
    """The job if `owner` (None: anonymous) created it."""
    args: list[Any] = [job_id]
    record = await (await pool()).fetchrow(f"{_GET} AND {owner_sql(owner, args)}", *args)
    return None if record is None else Job._init_from_db(**record)


async def status_row(job_id: uuid.UUID, owner: uuid.UUID | None) -> Record | None:
    """What `GET /status` shows of a job `owner` created (one primary-key lookup)."""
    args: list[Any] = [job_id]
    return await (await pool()).fetchrow(f"{_STATUS} AND {owner_sql(owner, args)}", *args)


async def traceparent_of(job_id: uuid.UUID | str) -> str | None:
    """The trace the job was submitted in (kept on its row by `jobs.service.create_job`)."""
    value = await (await pool()).fetchval(
        "SELECT traceparent FROM jobs WHERE id = $1", _uuid(job_id)
    )
    return value if isinstance(value, str) else None


def _uuid(value: uuid.UUID | str) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


# --- moving ----------------------------------------------------------------------------------
async def transition(
    job_id: uuid.UUID | str,
    to: JobStatus,
    *,
    attempt: int | None = None,
    allowed_from: Iterable[JobStatus] | None = None,
    events: Sequence[str] | None = None,
    owner: uuid.UUID | EllipsisType | None = ...,
    stop_upstream: bool = False,
    past_queue_deadline: bool = False,
    **fields: Any,
) -> Moved | None:
    """Move the job to `to` if it is in an allowed state (and on `attempt`, and created by
    `owner` when one is given; None: anonymous; and past its queue deadline, when
    `past_queue_deadline`). `stop_upstream`: its prediction is to be canceled upstream
    (recorded in the same statement: `upstream_cancels`)."""
    statement = Statement()
    where = (
        f"id = {statement.arg(_uuid(job_id))} AND status = ANY("
        f"{statement.arg([str(s) for s in (allowed_from or ALLOWED_FROM[to])], '::text[]')})"
    )
    if attempt is not None:
        where += f" AND attempt = {statement.arg(attempt)}"
    if past_queue_deadline:
        where += " AND queue_deadline <= now()"
    if not isinstance(owner, EllipsisType):
        where += f" AND {owner_sql(owner, statement.args)}"
    sql = statement.update(
        where,
        {"status": str(to), **fields},
        events=_event_of(to) if events is None else events,
        stop_upstream=stop_upstream,
    )
    return await execute(statement, sql)


async def claim(job_id: uuid.UUID | str, lease_seconds: float, job_timeout: float) -> Moved | None:
    """Start a new attempt: pending/retrying -> processing, or take over a processing job whose
    owner died before it recorded a prediction (its lease ran out). A job past its deadline, or
    still pending past its queue deadline, is not claimed (the caller fails it); the guard is
    the opposite of `time_out_queued`'s, so of a start and a timeout racing, one moves it."""
    statement = Statement()
    where = (
        f"id = {statement.arg(_uuid(job_id))} "
        f"AND created_at > now() - make_interval(secs => {statement.arg(job_timeout)}::float8) "
        f"AND (status <> '{JobStatus.PENDING}' OR queue_deadline IS NULL "
        "OR queue_deadline > now()) "
        f"AND (status IN ('{JobStatus.PENDING}', '{JobStatus.RETRYING}') "
        f"OR (status = '{JobStatus.PROCESSING}' AND lease_expires_at < now() "
        "AND prediction_id IS NULL))"
    )
    sql = statement.update(
        where,
        {
            "status": str(JobStatus.PROCESSING),
            "attempt": plus_one("attempt"),
            "lease_expires_at": seconds_from_now(lease_seconds),
            "started_at": Expr("coalesce(started_at, now())"),
            "next_attempt_at": None,
            "output": None,  # what an earlier attempt streamed is not this one's
        },
        events=("start",),
    )
    return await execute(statement, sql)


async def update_running(
    job_id: uuid.UUID | str, attempt: int, *, events: Sequence[str] = (), **fields: Any
) -> Moved | None:
    """Write to a processing job only while `attempt` still owns it."""
    statement = Statement()
    where = (
        f"id = {statement.arg(_uuid(job_id))} AND status = '{JobStatus.PROCESSING}' "
        f"AND attempt = {statement.arg(attempt)}"
    )
    return await execute(statement, statement.update(where, fields, events=events))


async def renew_lease(
    job_id: uuid.UUID | str,
    attempt: int,
    lease_seconds: float,
    *,
    events: Sequence[str] = (),
    **fields: Any,
) -> Moved | None:
    return await update_running(
        job_id,
        attempt,
        events=events,
        lease_expires_at=seconds_from_now(lease_seconds),
        **fields,
    )


async def schedule_retry(
    job_id: uuid.UUID, attempt: int, error: str, delay: float, *, counted: bool = True
) -> Moved | None:
    """processing -> retrying, remembering why, and counting the retry unless it is not one
    (`counted=False`: no free slot upstream, the job only waits for one)."""
    return await transition(
        job_id,
        JobStatus.RETRYING,
        attempt=attempt,
        retry_count=plus_one("retry_count") if counted else Expr("retry_count"),
        error=error,
        lease_expires_at=None,
        next_attempt_at=seconds_from_now(delay),
        output=None,  # what the attempt streamed: the next one starts again
    )


async def finish(
    job_id: uuid.UUID | str,
    to: JobStatus,
    error: str | Expr | None,
    *,
    attempt: int | None = None,
    owner: uuid.UUID | EllipsisType | None = ...,
    events: Sequence[str] | None = None,
    stop_upstream: bool = False,
    allowed_from: Iterable[JobStatus] | None = None,
    past_queue_deadline: bool = False,
    **fields: Any,
) -> Moved | None:
    """The one move to a final state (completed, failed, canceled, expired), from the states
    `ALLOWED_FROM` says (or fewer: `allowed_from`): it ends the job's lease and any scheduled
    attempt and records when it finished, with `error` (None clears it) and `fields`. The
    guards and what the move writes with it are `transition`'s."""
    if not to.is_terminal:
        raise ValueError(f"{to} is not a final state")
    return await transition(
        job_id,
        to,
        attempt=attempt,
        allowed_from=allowed_from,
        owner=owner,
        events=events,
        stop_upstream=stop_upstream,
        past_queue_deadline=past_queue_deadline,
        error=error,
        completed_at=_FINISHED_AT,
        lease_expires_at=None,
        next_attempt_at=None,
        **fields,
    )


# A job still pending at its queue deadline: its error, written by the statement that fails it
# (`max_queue_seconds` is not kept; the deadline is `created_at` plus it).
QUEUE_TIMEOUT = "queue_timeout"
_QUEUE_TIMEOUT_ERROR = Expr(
    "'not started within max_queue_seconds=' "
    "|| round(extract(epoch FROM queue_deadline - created_at))::bigint || 's'"
)
_QUEUE_TIMED_OUT = f"""
SELECT id FROM jobs WHERE status = '{JobStatus.PENDING}' AND queue_deadline IS NOT NULL
AND queue_deadline <= now() ORDER BY queue_deadline LIMIT $1
"""


async def time_out_queued(job_id: uuid.UUID | str) -> Moved | None:
    """pending -> failed (`error_code` QUEUE_TIMEOUT), only while the job is still pending and
    past its queue deadline: never a job that started, whatever its deadline said."""
    return await finish(
        job_id,
        JobStatus.FAILED,
        _QUEUE_TIMEOUT_ERROR,
        allowed_from=(JobStatus.PENDING,),
        past_queue_deadline=True,
        error_code=QUEUE_TIMEOUT,
    )


async def queue_timed_out(limit: int) -> list[uuid.UUID]:
    """Pending jobs past their queue deadline, the most overdue first: one range of the
    partial index `jobs_queue_deadline_idx`, whatever the size of the table."""
    rows = await (await pool()).fetch(_QUEUE_TIMED_OUT, limit)
    return [row["id"] for row in rows]


async def fail(job_id: uuid.UUID | str, error: str, attempt: int | None = None) -> Moved | None:
    return await finish(job_id, JobStatus.FAILED, error, attempt=attempt)


async def complete(
    job_id: uuid.UUID | str,
    attempt: int,
    result_key: str | None,
    outputs: list[dict[str, Any]],
    *,
    result_ttl: int,
    events: Sequence[str] = ("completed",),
    **fields: Any,
) -> Moved | None:
    """processing -> completed. Its outputs are kept until `expires_at`, written by the same
    statement: its own retention, never past `result_ttl` (RESULT_TTL; mediagen.jobs.retention).
    `result_key`: the first output file's (None: the model returned a value, no file)."""
    return await finish(
        job_id,
        JobStatus.COMPLETED,
        None,
        attempt=attempt,
        events=events,
        result_key=result_key,
        outputs=outputs,
        expires_at=_KEPT_UNTIL.with_args(result_ttl),
        **fields,
    )


_MOVE_COUNTS = f"""
UPDATE job_counters SET unfinished = job_counters.unfinished + anonymous.unfinished,
    pending = job_counters.pending + anonymous.pending,
    processing = job_counters.processing + anonymous.processing,
    retrying = job_counters.retrying + anonymous.retrying
FROM job_counters AS anonymous
WHERE anonymous.scope = '{ANONYMOUS}'::uuid AND job_counters.scope = $1
  AND job_counters.shard = anonymous.shard
"""


async def adopt_anonymous(owner: uuid.UUID) -> int:
    """Give every job made without a key to `owner` (counted as its unfinished jobs from now
    on); how many jobs. One transaction. Anonymous submissions must be closed meanwhile (a key
    exists and AUTH_REQUIRED is not `false`), or a job created during it would stay anonymous
    while its count moved."""
    async with (await pool()).acquire() as connection, connection.transaction():
        status = await connection.execute(
            "UPDATE jobs SET api_key_id = $1 WHERE api_key_id IS NULL", owner
        )
        await connection.execute(_ADD_SHARDS, owner)
        await connection.execute(_MOVE_COUNTS, owner)
        await connection.execute(
            "UPDATE job_counters SET unfinished = 0, pending = 0, processing = 0, retrying = 0 "
            f"WHERE scope = '{ANONYMOUS}'::uuid"
        )
    return int(status.rsplit(" ", 1)[1])


async def mark_dispatched(job_ids: Iterable[uuid.UUID | str]) -> None:
    ids = [_uuid(job_id) for job_id in job_ids]
    await (await pool()).execute(
        "UPDATE jobs SET dispatched_at = now() WHERE id = ANY($1::uuid[])", ids
    )


async def clear_dispatched(job_ids: Iterable[uuid.UUID | str]) -> None:
    """The start of these pending jobs was not published: let the sweeper dispatch them after
    DISPATCH_GRACE rather than after a whole lease."""
    ids = [_uuid(job_id) for job_id in job_ids]
    await (await pool()).execute(
        f"UPDATE jobs SET dispatched_at = NULL WHERE id = ANY($1::uuid[]) "
        f"AND status = '{JobStatus.PENDING}'",
        ids,
    )
