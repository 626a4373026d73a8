"""The hostile side of the security tests: a real server of ours that misbehaves on purpose."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from tests.conftest import PG_ADMIN, ROOT, TEST_DB, TEST_ENV
from tests.fakes.hostile import HostileServer


@pytest.fixture(scope="session")
def hostile() -> Iterator[HostileServer]:
    server = HostileServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def fresh_database() -> AsyncIterator[str]:
    """A database of its own, migrated, in which no key was ever made (the session's has keys
    from other tests); dropped afterwards."""
    name = f"{TEST_DB}_fresh_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = TEST_ENV["DATABASE_URL"].rsplit("/", 1)[0] + f"/{name}"
    try:
        subprocess.run([sys.executable, "-m", "mediagen", "migrate"], check=True,
                       capture_output=True, env={**os.environ, "DATABASE_URL": url}, cwd=ROOT)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def mediagen_cli(env: dict[str, str], *args: str) -> str:
    """`mediagen ...` with `env` on top of the session's environment; its output."""
    result = subprocess.run([sys.executable, "-m", "mediagen", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
