"""Through PgBouncer in transaction mode (a PgBouncer of the test's own in front of the
session's Postgres), with DATABASE_STATEMENT_CACHE_SIZE=0: jobs are submitted, run by the
worker and read back, with no prepared-statement error.

With the default statement cache (100) the same test fails at once: asyncpg prepares each
statement by name on one server connection, and PgBouncer hands the next transaction another
(`prepared statement "__asyncpg_stmt_1__" does not exist`). PgBouncer 1.21 and later can keep
prepared statements itself (`max_prepared_statements`); Debian 12's is 1.18."""

from __future__ import annotations

import asyncio

from tortoise import connections

from tests.conftest import TEST_DB
from tests.db.servers import PgBouncer
from tests.stack import in_process
from tests.support import submit, wait_terminal

JOBS = 12


async def test_jobs_through_pgbouncer_in_transaction_mode(
    database: str, bouncer: PgBouncer
) -> None:
    env = {"DATABASE_URL": bouncer.url(TEST_DB), "DATABASE_STATEMENT_CACHE_SIZE": "0"}
    async with in_process(env, worker=True) as stack:
        assert connections.get("default").port == bouncer.port  # the pool is the pooler's
        http = stack.client()
        ids = await asyncio.gather(
            *(submit(http, f"pooled {n}", width=64, height=64) for n in range(JOBS))
        )
        finished = await asyncio.gather(*(wait_terminal(http, job_id) for job_id in ids))
        assert {body["status"] for body in finished} == {"completed"}, finished
        statuses = await asyncio.gather(*(http.get(f"/api/v1/status/{job_id}") for job_id in ids))
        assert {s.status_code for s in statuses} == {200}
        listing = await http.get("/api/v1/jobs", params={"limit": 100})
        assert listing.status_code == 200, listing.text
        assert set(ids) <= {job["job_id"] for job in listing.json()["data"]}
        assert stack.worker is not None
        stack.worker.check()
