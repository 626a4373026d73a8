"""A key holder who points webhooks at a receiver that drips its answer a byte at a time, or
answers with a gzip bomb, cannot delay anyone's jobs, exhaust a worker's memory, or get a
delivery sent twice while it is in flight."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psutil
import pytest
import redis

from mediagen.config import get_settings
from mediagen.notify.models import DeliveryStatus, WebhookDelivery
from mediagen.notify.service import stranded_deliveries
from tests.conftest import REDIS, start_api, start_worker
from tests.fakes.hostile import HostileServer
from tests.keys.test_keys import create_key
from tests.support import Proc, new_job, wait_terminal

SMALL = {"width": 64, "height": 64}
OWN_REDIS = REDIS.fresh()


class Stack:
    def __init__(self, url: str, worker: Proc, key: str) -> None:
        self.url, self.worker, self.key = url, worker, key


@pytest.fixture(scope="module")
def stack(database: str, hostile: HostileServer) -> Iterator[Stack]:
    """An API and one worker (8 task threads) of their own, on a Redis database of their own.

    100 of the hostile key's attempts in flight at once, as with the default
    WEBHOOK_CONCURRENCY alone: its share of the slots is 100 of 200 and no circuit opens, so
    this measures what that many hostile attempts cost the worker (the shares and circuits that
    hold a hostile key back are tested in test_webhook_fairness.py)."""
    env = {"REDIS_URL": OWN_REDIS, "WEBHOOK_ALLOW_HOSTS": "127.0.0.1", "WEBHOOK_TIMEOUT": "2",
           "WEBHOOK_RETRY_DELAY": "1", "AUTH_REQUIRED": "true", "WEBHOOK_CONCURRENCY": "200",
           "WEBHOOK_CONCURRENCY_PER_KEY": "100", "WEBHOOK_CONCURRENCY_PER_HOST": "100",
           "WEBHOOK_CIRCUIT_FAILURES": "0"}
    broker = redis.Redis.from_url(OWN_REDIS)
    broker.flushdb()
    worker = start_worker("worker-hostile", broker, env)
    api, url = start_api("api-hostile", env)
    try:
        yield Stack(url, worker, create_key("hostile-webhooks"))
    finally:
        api.stop()
        worker.stop()


async def _submit(client: httpx.AsyncClient, count: int, prompt: str,
                  webhook: str | None = None) -> list[str]:
    body: dict[str, object] = {"prompt": prompt, "parameters": SMALL}
    if webhook:
        body["webhook"] = webhook
    answers = await asyncio.gather(*(client.post("/api/v1/generate", json=body)
                                     for _ in range(count)))
    assert {a.status_code for a in answers} == {201}, [a.text for a in answers][:3]
    return [a.json()["job_id"] for a in answers]


async def _all_done(client: httpx.AsyncClient, ids: list[str]) -> None:
    for job_id in ids:
        assert (await wait_terminal(client, job_id, timeout=60))["status"] == "completed"


async def _timed(client: httpx.AsyncClient, count: int, prompt: str) -> float:
    """Seconds from submitting `count` ordinary jobs until all are completed."""
    started = time.monotonic()
    await _all_done(client, await _submit(client, count, prompt))
    return time.monotonic() - started


async def test_dripping_and_bombing_receivers_do_not_delay_other_jobs(
    stack: Stack, hostile: HostileServer
) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30,
                                 headers={"Authorization": f"Bearer {stack.key}"}) as client:
        alone = await _timed(client, 50, "an ordinary kite")
        worker_rss = psutil.Process(stack.worker.popen.pid).memory_info().rss

        drips = await _submit(client, 50, "a dripping kite", hostile.url("/drip"))
        bombs = await _submit(client, 50, "a bombed kite", hostile.url("/gzip-bomb"))
        await asyncio.sleep(1)  # the hostile deliveries are under way
        assert hostile.open >= 10, hostile.open
        beside = await _timed(client, 50, "an ordinary kite")
        # Ordinary jobs finish about as fast as with nobody hostile around.
        assert beside <= max(3 * alone, alone + 5), (alone, beside)

        # Every hostile job completed too; the drips failed their attempts at the deadline,
        # the bombs were answered 200 and read no further than 4 KiB.
        await _all_done(client, drips + bombs)
        await asyncio.sleep(4)
        drip_log = (await client.get(f"/api/v1/jobs/{drips[0]}/webhooks")).json()["data"]
        first = drip_log[0]
        assert first["attempts"] >= 1 and first["status"] in ("pending", "failed"), first
        assert "timed out after 2s" in first["last_error"], first
        bomb_log = (await client.get(f"/api/v1/jobs/{bombs[0]}/webhooks")).json()["data"]
        assert {d["status"] for d in bomb_log} == {"delivered"}, bomb_log
        grown = psutil.Process(stack.worker.popen.pid).memory_info().rss - worker_rss
        print(f"50 ordinary jobs: {alone:.1f}s alone, {beside:.1f}s beside 100 hostile "
              f"webhooks; worker memory grew {grown / 2**20:.0f} MiB")
        assert grown < 200 * 2**20, f"worker grew by {grown / 2**20:.0f} MiB"


async def test_an_in_flight_delivery_is_not_sent_again(database: str) -> None:
    """The sweeper re-sends deliveries whose message was lost, never one being attempted."""
    job = await new_job("an in-flight delivery")
    settings = get_settings()
    now = datetime.now(UTC)
    old = now - timedelta(hours=1)
    lost = await WebhookDelivery.create(id=uuid.uuid4(), job=job, event="start",
                                        url="https://example.com/a", payload={},
                                        next_attempt_at=old)
    in_flight = await WebhookDelivery.create(id=uuid.uuid4(), job=job, event="start",
                                             url="https://example.com/b", payload={}, attempts=1,
                                             next_attempt_at=now + timedelta(seconds=10))
    await WebhookDelivery.filter(id__in=[lost.id, in_flight.id]).update(created_at=old)
    found = set(await stranded_deliveries(settings))
    assert str(lost.id) in found and str(in_flight.id) not in found
    assert (await WebhookDelivery.get(id=in_flight.id)).status is DeliveryStatus.PENDING
