"""AUTH_REQUIRED=auto: open until the first key is made, then closed for good (a revoke of the
last key does not open it again), and the jobs made before the first key handed to a key on
the operator's word (`mediagen keys adopt`)."""

from __future__ import annotations

import asyncpg
import httpx

from tests.conftest import REDIS, start_api
from tests.security.conftest import mediagen_cli

BODY = {"prompt": "made before any key", "parameters": {"width": 64, "height": 64}}


async def test_auto_stays_closed_once_a_key_was_made(fresh_database: str) -> None:
    env = {"DATABASE_URL": fresh_database, "AUTH_REQUIRED": "auto",
           "REDIS_URL": REDIS.fresh()}
    api, url = start_api("api-auto", env)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as anonymous:
            early = await anonymous.post("/api/v1/generate", json=BODY)
            assert early.status_code == 201  # no key yet: open
            job_id = early.json()["job_id"]

            first = mediagen_cli(env, "keys", "create", "first").splitlines()[1]
            assert (await anonymous.post("/api/v1/generate", json=BODY)).status_code == 401
            assert (await anonymous.get(f"/api/v1/status/{job_id}")).status_code == 401
            mediagen_cli(env, "keys", "revoke", first[:11])
            # The last key is gone, and yet: closed.
            assert (await anonymous.post("/api/v1/generate", json=BODY)).status_code == 401
            assert (await anonymous.get(f"/api/v1/status/{job_id}")).status_code == 401

            second = mediagen_cli(env, "keys", "create", "second").splitlines()[1]
            headers = {"Authorization": f"Bearer {second}"}
            async with httpx.AsyncClient(base_url=url, headers=headers) as keyed:
                assert (await keyed.get(f"/api/v1/status/{job_id}")).status_code == 404
                assert "1 job(s)" in mediagen_cli(env, "keys", "adopt", second[:11])
                adopted = await keyed.get(f"/api/v1/status/{job_id}")
                assert adopted.status_code == 200 and adopted.json()["status"] == "pending"
    finally:
        api.stop()
    # The adopted job is counted as the key's unfinished job, no longer as anonymous.
    db = await asyncpg.connect(fresh_database.replace("postgres://", "postgresql://", 1))
    try:
        counts = dict(await db.fetch(
            "SELECT (scope = '00000000-0000-0000-0000-000000000000') AS anonymous, "
            "sum(unfinished) FROM job_counters GROUP BY 1"))
    finally:
        await db.close()
    assert counts == {True: 0, False: 1}
