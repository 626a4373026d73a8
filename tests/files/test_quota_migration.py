"""Migration 0014 on a database that already keeps input files: each key (and the keyless
callers together) starts with the bytes of the files it keeps, so the storage quota holds from
the upgrade on. The migrations run in a process of their own (they open and close Tortoise's
connections, which this session's tests share)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import asyncpg

from tests.conftest import PG_ADMIN, POSTGRES, ROOT

ANONYMOUS = uuid.UUID(int=0)
MIGRATE = """
import asyncio, sys
from tortoise import Tortoise
from tortoise.migrations.api import migrate
from mediagen.config import Settings
from mediagen.db import tortoise_config

async def main(url, target):
    await migrate(config=tortoise_config(Settings(_env_file=None, database_url=url)),
                  target=target or None)
    await Tortoise.close_connections()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def _migrate(url: str, target: str = "") -> None:
    done = subprocess.run([sys.executable, "-c", MIGRATE, url, target], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


async def test_the_upgrade_counts_the_files_already_kept(database: str) -> None:
    name = f"quota_migration_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = POSTGRES.url(name)
        _migrate(url, "jobs.0013_replicate_api")
        db = await asyncpg.connect(POSTGRES.dsn(name))
        try:
            key = uuid.uuid4()
            await db.execute("INSERT INTO api_keys (id, name, prefix, key_hash, created_at) "
                             "VALUES ($1, 'old', 'mg_old', $2, now())", key, uuid.uuid4().hex)
            for owner, size in ((key, 100), (key, 50), (None, 7)):
                await db.execute(
                    "INSERT INTO files (id, api_key_id, key, filename, content_type, size, "
                    "created_at, expires_at) VALUES ($1, $2, 'k', 'f', 'image/png', $3, now(), "
                    "now())", uuid.uuid4(), owner, size)
        finally:
            await db.close()
        _migrate(url)
        db = await asyncpg.connect(POSTGRES.dsn(name))
        try:
            counted = dict(await db.fetch("SELECT scope, bytes FROM storage_counters"))
        finally:
            await db.close()
        assert counted == {key: 150, ANONYMOUS: 7}
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
