"""Following a job's logs with the client (`wait(on_log=...)`, `logs=True`): the built-in
generator's lines, in order and once each, from the live stream and, without one, from the
polled job detail; and the client's reading of a capped log held to the server's format."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mediagen.client import AsyncClient, Client
from mediagen.client._logs import LogFollower, split_stored
from mediagen.jobs import joblogs
from tests.conftest import Stacks
from tests.stack import Stack

SMALL = {"width": 64, "height": 64}
LATENCY = 2.0  # each job renders for 2 s: its first line is logged well before the others


@pytest.fixture(scope="module")
def slow(stacks: Stacks) -> Iterator[Stack]:
    """An API and worker whose built-in jobs take LATENCY seconds (shared by settings)."""
    yield stacks.get({"BUILTIN_LATENCY": f"{LATENCY:g}"}, name="client-slow")


# -- the client's copy of the server's log format -------------------------------------------


def _lines(count: int) -> str:
    return "".join(f"line {n:04d} of the model's output\n" for n in range(count))


def test_a_capped_log_is_read_where_the_server_says_it_starts() -> None:
    full = _lines(200)
    stored = joblogs.cap(0, full, 1000)
    assert stored.startswith("[... ")  # capped: the omitted line first
    start, kept = joblogs.split(stored)
    assert split_stored(stored) == (kept, start)
    assert split_stored(full) == (full, 0) and split_stored(None) == ("", 0)
    assert split_stored(joblogs.omitted_line(7) + "x\n") == ("x\n", 7)


def test_the_follower_gives_each_byte_once_and_whole_lines() -> None:
    full = "rendering 1 png\nrendered ø output 0\n[attempt 2]\nlast, unfinished"
    data = full.encode()
    follower = LogFollower()
    got: list[str] = []
    # Overlapping reads of the same log, as the stream and the polled detail give it.
    for start, end in [(0, 10), (0, 16), (5, 30), (0, 30), (16, len(data)), (0, len(data))]:
        part = follower.feed(data[start:end].decode(errors="ignore"), start)
        if part is not None:
            got.extend(follower.lines(part[0]))
    got.extend(follower.rest())
    assert got == full.split("\n")
    assert follower.feed(full, 0) is None and follower.rest() == []
    # A gap (the server dropped bytes): the unfinished line is dropped, the new text kept.
    follower = LogFollower()
    follower.lines(follower.feed("half a li", 0)[0])  # type: ignore[index]
    part = follower.feed("ne two\nthree\n", 100)
    assert part == ("ne two\nthree\n", 100)
    assert follower.lines(part[0]) == ["ne two", "three"]


# -- against the running stack ---------------------------------------------------------------


class _Recorder:
    """What a wait delivered, and when: log lines, `logs` events, statuses."""

    def __init__(self) -> None:
        self.timeline: list[tuple[float, str, Any]] = []

    def on_log(self, line: str) -> None:
        self.timeline.append((time.monotonic(), "line", line))

    def progress(self, event: str, data: dict[str, Any]) -> None:
        value = data["status"] if event == "status" else data
        self.timeline.append((time.monotonic(), event, value))

    def of(self, kind: str) -> list[Any]:
        return [value for _, what, value in self.timeline if what == kind]

    def when(self, kind: str, match: Any) -> float:
        return next(t for t, what, value in self.timeline if what == kind and match(value))


async def _job_logs(url: str, job_id: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        detail = (await http.get(f"/api/v1/jobs/{job_id}")).json()
    assert detail["status"] == "completed", detail
    logs: str = detail["logs"]
    return logs


def _check(seen: _Recorder, logs: str, seed: int) -> None:
    """Every line of the job's log once, in order, the first while the job still rendered;
    the `logs` events contiguous pieces of it, before the final status."""
    lines = seen.of("line")
    assert lines == logs.splitlines(), seen.timeline
    assert lines[0] == f"rendering 2 png 64x64, seed {seed}, 50 steps"
    assert [line.split(" (")[0] for line in lines[1:]] == [
        "rendered output 0",
        "rendered output 1",
    ]
    pieces = seen.of("logs")
    have = ""
    for piece in pieces:
        assert piece["offset"] == len(have.encode()), pieces
        have += piece["logs"]
    assert have == logs
    first = seen.when("line", lambda line: line.startswith("rendering"))
    done = seen.when("status", lambda status: status == "completed")
    assert done - first > LATENCY / 4, seen.timeline  # followed as it grew, not read at the end
    assert seen.timeline[-1][1:] == ("status", "completed")


async def test_wait_follows_the_logs_from_the_stream(slow: Stack) -> None:
    seen = _Recorder()
    async with AsyncClient(slow.url, api_key="") as mg:
        job = await mg.generate(f"a logged fox {uuid.uuid4()}", num_outputs=2, seed=3, **SMALL)
        final = await mg.wait(job.id, seen.progress, timeout=30, on_log=seen.on_log)
    assert final.status == "completed"
    _check(seen, await _job_logs(slow.url, job.id), seed=3)


class NoEventsTransport(httpx.AsyncBaseTransport):
    """The way to the API through a proxy that serves no event streams (404): what the client
    then does is poll the job's detail."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.polls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(404, json={"detail": "Not Found", "code": "not_found"})
        self.polls += request.method == "GET"
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_wait_follows_the_logs_by_polling_without_a_stream(slow: Stack) -> None:
    seen = _Recorder()
    transport = NoEventsTransport()
    async with AsyncClient(slow.url, api_key="", transport=transport) as mg:
        job = await mg.generate(f"a polled fox {uuid.uuid4()}", num_outputs=2, seed=4, **SMALL)
        final = await mg.wait(job.id, seen.progress, timeout=30, on_log=seen.on_log)
    assert final.status == "completed"
    assert transport.polls >= 3  # the detail was read several times, its log growing
    assert len(seen.of("logs")) >= 2, seen.timeline  # so the first line was read again
    _check(seen, await _job_logs(slow.url, job.id), seed=4)


async def test_the_sync_client_follows_the_logs_of_a_bound_job(slow: Stack) -> None:
    def follow() -> tuple[list[str], str]:
        lines: list[str] = []
        with Client(slow.url, api_key="") as client:
            job = client.generate(f"a sync logged fox {uuid.uuid4()}", seed=5, **SMALL)
            assert job.wait(timeout=30, on_log=lines.append).status == "completed"
            return lines, job.id

    lines, job_id = await asyncio.to_thread(follow)
    assert lines == (await _job_logs(slow.url, job_id)).splitlines()
    assert lines[0] == "rendering 1 png 64x64, seed 5, 50 steps" and len(lines) == 2
