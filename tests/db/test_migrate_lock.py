"""Replicas that all run `mediagen migrate` as they start: on a new, empty database, every one
of them exits 0 and each migration is applied once (the first takes the migration lock, the
others wait for it and find nothing left to do). Without the lock they race to create the same
tables and all but one fail."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg

import mediagen.migrations
from tests.conftest import PG_ADMIN, POSTGRES, ROOT

REPLICAS = 4


async def test_replicas_migrating_at_once_apply_each_migration_once() -> None:
    name = f"migrate_race_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        env = {"DATABASE_URL": POSTGRES.url(name), "PYTHONUNBUFFERED": "1"}
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "mediagen", "migrate"],
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(REPLICAS)
        ]
        outputs = [proc.communicate(timeout=120)[0] for proc in procs]
        failed = [out[-1500:] for proc, out in zip(procs, outputs, strict=True) if proc.returncode]
        assert not failed, "\n---\n".join(failed)

        db = await asyncpg.connect(POSTGRES.dsn(name))
        try:
            applied = await db.fetch(
                "SELECT app, name, count(*) AS n FROM tortoise_migrations GROUP BY app, name"
            )
        finally:
            await db.close()
        assert all(row["n"] == 1 for row in applied), [dict(row) for row in applied]
        assert {row["name"] for row in applied} == _migrations()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _migrations() -> set[str]:
    """The names of the migrations the package holds."""
    return {p.stem for p in Path(mediagen.migrations.__path__[0]).glob("0*.py")}
