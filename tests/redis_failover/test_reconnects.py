"""A Celery worker keeps consuming when its Redis goes away and comes back: restarted (empty),
or gone silent under its connections (half-open: nothing answers, nothing is closed), the
failure modes after which Celery workers have been seen to stop consuming for good."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import httpx

from tests.redis_failover.servers import PLAIN_PORT, PROXY_PORT, PlainRedis, SilentProxy
from tests.stack import Stack, app
from tests.support import submit, wait_terminal

SMALL = {"width": 64, "height": 64}
# kombu drops a BRPOP connection whose reply is overdue by brpop_timeout + health_check_interval
# (1 + 5 s, mediagen.redis_clients) and checks every 5 s: a half-open connection costs ~11 s.
HALF_OPEN_RECOVERY = 25


@contextlib.contextmanager
def worker_process(name: str, redis_url: str) -> Iterator[Stack]:
    stack = Stack(name, {"REDIS_URL": redis_url}).start(api=False)
    try:
        yield stack
    finally:
        stack.stop()


async def completes(api: httpx.AsyncClient, prompt: str, within: float) -> float:
    """Submit a job; seconds until it completed."""
    started = time.monotonic()
    job_id = await submit(api, prompt, **SMALL)
    body = await wait_terminal(api, job_id, within)
    assert body["status"] == "completed", body
    return time.monotonic() - started


async def test_the_worker_consumes_again_after_redis_restarts(
    database: str, plain: PlainRedis
) -> None:
    """Redis is killed and started again, empty, under the API (here in this process) and a
    worker process: both use new connections, and the next job runs at once."""
    async with app({"REDIS_URL": plain.url(1)}) as api:
        with worker_process("restart", plain.url(1)) as worker:
            await completes(api, "before the restart", 30)
            plain.restart()
            took = await completes(api, "after the restart", 30)
            assert worker.worker is not None and worker.worker.popen.poll() is None
    print(f"a job after the restart completed in {took:.1f} s")


async def test_a_worker_on_half_open_connections_recovers(
    database: str, plain: PlainRedis
) -> None:
    """The worker reaches Redis through a proxy that falls silent: its BRPOP never gets a reply
    and its other connections never an answer. Jobs submitted afterwards (the API reaches
    Redis directly) must still run, on connections the worker made again."""
    proxy = SilentProxy(PROXY_PORT, PLAIN_PORT)
    try:
        async with app({"REDIS_URL": plain.url(2)}) as api:
            with worker_process("half-open", plain.url(2, PROXY_PORT)):
                await completes(api, "before the silence", 30)
                proxy.cut()
                took = await completes(api, "after the silence", HALF_OPEN_RECOVERY)
    finally:
        proxy.stop()
    print(f"a job after the silence completed in {took:.1f} s")
