"""The round-trip budget of the hot paths, counted on the wire (tests/iocount.py), not timed.

The API and a worker talk to Postgres and Redis through counting proxies. After a warm-up
(connections open, statements prepared, the key cached), each request may cost at most:

- POST /generate (no Idempotency-Key, no webhook): one Postgres round trip and no Redis round
  trip before the 201; afterwards the outbox publishes the start, batched with other requests';
- GET /status and GET /jobs/{id}: one Postgres round trip, authentication included; the detail
  of a pending job adds one Redis round trip (its queue position).

And a job that the built-in generator finishes at once costs the worker two statements (claim,
completion) and one task message in all. A change that adds a round trip fails here, whatever
it does to the timings, in both serving modes (fast paths on and off).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import redis

from mediagen.scheduling._lua import ENQUEUE
from tests.conftest import POSTGRES, TEST_DB, redis_server
from tests.iocount import Proxies, RoundTripCounter
from tests.keys.test_keys import _key_id
from tests.stack import Stacks, new_key
from tests.support import new_job, wait_terminal

BODY = {"prompt": "a counted comet", "parameters": {"width": 64, "height": 64}}
ROUNDS = 5


class Stack:
    def __init__(self, url: str, pg: RoundTripCounter, redis_counter: RoundTripCounter,
                 redis_client: redis.Redis, key: str) -> None:
        self.url, self.pg, self.redis, self.server, self.key = url, pg, redis_counter, \
            redis_client, key

    async def costs(self, client: httpx.AsyncClient, method: str, path: str,
                    **kwargs: object) -> tuple[httpx.Response, dict[str, int], dict[str, int]]:
        """One request, and the round trips each named connection made for it."""
        await asyncio.sleep(0.3)  # let background batches (outbox, rate counts) go out first
        pg, rd = self.pg.snapshot(), self.redis.snapshot()
        response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
        return response, self.pg.since(pg), self.redis.since(rd)


@pytest.fixture(scope="module", params=[True, False], ids=["fast-paths", "routes"])
async def stack(request: pytest.FixtureRequest, stacks: Stacks) -> AsyncIterator[Stack]:
    """An API (fast paths on or off) and a worker, each on a counted Redis server of its own and
    the session's database, both through counting proxies."""
    port, server = redis_server()
    proxies = Proxies()
    pg = proxies.add(POSTGRES.upstream, "postgres")  # TCP, or the embedded one's unix socket
    rd = proxies.add(("127.0.0.1", port), "redis")
    env = {
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{pg.port}/{TEST_DB}",
        "REDIS_URL": f"redis://127.0.0.1:{rd.port}/0",
        "AUTH_REQUIRED": "true",
        "KEY_CACHE_SECONDS": "300",  # a lookup per KEY_CACHE_SECONDS is by design: not counted
        "FAST_PATHS": "true" if request.param else "false",
    }
    client = redis.Redis(port=port)
    try:
        with stacks.own(env, name="counted") as running:
            yield Stack(running.url, pg, rd, client, await new_key("counted"))
    finally:
        proxies.close()
        server.terminate()
        server.wait(10)


async def test_submit_costs_one_statement_and_no_redis_before_the_201(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30,
                                 headers={"Authorization": f"Bearer {stack.key}"}) as client:
        for _ in range(2):  # warm-up: the key cached, statements prepared
            assert (await client.post("/api/v1/generate", json=BODY)).status_code == 201
        for _ in range(ROUNDS):
            response, pg, rd = await stack.costs(client, "POST", "/api/v1/generate", json=BODY)
            assert response.status_code == 201, response.text
            assert pg.get("mediagen-api") == 1, pg
            assert "mediagen-api" not in rd, rd  # the request path does not touch Redis
        # What follows the 201: the start, published by the outbox in batches (at most one
        # round trip per request, fewer when requests arrive together).
        before = stack.redis.snapshot()
        answers = await asyncio.gather(*(client.post("/api/v1/generate", json=BODY)
                                         for _ in range(20)))
        assert {a.status_code for a in answers} == {201}
        await asyncio.sleep(0.5)
        assert 1 <= stack.redis.since(before).get("mediagen-outbox", 0) <= 20


async def test_reads_cost_one_statement(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30,
                                 headers={"Authorization": f"Bearer {stack.key}"}) as client:
        job_id = (await client.post("/api/v1/generate", json=BODY)).json()["job_id"]
        await wait_terminal(client, job_id)
        for path in (f"/api/v1/status/{job_id}", f"/api/v1/jobs/{job_id}"):
            await client.get(path)  # warm-up
            for _ in range(ROUNDS):
                stack.pg.trace = []
                response, pg, rd = await stack.costs(client, "GET", path)
                assert response.status_code == 200, response.text
                assert pg.get("mediagen-api") == 1, (path, pg, stack.pg.trace)
                assert "mediagen-api" not in rd, (path, rd)


async def test_a_pending_job_detail_adds_its_queue_position(stack: Stack) -> None:
    """A job waiting in the queue (indexed, not yet started): its detail reads its position."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=30,
                                 headers={"Authorization": f"Bearer {stack.key}"}) as client:
        job_id = str((await new_job(owner=await _key_id(stack.key))).id)
        stack.server.eval(ENQUEUE, 0, job_id, "1", "mediagen/builtin", "-", 1)
        try:
            await client.get(f"/api/v1/jobs/{job_id}")  # warm-up
            response, pg, rd = await stack.costs(client, "GET", f"/api/v1/jobs/{job_id}")
            assert response.json()["queue_position"] == 0
            assert pg.get("mediagen-api") == 1, pg
            assert rd.get("mediagen-api") == 1, rd
        finally:
            assert (await client.post(f"/api/v1/jobs/{job_id}/cancel")).status_code == 200


async def test_a_job_costs_the_worker_two_statements_and_one_message(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30,
                                 headers={"Authorization": f"Bearer {stack.key}"}) as client:
        job_id = (await client.post("/api/v1/generate", json=BODY)).json()["job_id"]
        await wait_terminal(client, job_id)  # warm-up
        stack.server.config_resetstat()
        pg = stack.pg.snapshot()
        for _ in range(ROUNDS):
            job_id = (await client.post("/api/v1/generate", json=BODY)).json()["job_id"]
            assert (await wait_terminal(client, job_id))["status"] == "completed"
        await asyncio.sleep(0.5)
        statements = stack.pg.since(pg).get("mediagen-worker", 0)
        assert statements <= 2 * ROUNDS, statements
        stats = stack.server.info("commandstats")
        # One task message per job (its start), and its three status events and its logs (the
        # generator's lines, published with the completion's events).
        assert stats["cmdstat_lpush"]["calls"] == ROUNDS, stats.get("cmdstat_lpush")
        assert stats["cmdstat_xadd"]["calls"] == 4 * ROUNDS, stats.get("cmdstat_xadd")
