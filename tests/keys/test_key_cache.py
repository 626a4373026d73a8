"""Keys are cached in every API process, and a revoke still takes effect in all of them at once:
`mediagen keys revoke` publishes the change and each process drops its cache (pub/sub)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from tests.conftest import POSTGRES, TEST_DB, TEST_ENV, start_api
from tests.keys.test_keys import mediagen_cli
from tests.stack import new_key, with_query

NAME = f"two-processes-{os.getpid()}"


@pytest.fixture(scope="module")
def two_processes(database: str) -> Iterator[str]:
    """`mediagen api --workers 2`, keys required, its connections named NAME."""
    proc, url = start_api(
        "api-two",
        {"AUTH_REQUIRED": "true",
         "DATABASE_URL": with_query(TEST_ENV["DATABASE_URL"], application_name=NAME)},
        cmd=["python", "-m", "mediagen", "api", "--workers", "2"],
    )
    yield url
    proc.stop()


async def test_two_api_processes_serve(two_processes: str) -> None:
    admin = await asyncpg.connect(POSTGRES.dsn(TEST_DB))
    try:
        for _ in range(50):  # each process opens its pool at start-up
            pids = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                                     NAME)
            if len(pids) >= 2:
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    assert len(pids) >= 2


async def _codes(url: str, secret: str, path: str, connections: int) -> set[int]:
    """Status codes of one request on each of `connections` new connections (the kernel hands
    new connections to either process: 40 of them reach both all but surely)."""
    codes = set()
    for _ in range(connections):
        async with httpx.AsyncClient(base_url=url,
                                     headers={"Authorization": f"Bearer {secret}"}) as client:
            codes.add((await client.get(path)).status_code)
    return codes


async def test_a_revoke_reaches_every_process_at_once(two_processes: str) -> None:
    secret = await new_key("cached-everywhere")
    unknown = f"/api/v1/status/{uuid.uuid4()}"
    # A known key (now cached by both processes) asking for a job that does not exist.
    assert await _codes(two_processes, secret, unknown, 40) == {404}
    assert "revoked" in mediagen_cli("keys", "revoke", secret[:11])
    assert await _codes(two_processes, secret, unknown, 40) == {401}

