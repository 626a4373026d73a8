"""Whose rows a caller sees: the rows its key made, or, for an anonymous caller, the rows made
without a key. Every read or write done for a caller starts from these, so no service or
endpoint writes the ownership filter itself (another key's row is "not found", never
"forbidden").

- `owner_id`: the `api_key_id` of a caller's rows (None: anonymous);
- `owned`: an ORM query already filtered to the caller's rows;
- `owner_sql`: the same filter for raw SQL, in the two shapes that keep the
  `(api_key_id, created_at, id)` index and one prepared statement per shape: `api_key_id = $n`
  or `api_key_id IS NULL` (`IS NOT DISTINCT FROM` would serve both with neither).
"""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from tortoise.models import Model
from tortoise.queryset import QuerySet

from mediagen.keys.models import ApiKey

M = TypeVar("M", bound=Model)


def owner_id(owner: ApiKey | None) -> uuid.UUID | None:
    """The `api_key_id` of the rows `owner` makes and sees (None: an anonymous caller's)."""
    return owner.id if owner is not None else None


def owned(query: type[M] | QuerySet[M], owner: ApiKey | None) -> QuerySet[M]:
    """`query` (a model, or a query of one with an `api_key_id`) kept to `owner`'s rows."""
    return query.filter(api_key_id=owner_id(owner))


def owner_sql(owner: uuid.UUID | None, args: list[Any], column: str = "api_key_id") -> str:
    """The clause that keeps the rows of `owner` (None: made without a key): `column = $n`, with
    `owner` appended to the statement's `args` as its n-th argument, or `column IS NULL`."""
    if owner is None:
        return f"{column} IS NULL"
    args.append(owner)
    return f"{column} = ${len(args)}"
