"""Redis losing its data (a failover promotes a replica that had not received the last writes:
replication is asynchronous) loses no job. Jobs are accepted, then every key of their Redis
database is flushed (the start messages, the queue index, the events); a worker started
afterwards, with its sweeper, still completes every one, because Postgres holds the jobs and
the sweeper sends again a pending job whose message is older than LEASE_SECONDS."""

from __future__ import annotations

import contextlib
import time

import redis

from tests.redis_failover.servers import HOST, PLAIN_PORT, PlainRedis
from tests.stack import TMP, app, launch_worker, stop_all, wait_worker
from tests.support import submit, wait_for, wait_terminal

SMALL = {"width": 64, "height": 64}
JOBS = 5
# The worker runs its own sweeper (celery -B) every second; a message is taken for lost once
# it is LEASE_SECONDS old. Defaults: 30 s and 120 s (docs/scaling.md).
SWEEPER = {"SWEEP_INTERVAL": "1", "LEASE_SECONDS": "2"}


async def test_jobs_whose_messages_redis_lost_still_complete(
    database: str, plain: PlainRedis
) -> None:
    env = {"REDIS_URL": plain.url(3)}
    async with app(env) as api:
        job_ids = [await submit(api, f"before the loss {n}", **SMALL) for n in range(JOBS)]
        with contextlib.closing(redis.Redis(HOST, PLAIN_PORT, db=3)) as data:
            # The outbox writes just after the 201 (its own batch): wait for it, then lose it.
            wait_for(lambda: data.dbsize() > 0, 10, what="the start messages in Redis")
            data.flushdb()  # what a failover to a replica that lagged behind can do
        worker = launch_worker("sweeping-worker", {**env, **SWEEPER},
                               ["-B", "-s", str(TMP / "sweeping-beat-schedule")])
        try:
            with contextlib.closing(redis.Redis(HOST, PLAIN_PORT, db=3)) as data:
                wait_worker(worker, data)
            started = time.monotonic()
            for job_id in job_ids:
                body = await wait_terminal(api, job_id, 30)
                assert body["status"] == "completed", body
            took = time.monotonic() - started
        finally:
            stop_all([worker])
    assert "to re-dispatch" in worker.log.read_text()  # the sweeper sent them, nothing else
    print(f"{JOBS} jobs completed {took:.1f} s after the worker and its sweeper started")
