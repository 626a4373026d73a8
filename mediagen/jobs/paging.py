"""Keyset paging over a caller's jobs, newest first on `(created_at, id)`: the order of the
`(api_key_id, created_at, id)` index, so a page costs one range read wherever it starts and
does not shift when jobs are added or deleted meanwhile.

A position is the cursor `{created_at in µs since the epoch}~{id hex}` of a job; any string
of that shape is valid, so the schemas can state exactly which cursors are accepted. A page
starts after a position (older jobs: `/api/v1/jobs`' `next`) or ends before one (newer jobs:
`/v1/predictions`' `previous`, which that API writes with a `p` in front).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from tortoise.expressions import Q
from tortoise.queryset import QuerySet

from mediagen.jobs.models import Job

NEWEST_FIRST = ("-created_at", "-id")
OLDEST_FIRST = ("created_at", "id")


def encode_cursor(job: Job) -> str:
    """The position of `job`: `{created_at in µs since the epoch}~{id hex}`."""
    micros = int(job.created_at.timestamp()) * 1_000_000 + job.created_at.microsecond
    return f"{micros}~{job.id.hex}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    micros, _, job_id = cursor.partition("~")
    created_at = datetime.fromtimestamp(int(micros) // 1_000_000, UTC).replace(
        microsecond=int(micros) % 1_000_000
    )
    return created_at, uuid.UUID(hex=job_id)


def _older(created_at: datetime, job_id: uuid.UUID) -> Q:
    return Q(created_at__lt=created_at) | Q(created_at=created_at, id__lt=job_id)


def _newer(created_at: datetime, job_id: uuid.UUID) -> Q:
    return Q(created_at__gt=created_at) | Q(created_at=created_at, id__gt=job_id)


@dataclass(frozen=True)
class Page:
    """Jobs newest first, and whether more lie that way: `older` after the last one, `newer`
    before the first one (False when not known: see `page`)."""

    jobs: list[Job]
    older: bool
    newer: bool


async def page(
    query: QuerySet[Job],
    size: int,
    fields: Sequence[str],
    *,
    after: str | None = None,
    before: str | None = None,
    both_ways: bool = False,
) -> Page:
    """Up to `size` jobs of `query` (reading only `fields`): the newest, or those just after
    the cursor `after`, or just before the cursor `before`.

    More that way is known from the page itself (one job more is read). The other way costs
    one EXISTS on the index, asked only with `both_ways`; without it, that side says False."""
    if before is not None:
        ordered = query.filter(_newer(*decode_cursor(before))).order_by(*OLDEST_FIRST)
    elif after is not None:
        ordered = query.filter(_older(*decode_cursor(after))).order_by(*NEWEST_FIRST)
    else:
        ordered = query.order_by(*NEWEST_FIRST)
    found = await ordered.limit(size + 1).only(*fields)
    beyond = len(found) > size
    jobs = found[:size]
    if before is not None:
        jobs.reverse()
    older, newer = (False, beyond) if before is not None else (beyond, False)
    if both_ways and jobs and before is not None:
        older = await query.filter(_older(jobs[-1].created_at, jobs[-1].id)).exists()
    elif both_ways and jobs and after is not None:
        newer = await query.filter(_newer(jobs[0].created_at, jobs[0].id)).exists()
    return Page(jobs, older, newer)
