"""How `/v1` lists pages (predictions, files): newest first, each page naming the page after it
(`next`, older rows) and before it (`previous`, newer rows) as full URLs, which the clients
request as given. A cursor is a position of `mediagen.jobs.paging`; `previous`'s starts with
`p`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Generic

from fastapi import Query
from tortoise.queryset import QuerySet

from mediagen.jobs import paging
from mediagen.jobs.paging import M

Cursor = Annotated[
    str | None,
    Query(
        pattern=rf"^p?{paging.CURSOR}$",
        description="From a page's `next` or `previous` (`p`: the page before).",
    ),
]


@dataclass(frozen=True)
class Listed(Generic[M]):
    rows: list[M]
    next: str | None
    previous: str | None


async def listed(
    query: QuerySet[M], size: int, fields: Sequence[str], cursor: str | None, here: str
) -> Listed[M]:
    """The page of `query` that `cursor` names (the newest without one); `here` is the list's
    URL, which the links add `?cursor=` to."""
    backwards = cursor is not None and cursor.startswith("p")
    found = await paging.page(
        query,
        size,
        fields,
        after=None if backwards else cursor,
        before=cursor[1:] if cursor is not None and backwards else None,
        both_ways=True,
    )
    link = f"{here}?cursor="
    return Listed(
        found.rows,
        next=f"{link}{paging.encode_cursor(found.rows[-1])}" if found.older else None,
        previous=f"{link}p{paging.encode_cursor(found.rows[0])}" if found.newer else None,
    )
