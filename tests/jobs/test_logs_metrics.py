"""A job's logs and metrics, on the real stack: the built-in generator's own lines and render
time, the fake Replicate's logs and `metrics.predict_time` (an API and worker of their own,
JOB_LOGS_MAX_BYTES at its minimum so a long log is capped), the live `logs` events, and a
resumed stream that neither loses nor repeats text. The capping and folding rules themselves
(mediagen.jobs.joblogs) are pure: checked directly first."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import redis

from mediagen.jobs import joblogs
from mediagen.jobs.models import Job
from mediagen.providers.base import Prediction, PredictionStatus
from tests.cog_servers import cog_server, cog_venv  # noqa: F401 - the fixtures, for this module
from tests.conftest import REDIS, start_api, start_worker
from tests.fakes.replicate import FakeReplicate
from tests.jobs.test_events import Event, Stream, open_events
from tests.providers.test_cog import Stack as CogStack
from tests.providers.test_cog import _inputs as cog_inputs
from tests.providers.test_cog import _stack as cog_stack_of
from tests.providers.test_cog import _submit as cog_submit
from tests.support import free_port, submit, wait_terminal

SMALL = {"width": 64, "height": 64}
CAP = 1024  # JOB_LOGS_MAX_BYTES of the Replicate stack (its minimum)
_OMITTED = re.compile(r"\A\[\.\.\. (\d+) bytes earlier omitted\]\n")


# --- the rules ----------------------------------------------------------------------------

def _lines(count: int) -> str:
    return "".join(f"line {n:04d} of the model's output\n" for n in range(count))


def test_a_log_grows_in_pieces_that_add_up_and_is_capped_at_a_line() -> None:
    full = _lines(300)
    stored, pieces = None, []
    for end in [*range(0, len(full), 211), len(full)]:
        grown = joblogs.grow(stored, 0, full[:end], 0, CAP)
        if grown is not None:
            stored = grown.stored
            pieces.append((grown.offset, grown.new))
    assert joblogs.grow(stored, 0, full, 0, CAP) is None  # nothing new: nothing to write
    have = ""
    for offset, text in pieces:
        assert offset == len(have.encode())
        have += text
    assert have == full
    assert stored is not None and len(stored.encode()) <= CAP
    match = _OMITTED.match(stored)
    assert match is not None
    kept = stored[match.end():]
    assert full.endswith(kept) and kept.startswith("line ")
    assert int(match.group(1)) == len(full) - len(kept)
    assert joblogs.split(stored) == (len(full) - len(kept), kept)


def test_a_new_prediction_continues_the_log_after_a_separator() -> None:
    opened, base = joblogs.started("first try\n", 2, CAP)
    assert opened is not None
    assert (opened.new, opened.offset, base) == ("[attempt 2]\n", 10, 22)
    grown = joblogs.grow(opened.stored, base, "second try\n", 0, CAP)
    assert grown is not None
    assert grown.stored == "first try\n[attempt 2]\nsecond try\n"
    assert (grown.new, grown.offset) == ("second try\n", 22)
    assert joblogs.started(None, 2, CAP) == (None, 0)


def test_a_provider_that_kept_only_the_tail_leaves_a_gap_said_as_omitted() -> None:
    grown = joblogs.grow("early\n", 0, "late\n", 100, CAP)
    assert grown is not None
    assert (grown.offset, grown.new) == (100, "late\n")
    assert grown.stored == "[... 100 bytes earlier omitted]\nlate\n"


def test_a_reader_gets_only_what_it_does_not_have() -> None:
    assert joblogs.unsent(None, "abc", 5) == ("abc", 5)
    assert joblogs.unsent(8, "abc", 5) is None
    assert joblogs.unsent(6, "abc", 5) == ("bc", 6)
    assert joblogs.unsent(6, "xyz", 9) == ("xyz", 9)  # a gap stays visible


async def test_a_step_folds_what_it_saw_into_its_write(database: str) -> None:
    job = Job(id=uuid.uuid4(), prompt="p", provider="replicate", prediction_id="p1",
              logs="loading\n")
    fields, grown = joblogs.fold(job, Prediction("p1", PredictionStatus.PROCESSING,
                                                 logs="loading\nstep\x001\n"), 1, CAP)
    assert fields == {"logs": "loading\nstep\ufffd1\n"}  # no NUL reaches a text column
    assert grown is not None and (grown.new, grown.offset) == ("step\ufffd1\n", 8)
    assert joblogs.fold(job, Prediction("p1", PredictionStatus.PROCESSING, logs="loading\n"),
                        1, CAP) == ({}, None)  # nothing new: nothing written
    # A new prediction (a retry's): its log follows, from a base the write records.
    fields, grown = joblogs.fold(job, Prediction("p2", PredictionStatus.STARTING), 2, CAP)
    assert fields == {"logs": "loading\n[attempt 2]\n", "logs_base": 20}
    assert grown is not None and (grown.new, grown.offset) == ("[attempt 2]\n", 8)


# --- the built-in generator ---------------------------------------------------------------

def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _seconds(later: str, earlier: str) -> float:
    return (_time(later) - _time(earlier)).total_seconds()


async def test_a_builtin_job_logs_its_lines_and_what_it_cost(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, f"two small moons {uuid.uuid4()}", num_outputs=2, seed=7,
                          num_inference_steps=12, **SMALL)
    job = await wait_terminal(client, job_id)
    assert job["status"] == "completed", job
    sizes = [output["size"] for output in job["outputs"]]
    lines = job["logs"].splitlines()
    assert lines[0] == "rendering 2 png 64x64, seed 7, 12 steps"
    assert len(lines) == 3 and job["logs"].endswith("\n")
    for index, (line, size) in enumerate(zip(lines[1:], sizes, strict=True)):
        assert re.fullmatch(rf"rendered output {index} \(image/png, {size} bytes\) in \d+ ms",
                            line), line
    metrics = job["metrics"]
    assert metrics["bytes_stored"] == sum(sizes) > 0
    assert metrics["predict_time"] > 0
    queued = _seconds(job["started_at"], job["created_at"])
    ran = _seconds(job["completed_at"], job["started_at"])
    assert abs(metrics["queue_seconds"] - queued) < 0.001
    assert abs(metrics["run_seconds"] - ran) < 0.001
    assert metrics["predict_time"] <= metrics["run_seconds"]


async def test_a_failed_job_shows_what_its_timestamps_tell(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, f"[fault:permanent] a refusal {uuid.uuid4()}", **SMALL)
    job = await wait_terminal(client, job_id)
    assert job["status"] == "failed", job
    assert job["logs"] is None
    assert job["metrics"] == {
        "queue_seconds": round(_seconds(job["started_at"], job["created_at"]), 3),
        "run_seconds": round(_seconds(job["completed_at"], job["started_at"]), 3),
        "predict_time": None,
        "bytes_stored": None,
    }


# --- Replicate, through the fake ----------------------------------------------------------

@dataclass
class Stack:
    url: str
    fake: FakeReplicate


@pytest.fixture(scope="module")
def replicate(database: str) -> Iterator[Stack]:
    broker_url = REDIS.fresh()
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    with FakeReplicate(latency=0.6) as fake:
        settings = {"REPLICATE_API_TOKEN": fake.config.token, "REPLICATE_BASE_URL": fake.url,
                    "DOWNLOAD_ALLOW_PRIVATE": "true", "REDIS_URL": broker_url,
                    "POLL_INTERVAL": "0.2", "REPLICATE_TIMEOUT": "3",
                    "JOB_LOGS_MAX_BYTES": str(CAP)}
        worker = start_worker("worker-joblogs", broker, settings)
        api, url = start_api("api-joblogs", settings, free_port())
        try:
            yield Stack(url, fake)
        finally:
            api.stop()
            worker.stop()
            broker.flushdb()
            broker.close()


async def _upstream(stack: Stack, prediction_id: str) -> dict:
    """The prediction as the (fake) Replicate API itself returns it."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{stack.fake.url}/predictions/{prediction_id}",
                                  headers={"Authorization": f"Bearer {stack.fake.config.token}"})
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_replicate_job_keeps_its_logs_and_predict_time(replicate: Stack) -> None:
    async with httpx.AsyncClient(base_url=replicate.url, timeout=30) as client:
        job = await wait_terminal(client, await submit(client, f"a lighthouse {uuid.uuid4()}"))
    assert job["status"] == "completed", job
    upstream = await _upstream(replicate, job["prediction_id"])
    assert upstream["logs"].count("\n") > 5
    assert job["logs"] == upstream["logs"]
    assert job["metrics"]["predict_time"] == upstream["metrics"]["predict_time"] > 0
    assert job["metrics"]["bytes_stored"] == sum(o["size"] for o in job["outputs"]) > 0
    assert job["metrics"]["run_seconds"] >= job["metrics"]["predict_time"] * 0.5


async def test_a_failed_prediction_keeps_its_logs_and_predict_time(replicate: Stack) -> None:
    async with httpx.AsyncClient(base_url=replicate.url, timeout=30) as client:
        job_id = await submit(client, f"[fake:failed] a broken kiln {uuid.uuid4()}")
        job = await wait_terminal(client, job_id)
    assert job["status"] == "failed", job
    upstream = await _upstream(replicate, job["prediction_id"])
    assert upstream["status"] == "failed" and upstream["logs"]
    assert job["logs"] == upstream["logs"]
    metrics = job["metrics"]
    assert metrics["predict_time"] == upstream["metrics"]["predict_time"] > 0
    assert metrics["bytes_stored"] is None
    assert abs(metrics["queue_seconds"] - _seconds(job["started_at"], job["created_at"])) < 0.001
    assert abs(metrics["run_seconds"] - _seconds(job["completed_at"], job["started_at"])) < 0.001


async def test_a_long_log_keeps_its_newest_lines(replicate: Stack) -> None:
    async with httpx.AsyncClient(base_url=replicate.url, timeout=30) as client:
        job_id = await submit(client, f"[fake:loglines=120] a chatty model {uuid.uuid4()}")
        job = await wait_terminal(client, job_id)
    assert job["status"] == "completed", job
    full = (await _upstream(replicate, job["prediction_id"]))["logs"]
    assert len(full.encode()) > 4 * CAP
    stored = job["logs"]
    assert len(stored.encode()) <= CAP
    match = _OMITTED.match(stored)
    assert match is not None, stored[:100]
    kept = stored[match.end():]
    assert full.endswith(kept) and full[-len(kept) - 1] == "\n"  # cut at a line boundary
    assert int(match.group(1)) == len(full.encode()) - len(kept.encode())
    assert kept.endswith("| 20/20 [00:00<00:00, 33.33it/s]\n")  # the newest line is kept
    assert len(kept.encode()) > CAP // 2


def _apply(have: str, event: Event) -> str:
    """A client's copy of the log after a `logs` event: it must start where the copy ends."""
    assert event.data["offset"] == len(have.encode()), (event, have)
    return have + event.data["logs"]


async def _follow(stream: Stream, until_logs: int | None = None) -> list[Event]:
    seen: list[Event] = []
    while (event := await stream.next()) is not None:
        seen.append(event)
        if until_logs and sum(e.event == "logs" for e in seen) >= until_logs:
            break
    return seen


async def test_the_live_stream_sends_the_logs_as_they_grow(replicate: Stack) -> None:
    async with httpx.AsyncClient(base_url=replicate.url, timeout=30,
                                 params={"logs": "true"}) as client:
        job_id = await submit(client, f"[fake:latency=3] a slow sunrise {uuid.uuid4()}")
        async with open_events(client, job_id) as stream:
            events = await _follow(stream)
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["status"] == "completed"
    logs = [e for e in events if e.event == "logs"]
    assert len(logs) >= 4, events
    assert all(e.data["job_id"] == job_id for e in logs)
    have = ""
    for event in logs:
        have = _apply(have, event)
    assert have == job["logs"]
    # Lines arrived while it ran (before the end), and the last ones before the final status.
    kinds = [e.event for e in events]
    assert kinds[-1] == "status" and events[-1].data["status"] == "completed"
    assert kinds.index("logs") < len(kinds) - 2
    assert "20/20" not in logs[0].data["logs"]


async def test_a_resumed_stream_neither_loses_nor_repeats_text(replicate: Stack) -> None:
    async with httpx.AsyncClient(base_url=replicate.url, timeout=30,
                                 params={"logs": "true"}) as client:
        job_id = await submit(client, f"[fake:latency=3] an interrupted dusk {uuid.uuid4()}")
        async with open_events(client, job_id) as stream:
            before = await _follow(stream, until_logs=3)
        snapshot_id = before[0].id
        streamed = [e for e in before if e.event == "logs" and e.id != snapshot_id]
        assert streamed, before
        # Reconnect after the last event received, as EventSource does.
        async with open_events(client, job_id, before[-1].id) as stream:
            after = await _follow(stream)
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["status"] == "completed"
    assert [e.event for e in after].count("logs") >= 1, after
    have = ""
    for event in [*before, *after]:
        if event.event == "logs":
            have = _apply(have, event)
    assert have == job["logs"]
    # Connecting after the end: the whole log, then the final status.
    async with (
        httpx.AsyncClient(base_url=replicate.url, timeout=30, params={"logs": "true"}) as client,
        open_events(client, job_id) as stream,
    ):
        ended = await stream.rest()
    assert [e.event for e in ended] == ["logs", "status"]
    assert _apply("", ended[0]) == job["logs"]
    # Without `?logs=true` the same stream carries no logs.
    async with (
        httpx.AsyncClient(base_url=replicate.url, timeout=30) as client,
        open_events(client, job_id) as stream,
    ):
        plain = await stream.rest()
    assert plain and all(e.event == "status" for e in plain)


async def test_the_stream_schema_documents_logs_events(replicate: Stack) -> None:
    async with httpx.AsyncClient(base_url=replicate.url, timeout=30) as client:
        spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"]["/api/v1/jobs/{job_id}/events"]["get"]
    kinds = {
        one["properties"]["event"]["const"]: one["properties"]["data"]["contentSchema"]
        for one in operation["responses"]["200"]["content"]["text/event-stream"]["schema"]["oneOf"]
    }
    assert kinds["logs"]["required"] == ["job_id", "logs", "offset"]
    assert any(p["name"] == "logs" and p["in"] == "query" for p in operation["parameters"])


# --- Cog ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cog_stack(database: str, cog_venv: Path, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
              ) -> Iterator[CogStack]:
    yield from cog_stack_of("cog-logs", tmp_path_factory.mktemp("cog-logs"), cog_venv,
                            deadline=60)


async def test_a_cog_job_keeps_the_model_logs_and_predict_time(cog_stack: CogStack) -> None:
    inputs = cog_inputs("a fox that talks", seed=3, num_inference_steps=4)
    async with httpx.AsyncClient(base_url=cog_stack.url, timeout=30) as client:
        job = await wait_terminal(client, await cog_submit(client, inputs), 30)
    assert job["status"] == "completed", job
    made = cog_stack.cog.predict(inputs)  # the same inputs, straight to Cog
    assert "4/4" in made["logs"]
    logs = job["logs"]
    if job["attempts"] > 1:  # (a cold first start may cost a retry: the log holds both then)
        before, separator, logs = logs.rpartition(f"[attempt {job['attempts']}]\n")
        assert separator and before.endswith("\n"), job
    assert logs == made["logs"], job
    assert 0 < job["metrics"]["predict_time"] <= job["metrics"]["run_seconds"]
    assert job["metrics"]["bytes_stored"] == sum(o["size"] for o in job["outputs"]) > 0
