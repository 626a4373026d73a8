"""Retention: what the service keeps, for how long, and the sweeps that delete the rest.

A completed job's outputs are kept until its `expires_at` (set by the completion itself: its
`retention`, at most RESULT_TTL). Every sweep then deletes the outputs of up to PRUNE_BATCH
jobs past it from storage, and moves each job to `expired` (a terminal state; no webhook): its
detail shows no outputs and no output value, and its result URLs answer 410 Gone.

Every PRUNE_EVERY seconds (and at the next sweep again while a round left work behind), a
pruning round deletes, PRUNE_BATCH rows per statement and for at most PRUNE_BUDGET seconds:

- finished jobs whose row is older than JOB_RECORD_TTL (after they finished), with their
  webhook and deliveries (foreign keys cascade) and their event stream; a completed one has its
  outputs deleted first (it is expired first);
- idempotency records past their TTL (24 h), webhook deliveries delivered or given up on more
  than DELIVERY_TTL ago, expired input files, and batches whose jobs are all gone.

Each statement picks its rows with `FOR UPDATE SKIP LOCKED`, so it never waits for a row a
request holds, and holds the rows it deletes for one short statement only: the hot paths
(submit, status, transitions) never queue behind the pruning.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
import redis.asyncio as aioredis

from mediagen import idempotency
from mediagen.broker import stream_key
from mediagen.config import Settings
from mediagen.db import pool
from mediagen.errors import GoneError, NotFoundError, StorageError
from mediagen.files import service as files
from mediagen.jobs import repository as repo
from mediagen.jobs import thumbnails
from mediagen.jobs.states import NO_OUTPUTS, JobStatus, sql_list
from mediagen.scheduling import remove_now
from mediagen.storage.base import Storage

log = logging.getLogger(__name__)

EXPIRED_NOTE = "its outputs were deleted when their retention ended"
PRUNE_EVERY = 600.0  # seconds between pruning rounds
PRUNE_BUDGET = 10.0  # seconds one sweep spends pruning at most
DELIVERY_TTL = timedelta(days=7)  # delivered or failed webhook deliveries kept this long
BATCH_GRACE = timedelta(hours=1)  # a batch this young may still be getting its jobs
_ROUND_KEY = "mediagen:retention:round"  # set while the last round is recent (Redis, NX EX)

# Completed jobs whose outputs are due: past their `expires_at`, or (made before expiry times
# were recorded, or RESULT_TTL shortened since) past the shortest keep of RESULT_TTL and
# JOB_RECORD_TTL after they completed.
_DUE = """
SELECT id, outputs FROM jobs
WHERE status = 'completed'
  AND (expires_at < now() OR completed_at < now() - make_interval(secs => $1::float8))
LIMIT $2
"""
# Finished jobs past JOB_RECORD_TTL; a completed one waits to be expired (outputs first).
_OLD_JOBS = f"""
DELETE FROM jobs WHERE id IN (
    SELECT id FROM jobs
    WHERE completed_at < now() - make_interval(secs => $1::float8)
      AND status IN ({sql_list(NO_OUTPUTS)})
    ORDER BY completed_at LIMIT $2 FOR UPDATE SKIP LOCKED)
RETURNING id
"""  # noqa: S608 (the states are our constants)
_OLD_IDEMPOTENCY = """
DELETE FROM idempotency_keys WHERE id IN (
    SELECT id FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1::float8)
    LIMIT $2 FOR UPDATE SKIP LOCKED)
"""
_OLD_DELIVERIES = """
DELETE FROM webhook_deliveries WHERE id IN (
    SELECT id FROM webhook_deliveries
    WHERE status IN ('delivered', 'failed')
      AND created_at < now() - make_interval(secs => $1::float8)
    LIMIT $2 FOR UPDATE SKIP LOCKED)
"""
_EMPTY_BATCHES = """
DELETE FROM batches WHERE id IN (
    SELECT b.id FROM batches b
    WHERE b.created_at < now() - make_interval(secs => $1::float8)
      AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id)
    LIMIT $2 FOR UPDATE SKIP LOCKED)
"""


# --- expiry ----------------------------------------------------------------------------------
async def expire_outputs(storage: Storage, settings: Settings, limit: int) -> int:
    """Delete the outputs of up to `limit` jobs past their retention and mark them `expired`;
    how many were. Storage first: a job whose outputs could not all be deleted stays completed,
    and the next sweep tries again."""
    keep = min(settings.result_ttl, settings.job_record_ttl)
    rows = await (await pool()).fetch(_DUE, float(keep), limit)
    expired = 0
    for row in rows:
        outputs = (
            orjson.loads(row["outputs"]) if isinstance(row["outputs"], str) else row["outputs"]
        )
        try:
            for output in outputs or ():
                for key in thumbnails.keys_of(output):
                    await storage.delete(key)
        except StorageError as exc:
            log.warning("job %s: outputs not deleted (%s); next sweep tries again", row["id"], exc)
            continue
        moved = await repo.finish(
            row["id"], JobStatus.EXPIRED, EXPIRED_NOTE, outputs=[], result_key=None, output=None
        )
        expired += moved is not None
    if expired:
        log.info("retention: %d job(s) expired, their outputs deleted", expired)
    return expired


async def output_url(
    job_id: uuid.UUID, index: int, owner: uuid.UUID | None, storage: Storage
) -> str:
    """Where the `index`-th output of the caller's job is now (a signed or presigned URL);
    GoneError once retention deleted it, NotFoundError if there is no such output."""
    job = await repo.get_owned(job_id, owner)
    if job is None:
        raise NotFoundError(f"job {job_id} not found")
    if job.status is JobStatus.EXPIRED:
        raise GoneError(f"job {job_id}: {EXPIRED_NOTE}", status=str(job.status))
    if not 0 <= index < len(job.outputs):
        raise NotFoundError(f"job {job_id} has no output {index}")
    return await storage.url_for(job.outputs[index]["key"])


async def served_job_gone(job_id: uuid.UUID) -> bool:
    """Whether a signed output URL of `job_id` (issued by us, so the job existed) now names
    an output retention or a deletion removed: the job is expired, or its row is gone."""
    status = await (await pool()).fetchval("SELECT status FROM jobs WHERE id = $1", job_id)
    return status is None or status == str(JobStatus.EXPIRED)


# --- pruning ---------------------------------------------------------------------------------
@dataclass
class Pruned:
    """Rows deleted by a pruning round, by kind; `finished`: nothing was left to delete."""

    counts: dict[str, int] = field(default_factory=dict)
    finished: bool = False

    def __str__(self) -> str:
        return ", ".join(f"{n} {kind}" for kind, n in self.counts.items() if n) or "nothing"


async def _old_jobs(settings: Settings, limit: int, redis: aioredis.Redis | None) -> int:
    rows = await (await pool()).fetch(_OLD_JOBS, float(settings.job_record_ttl), limit)
    if rows and redis is not None:
        ids = [str(row["id"]) for row in rows]
        try:  # their event streams expire by themselves too (STREAM_TTL): best effort
            await redis.delete(*(stream_key(job_id) for job_id in ids))
            await remove_now(redis, ids)
        except Exception as exc:
            log.warning("retention: event streams of pruned jobs not deleted: %s", exc)
    return len(rows)


async def _deleted(sql: str, age: float, limit: int) -> int:
    status = await (await pool()).execute(sql, float(age), limit)
    return int(status.rsplit(" ", 1)[1])


async def prune(
    storage: Storage,
    settings: Settings,
    redis: aioredis.Redis | None = None,
    *,
    budget: float | None = None,
    batch: int | None = None,
) -> Pruned:
    """One pruning round: each kind a statement of `batch` (PRUNE_BATCH) rows at a time, in
    turn, until none is left or `budget` seconds have passed (None: until none is left)."""
    limit = batch or settings.prune_batch
    kinds: dict[str, Any] = {
        "expired jobs": lambda: expire_outputs(storage, settings, limit),
        "job records": lambda: _old_jobs(settings, limit, redis),
        "idempotency records": lambda: _deleted(
            _OLD_IDEMPOTENCY, idempotency.TTL.total_seconds(), limit
        ),
        "webhook deliveries": lambda: _deleted(
            _OLD_DELIVERIES, DELIVERY_TTL.total_seconds(), limit
        ),
        "input files": lambda: files.delete_expired(storage, limit),
        "batches": lambda: _deleted(_EMPTY_BATCHES, BATCH_GRACE.total_seconds(), limit),
    }
    pruned = Pruned({kind: 0 for kind in kinds})
    pending = list(kinds)
    deadline = None if budget is None else time.monotonic() + budget
    while pending:
        for kind in list(pending):
            if deadline is not None and time.monotonic() > deadline:
                return pruned
            done = await kinds[kind]()
            pruned.counts[kind] += done
            if done < limit:
                pending.remove(kind)
    pruned.finished = True
    return pruned


async def sweep_retention(storage: Storage, settings: Settings, redis: aioredis.Redis) -> None:
    """The sweeper's share: expire what is due (every sweep), and a pruning round when one is
    due (every PRUNE_EVERY seconds, across all workers; at once again while one left work)."""
    await expire_outputs(storage, settings, settings.prune_batch)
    try:
        due = await redis.set(_ROUND_KEY, "1", nx=True, ex=int(PRUNE_EVERY))
    except Exception as exc:  # Redis down: the next sweep tries again
        log.warning("retention: pruning not scheduled: %s", exc)
        return
    if not due:
        return
    pruned = await prune(storage, settings, redis, budget=PRUNE_BUDGET)
    if not pruned.finished:  # more to do: the next sweep goes on
        await redis.delete(_ROUND_KEY)
    if any(pruned.counts.values()):
        log.info("retention: pruned %s%s", pruned, "" if pruned.finished else " (more left)")
