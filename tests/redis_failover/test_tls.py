"""Redis over TLS (`rediss://`): an API and a Celery worker process run a job against a Redis
that speaks TLS only, its certificate checked against REDIS_TLS_CA_FILE; without that CA the
certificate is refused. Behind a Sentinel that speaks TLS only too, the clients and Celery's
broker connection find the primary."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import kombu
import pytest
import redis

from mediagen import redis_clients
from tests.jobs.test_events import open_events, statuses
from tests.redis_failover.servers import HOST, MASTER, TLS_SENTINEL_PORT, tls_sentinel
from tests.stack import Stack, settings_with, stop_all
from tests.support import submit, wait_for


@pytest.fixture(scope="module")
def tls_stack(database: str, tls_redis: tuple[str, Path]) -> Iterator[Stack]:
    base, ca_file = tls_redis
    stack = Stack("tls", {"REDIS_URL": f"{base}/1", "REDIS_TLS_CA_FILE": str(ca_file)}).start()
    try:
        yield stack
    finally:
        stack.stop()


async def test_api_and_worker_run_a_job_over_tls(tls_stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=tls_stack.url, timeout=30) as api:
        job_id = await submit(api, "a padlock", width=64, height=64)
        async with open_events(api, job_id, "0-0") as stream:
            events = await stream.rest()
    assert statuses(events)[-1] == "completed", events
    assert tls_stack.worker is not None
    assert "Connected to rediss://" in tls_stack.worker.log.read_text()
    with tls_stack.broker() as client:
        assert client.exists(f"mediagen:events:{job_id}")


def test_a_certificate_not_signed_by_the_ca_is_refused(tls_redis: tuple[str, Path]) -> None:
    base, _ = tls_redis
    client = redis_clients.sync_client(settings_with({"REDIS_URL": f"{base}/1"}), "test")
    try:
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            client.ping()
    finally:
        client.close()


async def test_sentinel_over_tls(tls_redis: tuple[str, Path]) -> None:
    _, ca_file = tls_redis
    procs = tls_sentinel(ca_file.parent)
    settings = settings_with({
        "REDIS_URL": f"rediss://{MASTER}/1", "REDIS_TLS_CA_FILE": str(ca_file),
        "REDIS_SENTINELS": f"{HOST}:{TLS_SENTINEL_PORT}"})
    sync = redis_clients.sync_client(settings, "test-sync")
    async_ = redis_clients.async_client(settings, "test-async")
    try:
        wait_for(lambda: _answers(sync), 10, what="the primary through the TLS Sentinel")
        assert await async_.set("async", 1)
        conf = redis_clients.celery_broker(settings)
        with kombu.Connection(conf["broker_url"], ssl=conf["broker_use_ssl"],
                              transport_options=conf["broker_transport_options"]) as broker:
            queue = broker.SimpleQueue("tls-sentinel")
            queue.put({"through": "sentinel"})
            message = queue.get(timeout=5)
            message.ack()
            queue.close()
        assert message.payload == {"through": "sentinel"}
    finally:
        sync.close()
        await async_.aclose()
        stop_all(procs)


def _answers(client: redis.Redis) -> bool:
    with contextlib.suppress(redis.ConnectionError):
        return bool(client.set("sync", 1))
    return False
