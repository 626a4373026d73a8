"""Redis over TLS (`rediss://`): an API and a Celery worker process run a job against a Redis
that speaks TLS only, its certificate checked against REDIS_TLS_CA_FILE; without that CA the
certificate is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from mediagen import redis_clients
from tests.jobs.test_events import open_events, statuses
from tests.stack import Stack, settings_with
from tests.support import submit


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
