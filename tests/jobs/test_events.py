"""Live job events (`GET /api/v1/jobs/{job_id}/events`, Server-Sent Events) against live uvicorn
APIs and real workers: every transition in order, resuming with Last-Event-ID, ownership,
progress through the fake Replicate, and the queue position of pending jobs."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from mediagen.jobs.dispatch import Next
from mediagen.jobs.models import Job
from mediagen.jobs.states import JobStatus
from tests.conftest import REDIS, start_api, start_worker
from tests.fakes.replicate import FakeReplicate
from tests.stack import Stack, Stacks, new_key, revoke_key
from tests.support import free_port, new_job, publish, submit, unsigned, wait_terminal

SMALL = {"width": 64, "height": 64}


@dataclass
class Event:
    id: str | None
    event: str
    data: dict[str, Any]


class Stream:
    """An open event stream: `next()` parses one event, None once the server closed it."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.closed = False

    async def next(self) -> Event | None:
        fields: dict[str, str] = {}
        async for line in self._lines:
            if not line:
                if "data" in fields:
                    return Event(fields.get("id"), fields.get("event", "message"),
                                 json.loads(fields["data"]))
                fields = {}
                continue
            if line.startswith(":"):  # keep-alive comment
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        self.closed = True
        return None

    async def take(self, count: int) -> list[Event]:
        taken = []
        for _ in range(count):
            event = await self.next()
            assert event is not None, f"stream closed after {taken}"
            taken.append(event)
        return taken

    async def rest(self) -> list[Event]:
        """Every event until the server closes the stream."""
        events = []
        while (event := await self.next()) is not None:
            events.append(event)
        return events


@asynccontextmanager
async def open_events(client: httpx.AsyncClient, job_id: str, last_event_id: str | None = None,
                      timeout: float = 30) -> AsyncIterator[Stream]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    async with asyncio.timeout(timeout):
        async with client.stream("GET", f"/api/v1/jobs/{job_id}/events",
                                 headers=headers) as response:
            assert response.status_code == 200, (await response.aread()).decode()
            assert response.headers["content-type"].startswith("text/event-stream")
            yield Stream(response)


async def all_events(client: httpx.AsyncClient, job_id: str,
                     last_event_id: str | None = None) -> list[Event]:
    async with open_events(client, job_id, last_event_id) as stream:
        events = await stream.rest()
    return events


def statuses(events: list[Event]) -> list[str]:
    return [e.data["status"] for e in events if e.event == "status"]


def stream_order(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


async def pending_row(prompt: str, **fields: Any) -> str:
    """A job row that no worker has been told about (as tests/keys inserts them)."""
    return str((await new_job(prompt, parameters=dict(SMALL), **fields)).id)


QUEUE: list[str] = []  # the Redis URL of the live stack's worker (set by `client`)


@pytest.fixture
async def client(default_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """A live API and worker: an event stream needs a real socket (httpx's in-process
    transport hands over a response only once it has ended)."""
    QUEUE[:] = [default_stack.redis_url]
    async with httpx.AsyncClient(base_url=default_stack.url, timeout=30) as http:
        yield http


async def dispatch(job_id: str) -> None:
    """Tell the live stack's worker to start the job."""
    assert await publish(QUEUE[0], Next("start", job_id).task())


# --- transitions, in order ----------------------------------------------------------------

async def test_a_live_stream_shows_every_transition_then_closes(client: httpx.AsyncClient) -> None:
    job_id = await pending_row(f"a followed comet {uuid.uuid4()}")
    async with open_events(client, job_id) as stream:
        [snapshot] = await stream.take(1)
        assert snapshot.event == "status" and snapshot.id is not None
        assert snapshot.data == {"job_id": job_id, "status": "pending", "retry_count": 0,
                                 "error": None, "error_code": None, "attempts": 0,
                                 "result_url": None, "output": None}
        await dispatch(job_id)
        events = await stream.rest()
    assert stream.closed
    assert statuses(events) == ["processing", "completed"]
    assert all(e.event == "status" for e in events)
    completed = events[-1].data
    assert unsigned(completed["result_url"]) == f"/media/{job_id}.png"
    assert completed["error"] is None
    ids = [stream_order(e.id) for e in events if e.id]
    assert len(ids) == len(events) and ids == sorted(ids) and len(set(ids)) == len(ids)
    detail = (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert detail["status"] == "completed"
    assert unsigned(detail["result_url"]) == unsigned(completed["result_url"])


async def test_the_retry_path_is_streamed_in_order(client: httpx.AsyncClient) -> None:
    job_id = await pending_row(f"[fault:transient=1] a stubborn kite {uuid.uuid4()}")
    async with open_events(client, job_id) as stream:
        [snapshot] = await stream.take(1)
        assert snapshot.data["status"] == "pending"
        await dispatch(job_id)
        events = await stream.rest()
    assert statuses([snapshot, *events]) == [
        "pending", "processing", "retrying", "processing", "completed"]
    processing, retrying, again, completed = (e.data for e in events)
    assert (processing["attempts"], processing["retry_count"]) == (1, 0)
    assert retrying["retry_count"] == 1 and "injected transient fault" in retrying["error"]
    assert (again["attempts"], again["retry_count"]) == (2, 1)
    assert completed["retry_count"] == 1 and completed["result_url"]


async def test_the_whole_history_replays_from_the_start(client: httpx.AsyncClient) -> None:
    """A job created through the API publishes `pending` too; Last-Event-ID 0-0 replays all."""
    created = await client.post("/api/v1/generate", json={"prompt": "a replayed moon",
                                                          "parameters": SMALL})
    job_id = created.json()["job_id"]
    assert (await wait_terminal(client, job_id))["status"] == "completed"
    history = await all_events(client, job_id, "0-0")
    assert statuses(history) == ["pending", "processing", "completed"]

    # A client connecting after the end gets the snapshot (with the last id) and the end.
    [snapshot] = await all_events(client, job_id)
    assert snapshot.data == history[-1].data and snapshot.id == history[-1].id


async def test_cancel_is_streamed_and_ends_the_stream(client: httpx.AsyncClient) -> None:
    job_id = await pending_row(f"a canceled parade {uuid.uuid4()}")
    async with open_events(client, job_id) as stream:
        [snapshot] = await stream.take(1)
        assert snapshot.data["status"] == "pending"
        assert (await client.post(f"/api/v1/jobs/{job_id}/cancel")).status_code == 200
        events = await stream.rest()
    assert statuses(events) == ["canceled"]
    assert events[0].data["error"] == "canceled by the client"


async def test_publishing_never_fails_a_transition(database: str) -> None:
    """With Redis unreachable the event is lost (logged), the transition is not."""
    import redis.asyncio as aioredis

    from mediagen.broker import Outbox
    from mediagen.jobs import events
    from mediagen.jobs import repository as repo

    job_id = await pending_row(f"a quiet transition {uuid.uuid4()}")
    dead = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    outbox = Outbox(dead)
    try:
        moved = await repo.transition(job_id, JobStatus.CANCELED, error="by a test")
        assert moved is not None
        assert await events.announce(outbox, moved) is False
    finally:
        await outbox.close()
        await dead.aclose()
    assert (await Job.get(id=job_id)).status is JobStatus.CANCELED


# --- resuming -----------------------------------------------------------------------------

async def test_resume_with_last_event_id_sends_only_the_later_events(
    client: httpx.AsyncClient,
) -> None:
    job_id = await pending_row(f"[fault:transient=1] an interrupted tide {uuid.uuid4()}")
    async with open_events(client, job_id) as stream:
        [snapshot] = await stream.take(1)
        await dispatch(job_id)
        [first] = await stream.take(1)
    assert (snapshot.data["status"], first.data["status"]) == ("pending", "processing")
    assert first.id is not None

    later = await all_events(client, job_id, first.id)
    assert statuses(later) == ["retrying", "processing", "completed"]
    assert all(stream_order(e.id) > stream_order(first.id) for e in later if e.id)

    # Resuming the same point again replays the same events; resuming from one in the middle
    # sends only what followed it.
    assert [e.id for e in await all_events(client, job_id, first.id)] == [e.id for e in later]
    assert statuses(await all_events(client, job_id, later[0].id)) == ["processing", "completed"]

    # After the end there is nothing to resume: 204 tells EventSource to stop reconnecting.
    done = await client.get(f"/api/v1/jobs/{job_id}/events",
                            headers={"Last-Event-ID": later[-1].id})
    assert done.status_code == 204

    # An id the stream never issued gets a snapshot rather than a silent gap.
    future = f"{stream_order(later[-1].id)[0] + 10**9}-0"
    job = await pending_row(f"a far-future reader {uuid.uuid4()}")
    async with open_events(client, job, future) as stream:
        [snapshot] = await stream.take(1)
    assert snapshot.data["status"] == "pending"
    await Job.filter(id=job).delete()


async def test_unknown_ids_and_the_schema(client: httpx.AsyncClient) -> None:
    """A Last-Event-ID that is not one of ours starts afresh (a snapshot first)."""
    job_id = await pending_row(f"a stranger's bookmark {uuid.uuid4()}")
    try:
        for bad in ("yesterday", "1-2-3", "null", "-1-0", "99999999999999999999999-0"):
            async with open_events(client, job_id, bad) as stream:
                [snapshot] = await stream.take(1)
            assert snapshot.data["status"] == "pending", bad
    finally:
        await Job.filter(id=job_id).delete()
    assert (await client.get(f"/api/v1/jobs/{uuid.uuid4()}/events")).status_code == 404
    assert (await client.get("/api/v1/jobs/not-a-uuid/events")).status_code == 422
    schema = (await client.get("/openapi.json")).json()
    operation = schema["paths"]["/api/v1/jobs/{job_id}/events"]["get"]
    event = operation["responses"]["200"]["content"]["text/event-stream"]["schema"]
    kinds = [e["properties"]["event"]["const"] for e in event["oneOf"]]
    assert kinds == ["status", "progress", "logs", "output", "queue"]
    assert {"404", "422"} <= set(operation["responses"])


# --- ownership ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
async def keyed_api(default_stack: Stack, stacks: Stacks
                    ) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """An API requiring keys (on the default worker's queue), and two keys; revoked at the end,
    since other tests run where any active key would require one."""
    api = stacks.get({"AUTH_REQUIRED": "true", "REDIS_URL": default_stack.redis_url},
                     worker=False, name="events-keys")
    keys = {name: await new_key(name) for name in ("events-alice", "events-bob")}
    yield api.url, keys
    for secret in keys.values():
        await revoke_key(secret[:11])


async def test_another_key_gets_404(keyed_api: tuple[str, dict[str, str]]) -> None:
    url, keys = keyed_api

    def as_key(name: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {keys[name]}"} if name else {}
        return httpx.AsyncClient(base_url=url, headers=headers, timeout=30)

    async with as_key("events-alice") as alice, as_key("events-bob") as bob, \
            as_key(None) as anonymous:
        created = await alice.post("/api/v1/generate", json={"prompt": "alice's secret garden",
                                                             "parameters": SMALL})
        job_id = created.json()["job_id"]
        assert (await wait_terminal(alice, job_id))["status"] == "completed"
        path = f"/api/v1/jobs/{job_id}/events"
        refused = await bob.get(path)
        assert refused.status_code == 404 and refused.json()["code"] == "not_found"
        assert (await bob.get(path, headers={"Last-Event-ID": "0-0"})).status_code == 404
        assert (await anonymous.get(path)).status_code == 401
        assert statuses(await all_events(alice, job_id, "0-0")) == [
            "pending", "processing", "completed"]


# --- progress through the fake Replicate -------------------------------------------------

@pytest.fixture(scope="module")
def replicate_url(database: str) -> Iterator[str]:
    broker_url = REDIS.fresh()
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    with FakeReplicate(latency=2.0) as fake:
        settings = {"REPLICATE_API_TOKEN": fake.config.token, "REPLICATE_BASE_URL": fake.url,
                    "DOWNLOAD_ALLOW_PRIVATE": "true", "REDIS_URL": broker_url,
                    "POLL_INTERVAL": "0.3", "REPLICATE_TIMEOUT": "3"}
        worker = start_worker("worker-events", broker, settings)
        api, url = start_api("api-events", settings, free_port())
        try:
            yield url
        finally:
            api.stop()
            worker.stop()
            broker.flushdb()
            broker.close()


async def test_progress_in_the_detail_and_as_events(replicate_url: str) -> None:
    async with httpx.AsyncClient(base_url=replicate_url, timeout=30) as client:
        created = await client.post("/api/v1/generate", json={"prompt": "a slow aurora"})
        job_id = created.json()["job_id"]
        seen: list[dict[str, Any]] = []

        async def watch_detail() -> None:
            while True:
                detail = (await client.get(f"/api/v1/jobs/{job_id}")).json()
                if detail["status"] == "processing" and detail["progress"]:
                    seen.append(detail["progress"])
                if detail["status"] in ("completed", "failed"):
                    return
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch_detail())
        events = await all_events(client, job_id)
        await watcher
        detail = (await client.get(f"/api/v1/jobs/{job_id}")).json()

    assert statuses(events)[-1] == "completed", events
    progress = [e.data for e in events if e.event == "progress"]
    assert len(progress) >= 3, events
    assert all(set(p) == {"current", "total", "percent"} and p["total"] == 20 for p in progress)
    percents = [p["percent"] for p in progress]
    assert percents == sorted(percents) and len(set(percents)) == len(percents)
    assert percents[-1] == 100 and percents[0] < 100
    kinds = [e.event for e in events]
    assert kinds.index("progress") > statuses(events).index("processing")
    assert kinds[-1] == "status"
    assert seen, "JobDetail never showed progress while processing"
    assert all(p["total"] == 20 and 0 <= p["current"] <= 20 for p in seen)
    assert detail["progress"] == {"current": 20, "total": 20, "percent": 100}


# --- queue position -----------------------------------------------------------------------

async def test_queue_position_of_pending_jobs(database: str) -> None:
    """Jobs submitted to an API whose Redis no worker consumes stay pending, in order; the
    position counts the pending jobs ahead, and follows cancels, starts and the sweeper."""
    import redis.asyncio as aioredis

    from mediagen.broker import Outbox
    from mediagen.catalog import get_catalog
    from mediagen.config import get_settings
    from mediagen.jobs import repository as repo
    from mediagen.jobs.turns import Turns

    idle = REDIS.fresh()
    redis.Redis.from_url(idle).flushdb()
    proc, url = start_api("api-queue", {"REDIS_URL": idle})
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def position(job_id: str) -> int | None:
                value: int | None = (await client.get(f"/api/v1/jobs/{job_id}")).json()[
                    "queue_position"]
                return value

            ids = [await submit(client, f"queued {n}", **SMALL) for n in range(4)]
            for _ in range(50):  # each start is published right after its 201
                if await position(ids[-1]) is not None:
                    break
                await asyncio.sleep(0.05)
            assert [await position(job_id) for job_id in ids] == [0, 1, 2, 3]

            assert (await client.post(f"/api/v1/jobs/{ids[0]}/cancel")).status_code == 200
            assert await position(ids[0]) is None
            assert await position(ids[3]) == 2

            # A worker starts ids[1] and dies before announcing it: the index still holds it,
            # until the sweeper drops it.
            assert await repo.claim(ids[1], 60, 3600)
            assert await position(ids[1]) is None  # processing: no position
            assert await position(ids[3]) == 2
            outbox = Outbox(aioredis.from_url(idle))
            try:
                await Turns(get_settings(), get_catalog(), outbox).prune()
            finally:
                await outbox.close()
                await outbox.client.aclose()
            assert await position(ids[3]) == 1
            assert await position(ids[2]) == 0
    finally:
        proc.stop()


async def test_a_pending_jobs_stream_has_throttled_queue_events(database: str) -> None:
    """While a job is pending its stream says how many jobs are ahead (`queue` events): at
    once, then only when that changed (jobs ahead leave the queue), at most once a second."""
    idle = REDIS.fresh()
    redis.Redis.from_url(idle).flushdb()
    proc, url = start_api("api-queue-events", {"REDIS_URL": idle})
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            ids = [await submit(client, f"queued {n}", **SMALL) for n in range(4)]
            for _ in range(50):  # each job is indexed right after its 201
                if (await client.get(f"/api/v1/jobs/{ids[-1]}")).json()["queue_position"] == 3:
                    break
                await asyncio.sleep(0.05)
            async with open_events(client, ids[3]) as stream:
                first, queued = await stream.take(2)
                assert (first.event, first.data["status"]) == ("status", "pending")
                assert (queued.event, queued.data) == (
                    "queue", {"job_id": ids[3], "queue_position": 3, "paused": False})
                seen = [(asyncio.get_running_loop().time(), 3)]
                # Two jobs ahead leave at once, a third a moment later.
                for job_id in ids[:2]:
                    assert (await client.post(f"/api/v1/jobs/{job_id}/cancel")).status_code == 200
                while seen[-1][1] > 1:
                    event = await stream.next()
                    assert event is not None and event.event == "queue", event
                    seen.append((asyncio.get_running_loop().time(), event.data["queue_position"]))
                assert (await client.post(f"/api/v1/jobs/{ids[2]}/cancel")).status_code == 200
                event = await stream.next()
                assert event is not None and event.event == "queue", event
                seen.append((asyncio.get_running_loop().time(), event.data["queue_position"]))
                positions = [p for _, p in seen]
                assert positions[-1] == 0
                assert positions == sorted(set(positions), reverse=True), positions  # no repeat
                gaps = [b - a for (a, _), (b, _) in itertools.pairwise(seen)]
                assert min(gaps) >= 0.9, gaps
                # Once it leaves the queue, no more of them.
                assert (await client.post(f"/api/v1/jobs/{ids[3]}/cancel")).status_code == 200
                rest = await stream.rest()
                assert [e.event for e in rest] == ["status"]
                assert rest[0].data["status"] == "canceled"
    finally:
        proc.stop()
