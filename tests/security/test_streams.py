"""Reading cannot exhaust the service: live event streams are capped per key (429, across API
processes) and per process (503, the size of its Redis pool for them), a revoked key's streams
close, and reads are rate-limited per key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.conftest import REDIS, start_api
from tests.keys.test_keys import mediagen_cli
from tests.stack import new_key

BODY = {"prompt": "a watched pot", "parameters": {"width": 64, "height": 64}}
IDLE = REDIS.fresh()  # no worker: the jobs stay pending, streams open


@pytest.fixture(scope="module")
def capped(database: str) -> Iterator[str]:
    proc, url = start_api("api-streams", {"REDIS_URL": IDLE, "MAX_STREAMS_PER_KEY": "3",
                                          "MAX_STREAMS": "5", "RATE_LIMIT_READS_PER_MINUTE": "0"})
    yield url
    proc.stop()


async def _open(client: httpx.AsyncClient, job_id: str) -> AsyncIterator[httpx.Response]:
    async with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
        yield response


async def test_streams_are_capped_per_key_and_per_process(capped: str) -> None:
    keys = [await new_key(f"streams-{n}") for n in range(2)]
    clients = [httpx.AsyncClient(base_url=capped, timeout=30,
                                 headers={"Authorization": f"Bearer {k}"}) for k in keys]
    held: list[httpx.Response] = []
    try:
        jobs = [(await c.post("/api/v1/generate", json=BODY)).json()["job_id"] for c in clients]

        async def stream(n: int) -> httpx.Response:
            request = clients[n].build_request("GET", f"/api/v1/jobs/{jobs[n]}/events")
            response = await clients[n].send(request, stream=True)
            if response.status_code == 200:
                held.append(response)
            return response

        assert [(await stream(0)).status_code for _ in range(3)] == [200, 200, 200]
        refused = await stream(0)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "5"
        await refused.aread()
        assert "3 event streams" in refused.json()["detail"]
        # The other key has its own three, but the process holds five at most.
        assert [(await stream(1)).status_code for _ in range(2)] == [200, 200]
        full = await stream(1)
        assert full.status_code == 503 and full.headers["retry-after"] == "5"
        await full.aclose()
        # A stream that ends frees its place.
        await held.pop(0).aclose()
        await asyncio.sleep(0.5)
        assert (await stream(0)).status_code == 200
    finally:
        for response in held:
            await response.aclose()
        for client in clients:
            await client.aclose()


async def test_a_revoked_key_loses_its_open_stream(capped: str) -> None:
    key = await new_key("revoked-while-watching")
    async with httpx.AsyncClient(base_url=capped, timeout=60,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        job_id = (await client.post("/api/v1/generate", json=BODY)).json()["job_id"]
        async with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith("id:")  # the snapshot arrived
            mediagen_cli("keys", "revoke", key[:11])
            revoked = time.monotonic()
            async with asyncio.timeout(20):
                async for _ in lines:  # pings and nothing else, until the server closes it
                    pass
            assert time.monotonic() - revoked < 15


async def test_reads_are_rate_limited_per_key(database: str) -> None:
    proc, url = start_api("api-reads", {"RATE_LIMIT_READS_PER_MINUTE": "5"})
    key = await new_key("reader")
    try:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) \
                as client:
            job_id = (await client.post("/api/v1/generate", json=BODY)).json()["job_id"]
            codes = [(await client.get(f"/api/v1/status/{job_id}")).status_code
                     for _ in range(5)]
            limited = await client.get(f"/api/v1/jobs/{job_id}")
    finally:
        proc.stop()
    assert codes == [200] * 5
    assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 60
    assert "reads per minute" in limited.json()["detail"]
