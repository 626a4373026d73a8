"""Redis behind Sentinel: a real API process and a real Celery worker, started before anything
fails, follow the primary through a demotion (SENTINEL FAILOVER while both servers stay up) and
the loss of the primary (SIGKILL), and jobs submitted afterwards complete. The clients of
`mediagen.redis_clients` are checked on their own too: a connection to a demoted primary that
answers READONLY must turn into a write on the new primary."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis

from mediagen import redis_clients
from tests.jobs.test_events import open_events, statuses
from tests.redis_failover.servers import HOST, SentinelGroup
from tests.stack import Stack, settings_with
from tests.support import submit, wait_terminal

SMALL = {"width": 64, "height": 64}


@pytest.fixture(scope="module")
def live(database: str, sentinel_group: SentinelGroup) -> Iterator[Stack]:
    """An API and a worker process that reach Redis through the Sentinels only."""
    sentinel_group.restore()
    stack = Stack("sentinel", sentinel_group.env()).start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
async def api(live: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        yield http


def db_of(stack: Stack) -> int:
    return int(stack.redis_url.rsplit("/", 1)[1])


def no_redis_errors(stack: Stack, *also: str) -> None:
    """Neither process logged a Redis error it could not get over (a READONLY that leaked, a
    consumer that died), nor any of `also`."""
    for proc in stack.procs():
        text = proc.log.read_text(errors="replace")
        for leak in ("READONLY", "UNBLOCKED", "Unrecoverable error", *also):
            assert leak not in text, proc.tail(60)


async def test_submit_and_events_go_through_sentinel(
    api: httpx.AsyncClient, live: Stack, sentinel_group: SentinelGroup
) -> None:
    job_id = await submit(api, "a lighthouse", **SMALL)
    async with open_events(api, job_id, "0-0") as stream:
        events = await stream.rest()
    assert statuses(events)[-1] == "completed", events
    with contextlib.closing(sentinel_group.client(db_of(live))) as primary:
        assert primary.exists(f"mediagen:events:{job_id}")  # written on the primary


async def test_the_worker_follows_a_killed_primary(
    api: httpx.AsyncClient, live: Stack, sentinel_group: SentinelGroup
) -> None:
    """The primary is SIGKILLed; once Sentinel promoted the replica, a job submitted to the
    API completes on the worker that was running all along."""
    sentinel_group.restore()
    first = await submit(api, "before the kill", **SMALL)
    assert (await wait_terminal(api, first, 30))["status"] == "completed"
    worker = live.worker
    assert worker is not None
    _, promoted_after = await asyncio.to_thread(sentinel_group.kill_primary)
    started = time.monotonic()
    job_id = await _submit_retrying(api, "after the kill")
    body = await wait_terminal(api, job_id, 40)
    assert body["status"] == "completed", body
    assert worker.popen.poll() is None
    print(f"promotion {promoted_after:.1f} s after the kill; job done "
          f"{time.monotonic() - started:.1f} s after it")
    no_redis_errors(live)


async def test_a_demoted_primary_leaks_no_readonly(
    api: httpx.AsyncClient, live: Stack, sentinel_group: SentinelGroup
) -> None:
    """SENTINEL FAILOVER, then the old primary turned replica at once and its clients left
    connected (Sentinel itself would disconnect them, seconds later): every connection the
    processes hold to it now answers READONLY to writes."""
    sentinel_group.restore()
    settings = settings_with(live.env)
    sync = redis_clients.sync_client(settings, "test-sync")
    async_ = redis_clients.async_client(settings, "test-async")
    try:
        sync.set("before", 1)  # each client holds a connection to the old primary
        await async_.set("before", 1)
        old = sentinel_group.primary_port()
        with contextlib.closing(sentinel_group.node(old, db_of(live))) as old_primary:
            assert old_primary.exists("before")
            new = await asyncio.to_thread(_fail_over_keeping_clients, sentinel_group)
            assert new != old
            with pytest.raises(redis.ReadOnlyError):
                old_primary.set("probe", 1)  # a plain client of the old primary: READONLY
        # The processes' connections were to the old primary: they follow, no error.
        job_ids = [await submit(api, f"after the demotion {n}", **SMALL) for n in range(5)]
        for job_id in job_ids:
            assert (await wait_terminal(api, job_id, 30))["status"] == "completed"
        sync.set("after", 2)
        await async_.set("after", 2)
        with contextlib.closing(sentinel_group.node(new, db_of(live))) as new_primary:
            assert all(new_primary.exists(f"mediagen:events:{j}") for j in job_ids)
            assert new_primary.get("after") == b"2"
    finally:
        sync.close()
        await async_.aclose()
    # Nothing failed on the way: no batch of the outbox was left to the sweeper.
    no_redis_errors(live, "previous master is now a slave", "not published")


def _fail_over_keeping_clients(group: SentinelGroup) -> int:
    old = group.primary_port()
    with contextlib.closing(group.sentinel()) as sentinel:
        sentinel.execute_command("SENTINEL", "FAILOVER", "mymaster")
    new = group.wait_primary_moved(old)
    with contextlib.closing(group.node(old)) as demoted:
        demoted.execute_command("REPLICAOF", HOST, str(new))  # what Sentinel does later
    return new


async def _submit_retrying(api: httpx.AsyncClient, prompt: str) -> str:
    """Submit; the API may still answer 503 for a moment while its connections move."""
    deadline = time.monotonic() + 15
    while True:
        response = await api.post("/api/v1/generate",
                                  json={"prompt": prompt, "parameters": SMALL})
        if response.status_code == 201 or time.monotonic() > deadline:
            assert response.status_code == 201, response.text
            return str(response.json()["job_id"])
        await asyncio.sleep(0.2)
