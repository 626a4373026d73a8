"""Replicas that all run `mediagen migrate` as they start: on a new, empty database, every one
of them exits 0 and each migration is applied once (the first takes the migration lock, the
others wait for it and find nothing left to do), straight to Postgres and through PgBouncer in
transaction mode. Without the lock they race to create the same tables and all but one fail;
through PgBouncer, replicas that waited for the lock holding a server connection each would
leave none for the migrations themselves."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

import mediagen.migrations
from tests.conftest import PG_ADMIN, POSTGRES, ROOT
from tests.db.servers import PgBouncer

REPLICAS = 4
TIMEOUT = 60


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    """A new database with nothing in it: its name."""
    name = f"migrate_race_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _migrate_at_once(env: dict[str, str]) -> None:
    """REPLICAS `mediagen migrate` started together; each must exit 0."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mediagen", "migrate"],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(REPLICAS)
    ]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=TIMEOUT)[0])
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise AssertionError(f"`mediagen migrate` still running after {TIMEOUT} s") from None
    failed = [out[-1500:] for proc, out in zip(procs, outputs, strict=True) if proc.returncode]
    assert not failed, "\n---\n".join(failed)


async def _applied_once(name: str) -> None:
    db = await asyncpg.connect(POSTGRES.dsn(name))
    try:
        applied = await db.fetch(
            "SELECT app, name, count(*) AS n FROM tortoise_migrations GROUP BY app, name"
        )
    finally:
        await db.close()
    assert all(row["n"] == 1 for row in applied), [dict(row) for row in applied]
    assert {row["name"] for row in applied} == _migrations()


def _migrations() -> set[str]:
    """The names of the migrations the package holds."""
    return {p.stem for p in Path(mediagen.migrations.__path__[0]).glob("0*.py")}


async def test_replicas_migrating_at_once_apply_each_migration_once(empty_database: str) -> None:
    _migrate_at_once({"DATABASE_URL": POSTGRES.url(empty_database)})
    await _applied_once(empty_database)


async def test_replicas_migrating_at_once_through_pgbouncer(
    empty_database: str, bouncer: PgBouncer
) -> None:
    """More replicas than PgBouncer has server connections (3)."""
    _migrate_at_once(
        {"DATABASE_URL": bouncer.url(empty_database), "DATABASE_STATEMENT_CACHE_SIZE": "0"}
    )
    await _applied_once(empty_database)
