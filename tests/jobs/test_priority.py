"""Job priority: who may ask for which, where each start waits, and that a saturated worker
starts high-priority jobs before the normal ones queued ahead of them (and low ones last).

A worker of its own (threads, `-c 2`: with `worker_prefetch_multiplier=8` it holds at most
PREFETCH unacknowledged messages) and APIs of their own, on Redis databases of their own."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis

from mediagen.broker import QUEUE, Outbox, queue_key
from mediagen.config import Settings
from mediagen.jobs.dispatch import START, start_task
from mediagen.jobs.models import Job
from mediagen.jobs.pipeline import Pipeline
from mediagen.jobs.priority import kombu_priority
from mediagen.jobs.states import Priority
from mediagen.jobs.sweeper import sweep
from mediagen.keys.models import ApiKey
from mediagen.providers.builtin.provider import BuiltinProvider
from mediagen.scheduling import level_of
from mediagen.scheduling._lua import PREFIX
from mediagen.storage.local import LocalStorage
from mediagen.worker import celery_app
from tests.conftest import REDIS, ROOT, TMP, start_api
from tests.support import Proc, new_job, publish, wait_for

PREFETCH = 2 * 8  # -c 2 x worker_prefetch_multiplier: messages a worker holds at most
N_NORMAL = 200
LISTS = {p: queue_key(QUEUE, kombu_priority(p)) for p in Priority}
SMALL = {"width": 64, "height": 64}
SLOW = {"width": 512, "height": 512}  # a poll renders it: the two threads stay busy


def mediagen_cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "mediagen", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def keys(database: str) -> dict[str, str]:
    """`vip` may ask for high priority; `plain` has the default ceiling (normal)."""
    vip = mediagen_cli("keys", "create", "vip", "--max-priority", "high")
    assert "max priority: high" in vip
    plain = mediagen_cli("keys", "create", "plain")
    assert "max priority: normal (default)" in plain
    return {"vip": vip.splitlines()[1], "plain": plain.splitlines()[1]}


def as_key(url: str, secret: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=30)


async def submit(client: httpx.AsyncClient, prompt: str, priority: str = "normal",
                 parameters: dict[str, Any] | None = None) -> str:
    response = await client.post("/api/v1/generate", json={
        "prompt": prompt, "priority": priority, "parameters": parameters or SMALL})
    assert response.status_code == 201, response.text
    return str(response.json()["job_id"])


@pytest.fixture(scope="module")
def idle_api(database: str) -> Iterator[tuple[str, redis.Redis]]:
    """An API whose queue no worker consumes: its jobs stay where dispatch put them."""
    url = REDIS.fresh()
    proc, api = start_api("api-priority-idle", {"REDIS_URL": url})
    broker = redis.Redis.from_url(url)
    yield api, broker
    proc.stop()
    broker.close()


def test_start_messages_go_to_the_list_kombu_picks() -> None:
    """What Celery's own publisher does with a message priority, the outbox does too."""
    url = REDIS.fresh()
    client = redis.Redis.from_url(url)
    for priority in Priority:
        with celery_app.connection_for_write(url) as connection:
            celery_app.send_task(START, args=["x"], queue=QUEUE, connection=connection,
                                 priority=kombu_priority(priority))
        theirs = [k.decode() for k in client.keys("mediagen*")]
        assert theirs == [LISTS[priority]]
        kombu_message = client.rpop(LISTS[priority])
        assert asyncio.run(publish(url, start_task("x", priority)))
        assert [k.decode() for k in client.keys("mediagen*")] == [LISTS[priority]]
        mine = orjson.loads(client.rpop(LISTS[priority]))
        assert mine["properties"]["priority"] == orjson.loads(kombu_message)["properties"][
            "priority"] == kombu_priority(priority)
    # Polls, sweeps, retries keep kombu's default: the queue's own list, served first.
    assert LISTS[Priority.HIGH] == QUEUE
    assert len(set(LISTS.values())) == 3
    client.close()


async def test_ceiling_refuses_above_it_and_creates_nothing(
        idle_api: tuple[str, redis.Redis], keys: dict[str, str]) -> None:
    api, _ = idle_api
    plain = await ApiKey.get(prefix=keys["plain"][:11])
    async with as_key(api, keys["plain"]) as client, as_key(api, None) as anonymous:
        for caller in (client, anonymous):  # keyless callers: DEFAULT_MAX_PRIORITY, normal
            before = await Job.all().count()
            response = await caller.post("/api/v1/generate",
                                         json={"prompt": "vip only", "priority": "high"})
            assert response.status_code == 403, response.text
            body = response.json()
            assert body["code"] == "priority_not_allowed"
            assert body["detail"] == "this key may ask for priority up to normal"
            assert await Job.all().count() == before
        assert await Job.filter(api_key_id=plain.id).count() == 0
        low = await submit(client, "patient", "low")
        detail = (await client.get(f"/api/v1/jobs/{low}")).json()
        assert detail["priority"] == "low"

        # An operator raises the ceiling: the API sees it at once (its cached key is dropped).
        out = mediagen_cli("keys", "set-priority", keys["plain"][:11], "high")
        assert "may now ask for priority up to high" in out
        listed = next(line for line in mediagen_cli("keys", "list").splitlines()
                      if keys["plain"][:11] in line)
        assert "max-priority=high" in listed
        deadline = time.monotonic() + 5
        while (response := await client.post(
                "/api/v1/generate",
                json={"prompt": "now allowed", "priority": "high", "parameters": SMALL},
        )).status_code == 403:
            assert time.monotonic() < deadline, "the new ceiling did not reach the API"
            await asyncio.sleep(0.05)
        assert response.status_code == 201, response.text
        # And back to the default.
        mediagen_cli("keys", "set-priority", keys["plain"][:11], "default")
        listed = next(line for line in mediagen_cli("keys", "list").splitlines()
                      if keys["plain"][:11] in line)
        assert "max-priority=normal (default)" in listed
        deadline = time.monotonic() + 5
        while (response := await client.post(
                "/api/v1/generate", json={"prompt": "again", "priority": "high"},
        )).status_code == 201:
            assert time.monotonic() < deadline, "the lowered ceiling did not reach the API"
            await asyncio.sleep(0.05)
        assert response.status_code == 403


async def test_queue_positions_and_lists_follow_priority(
        idle_api: tuple[str, redis.Redis], keys: dict[str, str]) -> None:
    api, broker = idle_api
    broker.flushdb()
    async with as_key(api, keys["vip"]) as vip:
        jobs = {
            "normal-1": await submit(vip, "first", "normal"),
            "low": await submit(vip, "second", "low"),
            "normal-2": await submit(vip, "third", "normal"),
            "high": await submit(vip, "fourth", "high"),
        }
        positions = {}
        for name, job_id in jobs.items():
            detail = (await vip.get(f"/api/v1/jobs/{job_id}")).json()
            assert detail["priority"] == name.partition("-")[0]
            positions[name] = detail["queue_position"]
    assert positions == {"high": 0, "normal-1": 1, "normal-2": 2, "low": 3}
    assert broker.llen(LISTS[Priority.HIGH]) == 1
    assert broker.llen(LISTS[Priority.NORMAL]) == 2
    assert broker.llen(LISTS[Priority.LOW]) == 1


async def test_sweeper_redispatches_at_each_jobs_priority(database: str, tmp_path: Path) -> None:
    url = REDIS.fresh()
    client = redis.Redis.from_url(url)
    settings = Settings(_env_file=None, dispatch_grace=0, lease_seconds=60,  # type: ignore[call-arg]
                        job_timeout=3600)
    outbox = Outbox(aioredis.from_url(url))
    pipeline = Pipeline(settings, BuiltinProvider(0), LocalStorage(tmp_path), outbox)
    lost = {p: (await new_job(f"lost {p}", priority=p)) for p in Priority}
    try:
        await sweep(pipeline)
    finally:
        await outbox.close()
        await outbox.client.aclose()
    for priority, job in lost.items():
        waiting = [m for m in client.lrange(LISTS[priority], 0, -1) if str(job.id).encode() in m]
        assert len(waiting) == 1, priority
    # Each back in its model's queue, at its level (the sweep sends every lost job of the
    # session's database, so others may be queued with them).
    for priority, job in lost.items():
        where = client.hget(f"{PREFIX}jobs", str(job.id))
        assert where is not None and where.decode()[0] == level_of(priority.rank), priority
    client.close()


# --- a saturated worker ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(database: str) -> Iterator[tuple[str, str]]:
    """An API on a queue of its own; the test starts the worker once the backlog is there."""
    url = REDIS.fresh()
    proc, api = start_api("api-priority", {"REDIS_URL": url, "RATE_LIMIT_READS_PER_MINUTE": "0"})
    yield api, url
    proc.stop()


def start_small_worker(broker_url: str) -> Proc:
    """The service's worker with two threads (conftest's has eight)."""
    name = "worker-priority"
    proc = Proc.start(
        name,
        ["python", "-m", "celery", "-A", "mediagen.worker", "worker", "-P", "threads", "-c", "2",
         "-Q", "mediagen,mediagen.webhooks", "--loglevel", "INFO", "--without-mingle",
         "--without-gossip", "-n", f"{name}-{os.getpid()}@%h"],
        TMP / f"{name}.log",
        {"REDIS_URL": broker_url},
    )
    broker = redis.Redis.from_url(broker_url)
    wait_for(lambda: any(m.decode().endswith(f":{proc.popen.pid}")
                         for m in broker.zrange("mediagen:workers", 0, -1)),
             30, proc, f"{name} heartbeat")
    broker.close()
    return proc


async def _started(job_ids: list[str]) -> int:
    return await Job.filter(id__in=job_ids, started_at__not_isnull=True).count()


@pytest.fixture
async def vip(stack: tuple[str, str], keys: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with as_key(stack[0], keys["vip"]) as client:
        yield client


async def test_saturated_worker_starts_high_first_and_low_last(
        stack: tuple[str, str], vip: httpx.AsyncClient) -> None:
    _, broker_url = stack
    lows = [await submit(vip, f"low {n}", "low", SLOW) for n in range(3)]
    normals: list[str] = []
    for chunk in range(0, N_NORMAL, 25):
        normals += await asyncio.gather(*(submit(vip, f"normal {n}", "normal", SLOW)
                                          for n in range(chunk, chunk + 25)))
    worker = start_small_worker(broker_url)
    try:
        deadline = time.monotonic() + 60
        while await _started(normals) < 10:  # the worker is busy and holds its prefetch
            assert time.monotonic() < deadline, worker.tail()
            await asyncio.sleep(0.05)
        highs = [await submit(vip, f"high {n}", "high", SLOW) for n in range(4)]
        everyone = lows + normals + highs
        deadline = time.monotonic() + 240
        while await _started(everyone) < len(everyone):
            assert time.monotonic() < deadline, worker.tail()
            await asyncio.sleep(0.2)
    finally:
        worker.stop()
    rows = {str(r["id"]): r for r in await Job.filter(id__in=everyone).values(
        "id", "priority", "created_at", "started_at")}
    normal_rows = [rows[j] for j in normals]
    for high in (rows[j] for j in highs):
        # The normal jobs queued before it and not yet started when it came.
        waiting = [n for n in normal_rows
                   if n["created_at"] < high["created_at"] < n["started_at"]]
        assert len(waiting) >= 100, "the worker was not saturated: nothing to overtake"
        overtaken_by = [n for n in waiting if n["started_at"] < high["started_at"]]
        # Only what the worker had already fetched (its prefetch) starts before it.
        assert len(overtaken_by) <= PREFETCH, (len(overtaken_by), len(waiting))
    for low in (rows[j] for j in lows):
        # Every normal start was fetched before any low one (the low list is read only once
        # the normal one is empty) and runs first, but for the one the other thread may be
        # claiming at the same moment.
        after = [n for n in normal_rows if n["started_at"] > low["started_at"]]
        assert len(after) <= 1, len(after)
        assert all(rows[h]["started_at"] < low["started_at"] for h in highs)
    assert {rows[j]["priority"] for j in lows} == {Priority.LOW}
    assert {rows[j]["priority"] for j in highs} == {Priority.HIGH}
