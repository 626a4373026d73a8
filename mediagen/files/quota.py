"""A key's storage quota: the bytes of input files it may keep at once (STORAGE_QUOTA_BYTES).

What counts is every input file a key owns (uploads, `data:` inputs stored at submit, `https://`
inputs the worker fetched), until it is deleted or expires. Outputs do not count: a key makes
them only through jobs, which the rate and in-flight limits, MAX_OUTPUTS_PER_JOB and
DOWNLOAD_MAX_BYTES already bound, and RESULT_TTL deletes (`/api/v1/usage` reports them).

The count is one row per key (`StorageCounter`; keyless callers share `ANONYMOUS`), never a sum
over its files: a file's row and its bytes in the counter are written by one transaction
(`take`, with the check), and removed by one statement (`delete_rows`). A file is refused
before a byte is read when the key is already full, and after it was stored (and deleted
again) when it would pass the quota, so concurrent uploads cannot pass it together.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from tortoise.backends.base.client import BaseDBAsyncClient

from mediagen import db
from mediagen.errors import StorageQuotaError
from mediagen.files.models import StorageCounter
from mediagen.jobs.models import ANONYMOUS

# Adds `size` to the scope's count unless that passes the quota ($3; 0: none); the new count,
# or no row when it would pass.
_TAKE = """
INSERT INTO storage_counters AS c (scope, bytes)
SELECT $1::uuid, $2::bigint WHERE $3::bigint = 0 OR $2::bigint <= $3::bigint
ON CONFLICT (scope) DO UPDATE SET bytes = c.bytes + EXCLUDED.bytes
    WHERE $3::bigint = 0 OR c.bytes + EXCLUDED.bytes <= $3::bigint
RETURNING c.bytes
"""
# Deletes file rows (only expired ones when $2 is set) and takes their bytes off their keys'
# counts, in one statement; how many rows went.
_DELETE = f"""
WITH gone AS (
    DELETE FROM files WHERE id = ANY($1::uuid[]) AND ($2::timestamptz IS NULL OR expires_at <= $2)
    RETURNING api_key_id, size
), released AS (
    UPDATE storage_counters c SET bytes = greatest(c.bytes - g.total, 0)
    FROM (SELECT coalesce(api_key_id, '{ANONYMOUS}'::uuid) AS scope, sum(size) AS total
          FROM gone GROUP BY 1) g
    WHERE c.scope = g.scope
)
SELECT count(*) FROM gone
"""  # noqa: S608 (ANONYMOUS is our constant)


def _scope(owner: uuid.UUID | None) -> uuid.UUID:
    return owner or ANONYMOUS


def _full(used: int, quota: int) -> StorageQuotaError:
    return StorageQuotaError(
        f"the storage quota of this key is full: its input files take {used} of "
        f"{quota} bytes (STORAGE_QUOTA_BYTES); delete some or wait until they expire"
    )


async def used(owner: uuid.UUID | None) -> int:
    """The bytes of input files `owner` keeps now (one row read)."""
    row = await StorageCounter.get_or_none(scope=_scope(owner))
    return int(row.bytes) if row is not None else 0


async def check_room(owner: uuid.UUID | None, quota: int) -> None:
    """StorageQuotaError when `owner` is full already (before anything is read or stored)."""
    if quota and (now := await used(owner)) >= quota:
        raise _full(now, quota)


async def take(
    connection: BaseDBAsyncClient, owner: uuid.UUID | None, size: int, quota: int
) -> None:
    """Count `size` more bytes for `owner` in the transaction of `connection` (the one that
    inserts the file's row); StorageQuotaError when that would pass `quota`."""
    # (`execute_query` would take it for a plain INSERT and return no rows.)
    rows = await connection.execute_query_dict(_TAKE, [_scope(owner), size, quota])
    if not rows:
        raise _full(await used(owner), quota)


async def delete_rows(ids: Sequence[uuid.UUID], expired_before: datetime | None = None) -> int:
    """Delete these file rows (with `expired_before`, only those expired by then), their bytes
    taken off their keys' counts; how many rows went."""
    if not ids:
        return 0
    deleted = await (await db.pool()).fetchval(_DELETE, list(ids), expired_before)
    return int(deleted or 0)
