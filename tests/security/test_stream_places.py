"""Nobody takes another's places for live streams: `Prefer: wait` is counted per key on Redis
connections of its own (a key's waits cannot exhaust the event streams' pool; past its places a
create is answered without waiting), a prediction's signed stream URL is counted against that
prediction (whoever holds the URL cannot spend its owner's places), and Redis failing under
these endpoints is 503 with Retry-After, never 500."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from tests.stack import Redis, Stacks, app, new_key, revoke_key
from tests.support import free_port

BODY = {"prompt": "a watched pot", "parameters": {"width": 64, "height": 64}}
INPUT = {"prompt": "a watched pot", "width": 64, "height": 64}
CREATE = "/v1/models/mediagen/builtin/predictions"
WAITS_PER_KEY = 4


@dataclass
class Apis:
    waits: str  # MAX_STREAMS=5: a pool of 15 connections for streams
    signed: str
    keys: list[str]


@pytest.fixture(scope="module")
async def apis(stacks: Stacks, redis_dbs: Redis) -> AsyncIterator[Apis]:
    # No worker: the jobs stay pending, so waits last and streams stay open.
    common = {"RATE_LIMIT_READS_PER_MINUTE": "0", "MAX_STREAMS_PER_KEY": "3"}
    waits, signed = stacks.many(
        ({**common, "REDIS_URL": redis_dbs.fresh(), "MAX_STREAMS": "5",
          "MAX_WAITS_PER_KEY": str(WAITS_PER_KEY)}, True, False, "security-waits"),
        ({**common, "REDIS_URL": redis_dbs.fresh(), "MAX_STREAMS": "30"}, True, False,
         "security-signed"))
    keys = [await new_key(f"stream-places-{n}") for n in range(3)]
    yield Apis(waits.url, signed.url, keys)
    for secret in keys:  # other tests run in modes where any active key requires one
        await revoke_key(secret[:11])


def _as(url: str, secret: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=60,
                             headers={"Authorization": f"Bearer {secret}"})


async def test_waits_cannot_take_the_event_streams_connections(apis: Apis) -> None:
    async with _as(apis.waits, apis.keys[0]) as a, _as(apis.waits, apis.keys[1]) as b:
        job_b = (await b.post("/api/v1/generate", json=BODY)).json()["job_id"]
        waits = [asyncio.create_task(a.post(CREATE, json={"input": INPUT},
                                            headers={"Prefer": "wait=10"}))
                 for _ in range(30)]
        await asyncio.sleep(3)  # key A's waits are blocked now
        codes = []
        for _ in range(5):
            async with b.stream("GET", f"/api/v1/jobs/{job_b}/events") as response:
                codes.append(response.status_code)
                if response.status_code != 200:
                    await response.aread()
            await asyncio.sleep(0.3)  # its place is freed
        answers = await asyncio.gather(*waits)
    assert codes == [200] * 5
    assert [r.status_code for r in answers] == [201] * 30, [r.text for r in answers]
    waited = [r for r in answers if "preference-applied" in r.headers]
    assert len(waited) == WAITS_PER_KEY  # the others were answered at once
    assert {r.json()["status"] for r in answers} == {"starting"}  # the clients poll it


async def test_a_signed_stream_url_spends_the_predictions_places(apis: Apis) -> None:
    held: list[httpx.Response] = []
    async with _as(apis.signed, apis.keys[2]) as owner, \
            httpx.AsyncClient(timeout=60) as anyone:
        try:
            first, second = [(await owner.post(CREATE, json={"input": INPUT})).json()
                             for _ in range(2)]

            async def open_stream(client: httpx.AsyncClient, url: str) -> int:
                response = await client.send(client.build_request("GET", url), stream=True)
                if response.status_code == 200:
                    held.append(response)
                else:
                    await response.aread()
                    await response.aclose()
                return response.status_code

            codes = [await open_stream(anyone, first["urls"]["stream"]) for _ in range(20)]
            opened = codes.count(200)
            # The owner's own places are untouched, for this prediction and any other.
            assert await open_stream(owner, f"/api/v1/jobs/{first['id']}/events") == 200
            assert await open_stream(owner, f"/v1/predictions/{second['id']}/stream") == 200
            # The signed URL has places of its own, which replaying it uses up.
            assert 0 < opened < 20 and codes == [200] * opened + [429] * (20 - opened)
            assert await open_stream(anyone, second["urls"]["stream"]) == 200
        finally:
            for response in held:
                await response.aclose()


async def test_redis_failing_is_503_not_500(client: httpx.AsyncClient) -> None:
    job_id = (await client.post("/api/v1/generate", json=BODY)).json()["job_id"]
    async with app({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}) as down:
        events = await down.get(f"/api/v1/jobs/{job_id}/events")
        assert events.status_code == 503, events.text
        assert events.headers["retry-after"] == "5"
        assert events.json()["code"] == "redis_unavailable"
        stream = await down.get(f"/v1/predictions/{job_id}/stream")
        assert stream.status_code == 503, stream.text
        assert stream.headers["content-type"] == "application/problem+json"
        assert stream.headers["retry-after"] == "5"
        # A create that asks to wait is made, and answered without waiting.
        created = await down.post(CREATE, json={"input": INPUT}, headers={"Prefer": "wait=5"})
        assert created.status_code == 201, created.text
        assert "preference-applied" not in created.headers
