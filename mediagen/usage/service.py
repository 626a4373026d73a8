"""Usage sums: jobs by status, run seconds and bytes stored, per day, model or key.

One statement, summed in Postgres. For one key it walks the `(api_key_id, created_at, id)`
index over the range, so its cost grows with that key's jobs in the range only (the range is
at most MAX_DAYS); across keys (`mediagen usage`, operators) it walks `created_at`. Jobs are
counted in the range by their creation time; their status is the current one, so a job still
running counts as such and its run seconds are counted once it ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

from mediagen import db
from mediagen.jobs.states import JobStatus
from mediagen.keys.owners import owner_sql
from mediagen.usage.schemas import UsageGroup

Grouping = Literal["day", "model", "key"]

_GROUPS: dict[str, str] = {
    "day": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "model": "model",
    "key": "api_key_id::text",
}
# What the job stored: its metrics say (kept when its outputs expire and `outputs` empties),
# else (jobs completed before metrics existed) the sizes in `outputs`, a JSON array of
# {key, content_type, size}.
_BYTES = (
    "coalesce((metrics->>'bytes_stored')::bigint, "
    "CASE WHEN jsonb_typeof(outputs) = 'array' THEN (SELECT sum((o->>'size')::bigint) "
    "FROM jsonb_array_elements(outputs) o) END)"
)
_SQL = """
SELECT {group} AS grp, status, count(*) AS jobs,
       coalesce(sum(extract(epoch FROM completed_at - started_at)), 0)::float8 AS run_seconds,
       coalesce(sum({bytes}), 0)::bigint AS bytes_stored
FROM jobs
WHERE created_at >= $1 AND created_at < $2 {owner}
GROUP BY 1, 2
ORDER BY 1 NULLS FIRST
"""


async def usage(
    start: datetime,
    end: datetime,
    group_by: Grouping,
    owner: uuid.UUID | None = None,
    *,
    all_keys: bool = False,
) -> tuple[list[UsageGroup], UsageGroup]:
    """The groups with jobs created in `[start, end)`, in order, and their total: of `owner`'s
    jobs (None: those made without a key), or of everyone's with `all_keys`."""
    args: list[Any] = [start, end]
    mine = "" if all_keys else f"AND {owner_sql(owner, args)}"
    sql = _SQL.format(group=_GROUPS[group_by], bytes=_BYTES, owner=mine)
    rows = await (await db.pool()).fetch(sql, *args)
    return summarize(rows)


def summarize(rows: Iterable[Mapping[str, Any]]) -> tuple[list[UsageGroup], UsageGroup]:
    """Rows of (grp, status, jobs, run_seconds, bytes_stored), ordered by grp, as groups."""
    groups: dict[str | None, UsageGroup] = {}
    total = _empty(None)
    for row in rows:
        group = groups.setdefault(row["grp"], _empty(row["grp"]))
        for into in (group, total):
            into.jobs += row["jobs"]
            into.by_status[row["status"]] += row["jobs"]
            into.run_seconds += row["run_seconds"]
            into.bytes_stored += row["bytes_stored"]
    for group in (*groups.values(), total):
        group.run_seconds = round(group.run_seconds, 3)
    return list(groups.values()), total


def _empty(name: str | None) -> UsageGroup:
    return UsageGroup(
        group=name,
        jobs=0,
        by_status={str(status): 0 for status in JobStatus},
        run_seconds=0.0,
        bytes_stored=0,
    )
