"""Deleting a job (`DELETE /api/v1/jobs/{id}`) and everything a key owns (`mediagen keys delete`).

A job is deleted whole: canceled first if it is unfinished (its prediction is stopped upstream,
as a cancel does), then its outputs and the input files made for it (from `data:` and `https://`
values; not the caller's uploads, which other jobs may name) are deleted from storage, then its row,
with its webhook and deliveries (foreign keys cascade), then its event stream and queue entry.
Storage goes before the row: a storage failure leaves the job (and the client may delete it
again), never objects that nothing names any more. A worker still storing the outputs of a
canceled attempt finds the job canceled or gone when it completes, and deletes what it stored
(`mediagen.jobs.outputs.discard_unused`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis
from asyncpg import Record

from mediagen import redis_clients
from mediagen.broker import Outbox, stream_key
from mediagen.config import Settings
from mediagen.db import pool
from mediagen.errors import NotFoundError, ServiceUnavailableError, StorageError
from mediagen.files.inputs import made_for
from mediagen.files.service import delete_files
from mediagen.jobs import thumbnails
from mediagen.jobs.lifecycle import Lifecycle
from mediagen.jobs.states import TERMINAL, JobStatus
from mediagen.keys.models import ApiKey
from mediagen.keys.owners import owner_id, owner_sql
from mediagen.scheduling import remove_now
from mediagen.storage import create_storage
from mediagen.storage.base import Storage

log = logging.getLogger(__name__)

DELETED_NOTE = "deleted by the client"
_TERMINAL = [str(status) for status in TERMINAL]


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str) else value


async def _delete_stored(rows: Iterable[Record], storage: Storage) -> None:
    """The outputs of the rows of `jobs` (with their thumbnails), and the input files made for
    them."""
    file_ids: list[str] = []
    for row in rows:
        for output in _json(row["outputs"]) or ():
            for key in thumbnails.keys_of(output):
                await storage.delete(key)
        if files := _json(row["input_files"]):
            file_ids += made_for(row["id"], _json(row["parameters"]) or {}, files)
    await delete_files(file_ids, storage)


async def _forget(redis: aioredis.Redis | None, job_ids: list[str]) -> None:
    """Their event streams and queue entries (best effort: streams expire anyway)."""
    if redis is None or not job_ids:
        return
    try:
        await redis.delete(*(stream_key(job_id) for job_id in job_ids))
        await remove_now(redis, job_ids)
    except Exception as exc:
        log.warning("event streams of deleted jobs not deleted: %s", exc)


async def _cancel(job_id: uuid.UUID, owner: uuid.UUID | None, outbox: Outbox | None) -> None:
    """Cancel the job if it is unfinished, quietly (no event, no webhook: the job is about to
    go); its prediction is stopped upstream through `outbox`, else by the sweeper."""
    await Lifecycle(outbox).finish(
        job_id, JobStatus.CANCELED, DELETED_NOTE, owner=owner, stop_upstream=True, quiet=True
    )


async def delete_job(
    job_id: uuid.UUID,
    owner: ApiKey | None,
    storage: Storage,
    redis: aioredis.Redis | None = None,
    outbox: Outbox | None = None,
) -> None:
    """Delete a job of `owner`'s and every trace of it (module docstring); NotFoundError if
    `owner` has no such job. `outbox`: where the upstream cancel is sent, when given."""
    db = await pool()
    args: list[Any] = [job_id]
    where = f"id = $1 AND {owner_sql(owner_id(owner), args)}"
    select = f"SELECT id, status, outputs, input_files, parameters FROM jobs WHERE {where}"  # noqa: S608
    row = await db.fetchrow(select, *args)
    if row is None:
        raise NotFoundError(f"job {job_id} not found")
    if not JobStatus(row["status"]).is_terminal:
        await _cancel(job_id, owner_id(owner), outbox)
        row = await db.fetchrow(select, *args)
        if row is None:
            raise NotFoundError(f"job {job_id} not found")
    try:
        await _delete_stored([row], storage)
    except StorageError as exc:  # the job stays: deleting it again finishes the work
        raise ServiceUnavailableError(
            f"job {job_id} not deleted: {exc.message}", retry_after=5
        ) from exc
    gone = await db.fetchval(
        f"DELETE FROM jobs WHERE {where} AND status = ANY(${len(args) + 1}::text[]) "  # noqa: S608
        "RETURNING id",
        *args,
        _TERMINAL,
    )
    if gone is None:
        raise NotFoundError(f"job {job_id} not found")
    await _forget(redis, [str(job_id)])
    log.info("job %s deleted", job_id)


# --- a key's data ----------------------------------------------------------------------------
async def purge_key(
    key: ApiKey, storage: Storage, redis: aioredis.Redis | None, batch: int
) -> dict[str, int]:
    """Delete everything `key` owns, `batch` rows at a time, then the key itself: its jobs
    (canceled first if unfinished; outputs, input files made for them, rows, streams), all its
    files, batches, idempotency records, counters, and rows of any other table that refers to
    it. The key must be revoked first, so that nothing new is made meanwhile. What was
    removed, by kind."""
    db = await pool()
    removed: dict[str, int] = {"jobs": 0}
    while True:
        unfinished = await db.fetch(
            "SELECT id FROM jobs WHERE api_key_id = $1 AND NOT (status = ANY($2::text[])) LIMIT $3",
            key.id,
            _TERMINAL,
            batch,
        )
        for row in unfinished:
            await _cancel(row["id"], key.id, None)  # its prediction: stopped by the sweeper
        rows = await db.fetch(
            "SELECT id, outputs, input_files, parameters FROM jobs WHERE api_key_id = $1 "
            "AND status = ANY($2::text[]) LIMIT $3",
            key.id,
            _TERMINAL,
            batch,
        )
        if not rows and not unfinished:
            break
        await _delete_stored(rows, storage)
        ids = [row["id"] for row in rows]
        await db.execute("DELETE FROM jobs WHERE id = ANY($1::uuid[])", ids)
        await _forget(redis, [str(job_id) for job_id in ids])
        removed["jobs"] += len(ids)
    removed["files"] = await _purge_files(key.id, storage, batch)
    removed["idempotency records"] = await _count(
        # Its /generate keys, and those of other endpoints (`batches:` + its id).
        db.execute(
            "DELETE FROM idempotency_keys WHERE scope = $1 OR scope LIKE '%:' || $1",
            str(key.id),
        )
    )
    removed["counters"] = await _count(
        db.execute("DELETE FROM job_counters WHERE scope = $1", key.id)
    )
    removed["counters"] += await _count(  # its storage count (its files went above)
        db.execute("DELETE FROM storage_counters WHERE scope = $1", key.id)
    )
    for table, column in await _referring_tables(db):
        removed[table] = removed.get(table, 0) + await _delete_referring(
            db, table, column, key.id, batch
        )
    await db.execute("DELETE FROM api_keys WHERE id = $1", key.id)
    return removed


async def _purge_files(key_id: uuid.UUID, storage: Storage, batch: int) -> int:
    """The key's input files (objects, then rows), `batch` at a time."""
    db = await pool()
    count = 0
    while rows := await db.fetch(
        "SELECT id FROM files WHERE api_key_id = $1 LIMIT $2", key_id, batch
    ):
        await delete_files([row["id"] for row in rows], storage)
        count += len(rows)
    return count


async def _count(statement: Any) -> int:
    status: str = await statement
    return int(status.rsplit(" ", 1)[1])


async def _referring_tables(db: Any) -> list[tuple[str, str]]:
    """Tables (other than jobs and files, done above) with a foreign key to `api_keys`."""
    rows = await db.fetch(
        """
        SELECT c.conrelid::regclass::text AS tbl, a.attname AS col
        FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        WHERE c.contype = 'f' AND c.confrelid = 'api_keys'::regclass
        """
    )
    return [(r["tbl"], r["col"]) for r in rows if r["tbl"] not in ("jobs", "files")]


async def _delete_referring(db: Any, table: str, column: str, key_id: uuid.UUID, batch: int) -> int:
    """Rows of `table` (a name from the catalog, quoted) whose `column` is the key, in batches."""
    total = 0
    sql = (
        f'DELETE FROM "{table}" WHERE ctid = ANY(ARRAY(SELECT ctid FROM "{table}" '  # noqa: S608
        f'WHERE "{column}" = $1 LIMIT $2))'
    )
    while True:
        done = await _count(db.execute(sql, key_id, batch))
        total += done
        if done < batch:
            return total


async def delete_key_data(key: ApiKey, settings: Settings) -> dict[str, int]:
    """`purge_key` with a storage and a Redis client of its own (the CLI has neither)."""
    storage = create_storage(settings)
    redis = redis_clients.async_client(settings, "mediagen-cli", timeout=5)
    try:
        return await purge_key(key, storage, redis, settings.prune_batch)
    finally:
        await redis.aclose()
        await storage.close()
