"""A slow receiver delays only its owner: one key (or several keys) whose webhooks go to a
receiver that never answers cannot hold the worker's delivery slots against another key's
webhook to a fast receiver, and a host that keeps timing out is left alone for a cool-down
(its deliveries wait, pending, without spending attempts).

In-process (the application and its worker on the test's loop), delivering over real HTTP:
the hostile server's `/silent` reads a request and never answers; the fast receiver answers
204 at once and notes when each webhook arrived.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.responses import Response

from tests.fakes.hostile import HostileServer
from tests.receiver import Hit, Receiver, receiving
from tests.stack import InProcess, in_process, new_key
from tests.support import wait_terminal

SMALL = {"width": 64, "height": 64}
TIMEOUT = 5.0  # WEBHOOK_TIMEOUT: an attempt to /silent takes this long
# Four delivery slots per worker; at most two for one key and two for one host.
ENV = {"WEBHOOK_ALLOW_HOSTS": "127.0.0.1", "WEBHOOK_TIMEOUT": str(TIMEOUT),
       "WEBHOOK_CONCURRENCY": "4", "WEBHOOK_CONCURRENCY_PER_KEY": "2",
       "WEBHOOK_CONCURRENCY_PER_HOST": "2", "WEBHOOK_RETRY_DELAY": "60",
       "AUTH_REQUIRED": "true"}


@pytest.fixture(scope="module")
def fast() -> Iterator[tuple[Receiver, dict[str, float]]]:
    """A receiver that answers 204 at once; when each path's first webhook arrived."""
    arrived: dict[str, float] = {}

    def answer(_: Receiver, hit: Hit) -> Response:
        arrived.setdefault(hit.path, time.monotonic())
        return Response(status_code=204)

    with receiving(answer) as rec:
        yield rec, arrived


@pytest.fixture
async def stack(database: str) -> AsyncIterator[InProcess]:
    async with in_process({**ENV, "WEBHOOK_CIRCUIT_FAILURES": "0"}, worker=True) as app:
        yield app


def _as(stack: InProcess, key: str) -> httpx.AsyncClient:
    return stack.client(headers={"Authorization": f"Bearer {key}"})


async def _submit(http: httpx.AsyncClient, webhook: str, count: int) -> list[str]:
    """`count` jobs whose `completed` webhook goes to `webhook`, once each is completed."""
    body: dict[str, Any] = {"prompt": "a carrier pigeon", "parameters": SMALL,
                            "webhook": webhook, "webhook_events_filter": ["completed"]}
    answers = await asyncio.gather(*(http.post("/api/v1/generate", json=body)
                                     for _ in range(count)))
    assert {a.status_code for a in answers} == {201}, [a.text for a in answers][:2]
    jobs = [a.json()["job_id"] for a in answers]
    for job in jobs:
        assert (await wait_terminal(http, job))["status"] == "completed"
    return jobs


async def _wait_hits(hostile: HostileServer, before: int, count: int) -> None:
    deadline = time.monotonic() + 20
    while hostile.hits["/silent"] < before + count:
        assert time.monotonic() < deadline, hostile.hits
        await asyncio.sleep(0.05)


async def _prompt_delivery(stack: InProcess, fast: tuple[Receiver, dict[str, float]]) -> float:
    """Seconds from key B's submit until its job's webhook arrived at the fast receiver."""
    rec, arrived = fast
    key_b = await new_key(f"fair-b-{uuid.uuid4().hex[:6]}")
    path = f"/b/{uuid.uuid4().hex}"
    async with _as(stack, key_b) as http:
        submitted = time.monotonic()
        await _submit(http, rec.url + path, 1)
        deadline = submitted + 4 * TIMEOUT
        while path not in arrived:
            assert time.monotonic() < deadline, "key B's webhook never arrived"
            await asyncio.sleep(0.02)
    return arrived[path] - submitted


async def test_one_keys_silent_receiver_does_not_delay_another_keys_webhook(
    stack: InProcess, hostile: HostileServer, fast: tuple[Receiver, dict[str, float]]
) -> None:
    """Key A: six jobs whose webhook never answers (more than the worker's four slots).
    Key B's webhook, sent after them, arrives at once."""
    key_a = await new_key(f"fair-a-{uuid.uuid4().hex[:6]}")
    before = hostile.hits["/silent"]
    async with _as(stack, key_a) as http:
        await _submit(http, hostile.url("/silent"), 6)
    await _wait_hits(hostile, before, 2)  # key A's attempts hold their slots now
    late = await _prompt_delivery(stack, fast)
    assert late < TIMEOUT / 3, f"key B's webhook came {late:.1f}s after its submit"


async def test_many_keys_on_one_silent_host_do_not_delay_another_host(
    stack: InProcess, hostile: HostileServer, fast: tuple[Receiver, dict[str, float]]
) -> None:
    """Three keys, two jobs each, all with webhooks to one silent host: together they could
    take every slot, but one host gets at most its share."""
    before = hostile.hits["/silent"]
    for n in range(3):
        key = await new_key(f"fair-host-{n}-{uuid.uuid4().hex[:6]}")
        async with _as(stack, key) as http:
            await _submit(http, hostile.url("/silent"), 2)
    await _wait_hits(hostile, before, 2)
    late = await _prompt_delivery(stack, fast)
    assert late < TIMEOUT / 3, f"key B's webhook came {late:.1f}s after its submit"


async def test_a_host_that_keeps_timing_out_is_left_alone_for_a_while(
    database: str, hostile: HostileServer
) -> None:
    """Two consecutive timeouts open the host's circuit: for the cool-down no attempt goes
    there, and its deliveries stay pending with no attempt spent (not failed, not dropped).
    (One attempt at a time to the host, so the two timeouts come one after the other.)"""
    env = {**ENV, "WEBHOOK_CIRCUIT_FAILURES": "2", "WEBHOOK_CIRCUIT_COOLDOWN": "60",
           "WEBHOOK_RETRY_DELAY": "1", "WEBHOOK_CONCURRENCY_PER_HOST": "1"}
    async with in_process(env, worker=True) as app:
        key = await new_key(f"circuit-{uuid.uuid4().hex[:6]}")
        before = hostile.hits["/silent"]
        async with _as(app, key) as http:
            jobs = await _submit(http, hostile.url("/silent"), 4)
            await _wait_hits(hostile, before, 2)
            # The second attempt times out too; then, for the cool-down, nothing more reaches the host
            # although four deliveries (retries after 1 s included) are due meanwhile.
            await asyncio.sleep(3 * TIMEOUT)
            assert hostile.hits["/silent"] - before == 2, hostile.hits
            logs = [(await http.get(f"/api/v1/jobs/{job}/webhooks")).json() for job in jobs]
        deliveries = [d for log in logs for d in log["data"]]
        assert len(deliveries) == 4, logs
        assert {d["status"] for d in deliveries} == {"pending"}, deliveries
        assert sum(d["attempts"] for d in deliveries) == 2, deliveries
