"""A Celery worker keeps consuming when its Redis goes away and comes back: restarted (empty),
or gone silent under its connections (half-open: nothing answers, nothing is closed), the
failure modes after which Celery workers have been seen to stop consuming for good."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import httpx

from tests.redis_failover.servers import PLAIN_PORT, PROXY_PORT, PlainRedis, SilentProxy
from tests.stack import Stack
from tests.support import submit, wait_terminal

SMALL = {"width": 64, "height": 64}
# kombu drops a BRPOP connection whose reply is overdue by brpop_timeout + health_check_interval
# (1 + 5 s, mediagen.redis_clients) and checks every 5 s: a half-open connection costs ~11 s.
HALF_OPEN_RECOVERY = 25


@contextlib.contextmanager
def running(*stacks: Stack) -> Iterator[None]:
    try:
        for stack in stacks:
            stack.start(api=stack.name.endswith("api"), worker=stack.name.endswith("worker"))
        yield
    finally:
        for stack in stacks:
            stack.stop()


async def completes(url: str, prompt: str, within: float) -> float:
    """Submit a job to the API at `url`; seconds until it completed."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as api:
        started = time.monotonic()
        job_id = await submit(api, prompt, **SMALL)
        body = await wait_terminal(api, job_id, within)
    assert body["status"] == "completed", body
    return time.monotonic() - started


async def test_the_worker_consumes_again_after_redis_restarts(
    database: str, plain: PlainRedis
) -> None:
    api = Stack("restart-api", {"REDIS_URL": plain.url(1)})
    worker = Stack("restart-worker", {"REDIS_URL": plain.url(1)})
    with running(api, worker):
        await completes(api.url, "before the restart", 30)
        plain.restart()
        took = await completes(api.url, "after the restart", 30)
        assert worker.worker is not None and worker.worker.popen.poll() is None
    print(f"a job after the restart completed in {took:.1f} s")


async def test_a_worker_on_half_open_connections_recovers(
    database: str, plain: PlainRedis
) -> None:
    """The worker reaches Redis through a proxy that falls silent: its BRPOP never gets a reply
    and its other connections never an answer. Jobs submitted afterwards (the API reaches
    Redis directly) must still run, on connections the worker made again."""
    proxy = SilentProxy(PROXY_PORT, PLAIN_PORT)
    api = Stack("half-api", {"REDIS_URL": plain.url(2)})
    worker = Stack("half-worker", {"REDIS_URL": plain.url(2, PROXY_PORT)})
    try:
        with running(api, worker):
            await completes(api.url, "before the silence", 30)
            proxy.cut()
            took = await completes(api.url, "after the silence", HALF_OPEN_RECOVERY)
    finally:
        proxy.stop()
    print(f"a job after the silence completed in {took:.1f} s")
