"""Keyset paging over a caller's jobs (and input files), newest first on `(created_at, id)`:
for jobs the order of the `(api_key_id, created_at, id)` index, so a page costs one range read
wherever it starts; for any rows, a page does not shift when rows are added or deleted meanwhile.

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
from typing import Generic, Protocol, TypeVar

from tortoise.expressions import Q
from tortoise.models import Model
from tortoise.queryset import QuerySet

# A position, as the schemas state it (without anchors).
CURSOR = r"[0-9]{1,16}~[0-9a-f]{32}"
NEWEST_FIRST = ("-created_at", "-id")
OLDEST_FIRST = ("created_at", "id")


class Stamped(Protocol):
    """A row that can be paged: a job, an input file."""

    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> uuid.UUID: ...


M = TypeVar("M", bound=Model)


def _at(row: Model) -> tuple[datetime, uuid.UUID]:
    stamped: Stamped = row  # type: ignore[assignment]  # every model paged has both fields
    return stamped.created_at, stamped.id


def encode_cursor(row: Model) -> str:
    """The position of `row`: `{created_at in µs since the epoch}~{id hex}`."""
    created_at, row_id = _at(row)
    micros = int(created_at.timestamp()) * 1_000_000 + created_at.microsecond
    return f"{micros}~{row_id.hex}"


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
class Page(Generic[M]):
    """Rows newest first, and whether more lie that way: `older` after the last one, `newer`
    before the first one (False when not known: see `page`)."""

    rows: list[M]
    older: bool
    newer: bool


async def page(
    query: QuerySet[M],
    size: int,
    fields: Sequence[str],
    *,
    after: str | None = None,
    before: str | None = None,
    both_ways: bool = False,
) -> Page[M]:
    """Up to `size` rows of `query` (reading only `fields`): the newest, or those just after
    the cursor `after`, or just before the cursor `before`.

    More that way is known from the page itself (one row more is read). The other way costs
    one EXISTS on the index, asked only with `both_ways`; without it, that side says False."""
    if before is not None:
        ordered = query.filter(_newer(*decode_cursor(before))).order_by(*OLDEST_FIRST)
    elif after is not None:
        ordered = query.filter(_older(*decode_cursor(after))).order_by(*NEWEST_FIRST)
    else:
        ordered = query.order_by(*NEWEST_FIRST)
    found = await ordered.limit(size + 1).only(*fields)
    beyond = len(found) > size
    rows = found[:size]
    if before is not None:
        rows.reverse()
    older, newer = (False, beyond) if before is not None else (beyond, False)
    if both_ways and rows and before is not None:
        older = await query.filter(_older(*_at(rows[-1]))).exists()
    elif both_ways and rows and after is not None:
        newer = await query.filter(_newer(*_at(rows[0]))).exists()
    return Page(rows, older, newer)
