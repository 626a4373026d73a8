"""Pieces of the job statements' SET clauses: SQL expressions written here, never from input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Expr:
    """A SQL expression for a SET clause; `{}` marks its arguments."""

    sql: str
    args: tuple[Any, ...] = ()

    def with_args(self, *args: Any) -> Expr:
        return Expr(self.sql, args)


NOW = Expr("now()")


def seconds_from_now(seconds: float) -> Expr:
    return Expr("now() + make_interval(secs => {}::float8)", (float(seconds),))


def plus_one(column: str) -> Expr:
    return Expr(f"{column} + 1")
