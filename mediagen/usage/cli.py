"""`mediagen usage [--from --to --group-by day|model|key]`: usage across keys, for operators.

Reads the database directly (no API key involved); its arguments are defined in mediagen/cli.py.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from datetime import UTC, date, datetime

import asyncpg
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from tortoise.exceptions import BaseORMException

from mediagen.config import get_settings
from mediagen.db import close_db, init_db
from mediagen.errors import DatabaseUnavailableError
from mediagen.jobs.states import JobStatus
from mediagen.keys.models import ApiKey
from mediagen.usage import service
from mediagen.usage.schemas import UsageGroup, UsageQuery

SHOWN_STATUSES = tuple(str(s) for s in JobStatus if s.is_terminal)  # the rest: "unfinished"


def _instant(text: str | None) -> datetime | None:
    """An ISO date (midnight UTC) or date-time (UTC unless it says otherwise)."""
    if text is None:
        return None
    try:
        day = date.fromisoformat(text)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    except ValueError:
        moment = datetime.fromisoformat(text)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def _labels(groups: list[UsageGroup]) -> dict[str | None, tuple[str, str]]:
    """(`mg_abcd1234...`, name) for each key id among the groups."""
    ids = [uuid.UUID(g.group) for g in groups if g.group]
    keys = await ApiKey.filter(id__in=ids) if ids else []
    labels: dict[str | None, tuple[str, str]] = {
        str(k.id): (f"{k.prefix}...", k.name) for k in keys
    }
    labels[None] = ("(no key)", "")
    return labels


def _table(
    title: str, columns: tuple[str, ...], rows: list[tuple[tuple[str, ...], UsageGroup]]
) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, no_wrap=True)
    for name in ("jobs", *SHOWN_STATUSES, "unfinished", "run seconds", "bytes stored"):
        table.add_column(name, justify="right", no_wrap=True)
    for labels, g in rows:
        unfinished = g.jobs - sum(g.by_status[s] for s in SHOWN_STATUSES)
        table.add_row(
            *labels,
            str(g.jobs),
            *(str(g.by_status[s]) for s in SHOWN_STATUSES),
            str(unfinished),
            f"{g.run_seconds:.1f}",
            str(g.bytes_stored),
        )
    return table


async def _run(args: argparse.Namespace) -> int:
    try:
        query = UsageQuery(start=_instant(args.start), end=_instant(args.end))
    except (ValueError, ValidationError) as exc:
        errors = exc.errors() if isinstance(exc, ValidationError) else [{"msg": str(exc)}]
        print(f"mediagen usage: {'; '.join(e['msg'] for e in errors)}", file=sys.stderr)
        return 2
    start, end = query.bounds
    rows: list[tuple[tuple[str, ...], UsageGroup]]
    await init_db(get_settings(), "mediagen-cli")
    try:
        groups, total = await service.usage(start, end, args.group_by, all_keys=True)
        if args.group_by == "key":
            labels = await _labels(groups)
            columns: tuple[str, ...] = ("key", "name")
            rows = [(labels.get(g.group, (str(g.group), "(deleted)")), g) for g in groups]
        else:
            columns = (args.group_by,)
            rows = [((g.group or "(none)",), g) for g in groups]
    finally:
        await close_db()
    rows.append((("total",) + ("",) * (len(columns) - 1), total))
    title = f"usage of jobs created {start:%Y-%m-%d %H:%M} - {end:%Y-%m-%d %H:%M} UTC"
    Console(width=max(Console().width, 160)).print(_table(title, columns, rows))
    return 0


def run(args: argparse.Namespace) -> int:
    """The table, or one clear line (exit 1) when there is no database to talk to."""
    try:
        return asyncio.run(_run(args))
    except DatabaseUnavailableError as exc:
        print(f"mediagen usage: {exc.message}", file=sys.stderr)
    except (OSError, TimeoutError, asyncpg.PostgresError, BaseORMException) as exc:
        print(f"mediagen usage: cannot read the database: {exc}", file=sys.stderr)
    return 1
