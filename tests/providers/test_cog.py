"""Jobs on self-hosted Cog models, end to end, against real Cog servers (Cog's HTTP server from
PyPI running examples/cog-model, `tests/cog_servers.py`): the API and a worker started as in
tests/conftest.py, with a models file routing `examples/fox` to the server, each stack on a
redis-server of its own.

- `main`: outputs as data: URIs in the completion webhook; a long deadline.
- `uploads`: the server started with `--upload-url` to our upload endpoint; the webhook secret
  left unset (the one kept in Postgres).
- `fragile`: a short deadline, an API we stop and a Cog server we kill.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from mediagen.catalog import Endpoint
from mediagen.config import get_settings
from mediagen.providers.cog import ids
from mediagen.providers.cog import outputs as cog_outputs
from mediagen.providers.cog import provider as cog
from mediagen.scheduling import pool_of
from mediagen.scheduling._lua import PREFIX
from mediagen.scheduling.queues import HELD
from tests.cog_servers import (  # noqa: F401 - the fixtures, for this module
    CogServer,
    cog_server,
    cog_venv,
)
from tests.conftest import TEST_ENV, redis_server, start_api, start_worker
from tests.support import Proc, free_port, wait_terminal

MODEL = "examples/fox"
SECRET = "test-cog-webhook-secret"
MAX_BYTES = 8192  # DOWNLOAD_MAX_BYTES of the stacks: a 64x64 picture fits, 1024x1024 does not
MEDIA = Path(TEST_ENV["LOCAL_STORAGE_PATH"])


@dataclass
class Stack:
    name: str
    url: str
    port: int
    env: dict[str, str]
    api: Proc
    worker: Proc
    cog: CogServer

    def stop_api(self) -> None:
        self.api.stop(signal.SIGKILL)

    def start_api(self) -> None:
        self.api, _ = start_api(f"api-{self.name}", self.env, self.port)


def _models_file(path: Path, server: CogServer, deadline: float) -> Path:
    path.write_text(
        f'[models."{MODEL}"]\nprovider = "cog"\ndeadline = {deadline}\n'
        f'[[models."{MODEL}".endpoints]]\nurl = "{server.url}"\nslots = 1\n'
    )
    return path


def _stack(name: str, tmp: Path, venv: Path, deadline: float, uploads: bool = False,
           **env: str) -> Iterator[Stack]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    token = uuid.uuid4().hex if uploads else ""
    server = CogServer(venv, tmp / f"cog-{name}.log",
                       upload_url=f"{base}/api/v1/uploads/cog/{token}/" if uploads else None)
    server.start()
    redis_port, redis_proc = redis_server()
    broker_url = f"redis://127.0.0.1:{redis_port}/0"
    broker = redis.Redis(port=redis_port)
    settings = {"MODELS_FILE": str(_models_file(tmp / f"models-{name}.toml", server, deadline)),
                "REDIS_URL": broker_url, "PUBLIC_BASE_URL": base,
                "DOWNLOAD_MAX_BYTES": str(MAX_BYTES), "COG_UPLOAD_TOKEN": token,
                "COG_WEBHOOK_SECRET": "" if uploads else SECRET, **env}
    worker = start_worker(f"worker-{name}", broker, settings)
    api, url = start_api(f"api-{name}", settings, port)
    stack = Stack(name, url, port, settings, api, worker, server)
    try:
        yield stack
    finally:
        stack.api.stop()
        worker.stop()
        server.stop()
        broker.close()
        redis_proc.terminate()
        redis_proc.wait(10)


@pytest.fixture(scope="module")
def main(database: str, cog_venv: Path, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
         ) -> Iterator[Stack]:
    yield from _stack("cog-main", tmp_path_factory.mktemp("cog-main"), cog_venv, deadline=60)


@pytest.fixture(scope="module")
def uploads(database: str, cog_venv: Path, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
            ) -> Iterator[Stack]:
    yield from _stack("cog-up", tmp_path_factory.mktemp("cog-up"), cog_venv, deadline=60,
                      uploads=True)


@pytest.fixture(scope="module")
def fragile(database: str, cog_venv: Path, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
            ) -> Iterator[Stack]:
    # A retry waits 10 s: long enough for the API to be up again before attempt 2 runs, also on
    # a loaded machine (an API start has taken 7 s with the suite's workers running beside it).
    yield from _stack("cog-fragile", tmp_path_factory.mktemp("cog-fragile"), cog_venv,
                      deadline=4, RETRY_DELAY="10", RETRY_MAX_DELAY="10")


def _inputs(prompt: str, **parameters: Any) -> dict[str, Any]:
    """What the job sends the model: the prompt and every parameter, defaults included."""
    base = {"width": 64, "height": 64, "num_inference_steps": 3, "output_format": "png",
            "num_outputs": 1}
    return {"prompt": prompt, **base, **parameters}


async def _submit(client: httpx.AsyncClient, inputs: dict[str, Any]) -> str:
    parameters = {k: v for k, v in inputs.items() if k != "prompt"}
    created = await client.post("/api/v1/generate", json={
        "prompt": inputs["prompt"], "model": MODEL, "parameters": parameters})
    assert created.status_code == 201, created.text
    return str(created.json()["job_id"])


async def _started(client: httpx.AsyncClient, job_id: str, server: CogServer) -> dict[str, Any]:
    """The job once its prediction is recorded and running on the Cog server."""
    for _ in range(400):
        job: dict[str, Any] = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        if job["prediction_id"] and server.says(_cog_id(job)):
            return job
        await asyncio.sleep(0.025)
    raise AssertionError(f"the prediction never started: {job}")


def _cog_id(job: dict[str, Any]) -> str:
    return str(job["prediction_id"]).split(".")[0]


def _decoded(outputs: Any) -> list[bytes]:
    items = outputs if isinstance(outputs, list) else [outputs]
    return [base64.b64decode(item.split(",", 1)[1]) for item in items]


async def _stored(client: httpx.AsyncClient, job: dict[str, Any]) -> list[bytes]:
    return [(await client.get(output["url"])).content for output in job["outputs"]]


def _staged_left(job_id: str) -> list[Path]:
    return list((MEDIA / "cog-staging").glob(f"mg-{uuid.UUID(job_id).hex}-*/*"))


def _webhook(client: httpx.AsyncClient, prediction: str, token: str,
             body: dict[str, Any]) -> Any:
    return client.post(f"/api/v1/webhooks/cog/{prediction}/{token}", json=body)


# --- end to end -------------------------------------------------------------------------------

async def test_a_job_through_a_cog_model_stores_exactly_what_the_model_made(main: Stack) -> None:
    inputs = _inputs("a red fox in the snow", seed=7, num_outputs=2)
    async with httpx.AsyncClient(base_url=main.url, timeout=30) as client:
        job = await wait_terminal(client, await _submit(client, inputs), 30)
        assert job["status"] == "completed", job
        assert job["provider"] == "cog" and job["model"] == MODEL
        assert job["attempts"] == 1 and job["retry_count"] == 0
        assert job["progress"] == {"current": 3, "total": 3, "percent": 100}
        assert [o["content_type"] for o in job["outputs"]] == ["image/png", "image/png"]
        stored = await _stored(client, job)
    made = _decoded(main.cog.predict(inputs)["output"])  # the same inputs, straight to Cog
    assert stored == made and stored[0] != stored[1]
    assert _staged_left(job["job_id"]) == []  # staged outputs go once stored


async def test_uploads_through_our_endpoint_are_stored_exactly(
    uploads: Stack, cog_server: CogServer  # noqa: F811
) -> None:
    """The reference is the same model on a server of its own (this one's outputs go to the
    stack's upload endpoint, which takes them only from a running job's prediction)."""
    inputs = _inputs("an uploaded lighthouse", seed=11, output_format="webp")
    async with httpx.AsyncClient(base_url=uploads.url, timeout=30) as client:
        job = await wait_terminal(client, await _submit(client, inputs), 30)
        assert job["status"] == "completed", job
        assert job["outputs"][0]["content_type"] == "image/webp"
        stored = await _stored(client, job)
    assert stored == _decoded(cog_server.predict(inputs)["output"])
    assert _staged_left(job["job_id"]) == []
    assert f"for {_cog_id(job)} stored" in uploads.api.log.read_text()  # it came by upload


async def test_an_output_over_the_download_limit_fails_the_job(main: Stack,
                                                               uploads: Stack) -> None:
    """The same DOWNLOAD_MAX_BYTES as downloads, whether the output comes inline or uploaded."""
    for stack in (main, uploads):
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
            job = await wait_terminal(
                client, await _submit(client, _inputs("a huge panorama", width=1024, height=1024)),
                30)
        assert job["status"] == "failed", json.dumps(job)
        assert job["retry_count"] == 0 and job["outputs"] == []
        assert "exceeds" in job["error"] or "413" in job["error"], job["error"]
        assert _staged_left(job["job_id"]) == []


async def test_upload_endpoint_refuses_strangers(uploads: Stack) -> None:
    token = uploads.env["COG_UPLOAD_TOKEN"]
    # The stack's key is the one kept in Postgres (its COG_WEBHOOK_SECRET is unset).
    key = await ids.webhook_key(get_settings())
    stranger = ids.cog_id(uuid.uuid4(), 1)

    def put(url_token: str, prediction: str) -> Any:
        return client.put(f"/api/v1/uploads/cog/{url_token}/x.png", content=b"\x89PNG",
                          headers={"content-type": "image/png", "x-prediction-id": prediction})

    async with httpx.AsyncClient(base_url=uploads.url, timeout=30) as client:
        wrong = await put("not-the-token", ids.given_id(key, stranger))
        bare = await put(token, stranger)  # not the id a server was given: no upload token
        no_job = await put(token, ids.given_id(key, stranger))
    assert wrong.status_code == 401
    assert bare.status_code == 401
    assert no_job.status_code == 404


# --- webhooks: tokens and replays -------------------------------------------------------------

async def test_forged_and_cross_prediction_tokens_are_refused(main: Stack) -> None:
    key = SECRET.encode()
    async with httpx.AsyncClient(base_url=main.url, timeout=30) as client:
        job_id = await _submit(client, _inputs("a slow owl", step_seconds=0.2, num_inference_steps=10))
        job = await _started(client, job_id, main.cog)
        mine = _cog_id(job)
        other = ids.cog_id(uuid.uuid4(), 1)
        forged = "A" * 43
        succeeded = {"id": mine, "status": "succeeded", "output": ["data:image/png;base64,AAAA"]}
        answers = [
            await _webhook(client, mine, forged, succeeded),  # a made-up token
            await _webhook(client, mine, ids.webhook_token(key, other), succeeded),  # another's
            await _webhook(client, other, ids.webhook_token(key, other), succeeded),  # body: mine
            await _webhook(client, mine, ids.webhook_token(b"another secret", mine), succeeded),
        ]
        assert [a.status_code for a in answers] == [401, 401, 401, 401], [a.text for a in answers]
        assert all(a.json()["code"] == "unauthorized" for a in answers)
        during = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        assert during["status"] == "processing"
        final = await wait_terminal(client, job_id, 30)
    assert final["status"] == "completed" and final["attempts"] == 1, final


async def test_replayed_webhooks_are_acknowledged_and_ignored(main: Stack) -> None:
    key = SECRET.encode()
    async with httpx.AsyncClient(base_url=main.url, timeout=30) as client:
        job = await wait_terminal(client, await _submit(client, _inputs("a replayed heron")), 30)
        assert job["status"] == "completed", job
        before = await _stored(client, job)
        prediction = _cog_id(job)
        other_png = _decoded(main.cog.predict(_inputs("something else"))["output"])[0]
        replay = {"id": prediction, "status": "succeeded",
                  "output": ["data:image/png;base64," + base64.b64encode(other_png).decode()]}
        token = ids.webhook_token(key, prediction)
        answer = await _webhook(client, prediction, token, replay)
        failed = await _webhook(client, prediction, token,
                                {"id": prediction, "status": "failed", "error": "replayed"})
        # A stale attempt of the same job (attempt 2 never ran; attempt 1 is over).
        stale = ids.cog_id(job["job_id"], 2)
        late = await _webhook(client, stale, ids.webhook_token(key, stale),
                              {**replay, "id": stale})
        after = (await client.get(f"/api/v1/jobs/{job['job_id']}")).json()
        assert [r.json()["status"] for r in (answer, failed, late)] == ["ignored"] * 3
        assert after["status"] == "completed" and after["completed_at"] == job["completed_at"]
        assert await _stored(client, after) == before
    assert _staged_left(job["job_id"]) == []


async def test_a_duplicate_completion_of_a_running_attempt_counts_once(main: Stack) -> None:
    """Cog repeats a terminal webhook it got no 2xx for (its first delivery slow to be answered):
    the two meet while the attempt runs, and the one recorded first wins.

    They are sent together: one looked at after the worker ended the attempt is answered
    `ignored` (as for any replay, tested above). On a loaded machine the second can still be
    looked at that late; that round shows nothing about two meeting, and another job is tried."""
    key = SECRET.encode()
    async with httpx.AsyncClient(base_url=main.url, timeout=30) as client:
        for _ in range(3):
            job_id = await _submit(client, _inputs("a doubled crane", step_seconds=0.3, num_inference_steps=10))
            job = await _started(client, job_id, main.cog)
            prediction = _cog_id(job)
            token = ids.webhook_token(key, prediction)
            early = {"id": prediction, "status": "failed", "error": "first answer wins"}
            answers = await asyncio.gather(*(_webhook(client, prediction, token, early) for _ in "ab"))
            final = await wait_terminal(client, job_id, 30)
            outcomes = sorted(answer.json()["status"] for answer in answers)
            if outcomes != ["dispatched", "ignored"]:
                break
    assert outcomes in (["dispatched", "duplicate"], ["duplicate", "recorded"]), outcomes
    assert final["status"] == "failed" and "first answer wins" in final["error"]
    # The attempt that met both answers is the last: the duplicate started no other. (On a
    # loaded machine an attempt before it may have timed out, so it need not be the first.)
    assert final["attempts"] == job["attempts"] >= 1


# --- busy, cancel -----------------------------------------------------------------------------

async def test_a_busy_server_is_waited_for_as_pending(main: Stack) -> None:
    """One slot, two jobs: the second waits as `pending`, first in its model's queue, sends
    nothing to the Cog server until the first is done, and then runs in one attempt."""
    started = time.monotonic()
    while main.cog.health() != "READY":  # an earlier test's prediction may still run there
        assert time.monotonic() - started < 30
        await asyncio.sleep(0.05)
    async with httpx.AsyncClient(base_url=main.url, timeout=30) as client:
        first = await _submit(client, _inputs("first in line", step_seconds=0.2, num_inference_steps=10))
        await _started(client, first, main.cog)
        second = await _submit(client, _inputs("second in line"))
        await asyncio.sleep(0.5)
        waiting = (await client.get(f"/api/v1/jobs/{second}")).json()
        assert waiting["status"] == "pending" and waiting["queue_position"] == 0, waiting
        assert not main.cog.says(ids.cog_id(second, 1))
        done = [await wait_terminal(client, job_id, 40) for job_id in (first, second)]
    assert [j["status"] for j in done] == ["completed", "completed"], done
    assert done[1]["retry_count"] == 0 and done[1]["attempts"] == 1, done[1]
    turned_away = [line for line in main.worker.log.read_text().splitlines()
                   if "no free slot" in line and (first in line or second in line)]
    assert turned_away == []  # never sent to the server while it was busy: no 409


async def test_a_409_from_the_server_of_its_slot_is_waited_out_there(main: Stack) -> None:
    """The server of a job's slot answers 409 all the same (here: a prediction sent to it
    directly, as a server finishing its last one does for a few milliseconds after its terminal
    webhook): the PUT is tried again there after short waits, and the job starts on that server
    in its first attempt, never set aside nor sent back to wait (a stall of seconds).

    The job's PUT must meet the other prediction: on a loaded machine it may come after that
    one ended; that round shows nothing, and another is tried."""
    met = False
    async with httpx.AsyncClient(base_url=main.url, timeout=30) as client:
        for round_ in range(3):
            started = time.monotonic()
            while main.cog.health() != "READY":
                assert time.monotonic() - started < 30
                await asyncio.sleep(0.05)
            foreign = f"someone-else-{uuid.uuid4().hex}"
            inputs = _inputs("not ours", num_inference_steps=1, step_seconds=0.4)
            put = await client.put(f"{main.cog.url}/predictions/{foreign}",
                                   json={"input": inputs}, headers={"Prefer": "respond-async"})
            assert put.status_code == 202, put.text
            while not main.cog.says(foreign):
                await asyncio.sleep(0.01)
            job_id = await _submit(client, _inputs(f"right after it {round_}"))
            done = await wait_terminal(client, job_id, 30)
            lines = [line for line in main.worker.log.read_text().splitlines() if job_id in line
                     or ids.cog_id(job_id, 1) in line]
            met = any("Cog server busy (409)" in line for line in lines)
            if met or any("no free slot" in line for line in lines):
                break
    assert met, lines  # the PUT met the 409 and was tried again
    assert done["status"] == "completed", done
    assert done["attempts"] == 1 and done["retry_count"] == 0, done
    assert main.cog.says(_cog_id(done))
    assert not any("no free slot" in line for line in lines), lines  # never sent back to wait


async def test_the_completion_webhook_frees_the_slot_before_the_worker_finishes(
        main: Stack) -> None:
    """The server's slot is free once it reports the prediction done: the terminal webhook
    frees it (and sends the start of the job waiting for it) while the worker has yet to store
    the outputs. Here the worker is paused: the slot is free all the same, and both jobs
    complete once it runs again."""
    started = time.monotonic()
    while main.cog.health() != "READY":
        assert time.monotonic() - started < 30
        await asyncio.sleep(0.05)
    broker = redis.Redis.from_url(main.env["REDIS_URL"])
    held = HELD + pool_of(Endpoint(main.cog.url, 1))
    async with httpx.AsyncClient(base_url=main.url, timeout=30) as client:
        first = await _submit(client, _inputs("hands over", step_seconds=0.2,
                                              num_inference_steps=3))
        await _started(client, first, main.cog)
        second = await _submit(client, _inputs("takes over"))
        for _ in range(200):
            if broker.hexists(PREFIX + "jobs", second):  # queued, waiting for the slot
                break
            await asyncio.sleep(0.01)
        assert broker.zscore(held, first) is not None  # the first holds the one slot
        os.killpg(main.worker.popen.pid, signal.SIGSTOP)
        try:
            for _ in range(400):  # until the server reported the first one done
                if broker.exists(cog.DONE + ids.cog_id(first, 1)):
                    break
                await asyncio.sleep(0.01)
            assert broker.exists(cog.DONE + ids.cog_id(first, 1))
            job = (await client.get(f"/api/v1/jobs/{first}")).json()
            assert job["status"] == "processing", job  # not finished: the worker is paused
            assert broker.zscore(held, first) is None  # ... and its slot is free
        finally:
            os.killpg(main.worker.popen.pid, signal.SIGCONT)
            broker.close()
        done = [await wait_terminal(client, job_id, 30) for job_id in (first, second)]
    assert [j["status"] for j in done] == ["completed", "completed"], done
    assert done[1]["attempts"] == 1 and done[1]["retry_count"] == 0, done[1]


async def test_a_job_canceled_while_it_waits_gives_its_turn_to_the_next(main: Stack) -> None:
    """No sweeper runs in this stack: the queue moves on by releases alone."""
    started = time.monotonic()
    while main.cog.health() != "READY":
        assert time.monotonic() - started < 30
        await asyncio.sleep(0.05)
    async with httpx.AsyncClient(base_url=main.url, timeout=30) as client:
        first = await _submit(client, _inputs("holds the slot", step_seconds=0.2,
                                              num_inference_steps=5))
        await _started(client, first, main.cog)
        second = await _submit(client, _inputs("gives up waiting"))
        third = await _submit(client, _inputs("next in line"))
        await asyncio.sleep(0.3)
        waiting = (await client.get(f"/api/v1/jobs/{third}")).json()
        assert waiting["status"] == "pending" and waiting["queue_position"] == 1, waiting
        assert (await client.post(f"/api/v1/jobs/{second}/cancel")).status_code == 200
        done = [await wait_terminal(client, job_id, 20) for job_id in (first, third)]
    assert [j["status"] for j in done] == ["completed", "completed"], done
    assert done[1]["attempts"] == 1
    assert not main.cog.says(ids.cog_id(second, 1))


async def test_cancel_reaches_the_cog_server(main: Stack) -> None:
    async with httpx.AsyncClient(base_url=main.url, timeout=30) as client:
        job_id = await _submit(client, _inputs("a very long night", step_seconds=0.5,
                                               num_inference_steps=60))
        job = await _started(client, job_id, main.cog)
        canceled = await client.post(f"/api/v1/jobs/{job_id}/cancel")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        started = time.monotonic()
        given = ids.given_id(SECRET.encode(), _cog_id(job))  # the id the server knows it by
        while not main.cog.says(f'"Prediction cancelled","prediction_id":"{given}"'):
            assert time.monotonic() - started < 10, main.cog.tail()
            await asyncio.sleep(0.05)
        # The slot is free again long before the 30 s the prediction would have taken.
        while main.cog.health() != "READY":
            assert time.monotonic() - started < 10
            await asyncio.sleep(0.05)
        final = (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert final["status"] == "canceled"


# --- missed completions -----------------------------------------------------------------------

async def test_api_down_when_the_completion_is_sent_retries_after_the_deadline(
    fragile: Stack,
) -> None:
    """The API is down when the Cog server sends the completion: nothing records it, so after
    the model's deadline (4 s) the worker runs attempt 2, whose completion arrives (the API is
    back) and finishes the job."""
    from mediagen.jobs.models import Job

    async with httpx.AsyncClient(base_url=fragile.url, timeout=30) as client:
        job_id = await _submit(client, _inputs("a missed sunset", step_seconds=0.1,
                                               num_inference_steps=10))
        first = await _started(client, job_id, fragile.cog)
    fragile.stop_api()
    try:
        started = time.monotonic()
        while (await Job.get(id=job_id)).retry_count < 1:  # the worker needs no API
            assert time.monotonic() - started < 20, "attempt 2 never scheduled"
            await asyncio.sleep(0.1)
        row = await Job.get(id=job_id)
        assert row.attempt == 1 and "deadline" in (row.error or ""), row.error
    finally:
        fragile.start_api()
    async with httpx.AsyncClient(base_url=fragile.url, timeout=30) as client:
        final = await wait_terminal(client, job_id, 40)
    assert final["status"] == "completed", final
    assert final["attempts"] == 2 and final["retry_count"] == 1
    assert _cog_id(final) != _cog_id(first)
    assert fragile.cog.says(_cog_id(first)) and fragile.cog.says(_cog_id(final))


async def test_a_cog_server_killed_mid_prediction_is_survived(fragile: Stack) -> None:
    """kill -9 of the server (and its worker) mid-prediction, restarted at once on its port:
    the prediction is gone and will never report; after the deadline the job runs again."""
    async with httpx.AsyncClient(base_url=fragile.url, timeout=30) as client:
        job_id = await _submit(client, _inputs("a crashing wave", step_seconds=0.1,
                                               num_inference_steps=20))
        first = await _started(client, job_id, fragile.cog)
        fragile.cog.kill()
        fragile.cog.start()
        final = await wait_terminal(client, job_id, 40)
    assert final["status"] == "completed", final
    assert final["attempts"] == 2 and final["retry_count"] == 1
    assert _cog_id(final) != _cog_id(first)


# --- pieces ---------------------------------------------------------------------------------

def test_handles_and_tokens() -> None:
    job_id = uuid.uuid4()
    prediction = ids.cog_id(job_id, 3)
    assert prediction == f"mg-{job_id.hex}-3"
    assert ids.parse_cog_id(prediction) == (job_id, 3)
    assert ids.parse_cog_id(prediction + "x") is None and ids.parse_cog_id("mg-1-1") is None
    handle = ids.Handle(prediction, ids.endpoint_key("http://gpu-1:5000"), 1795990000123)
    assert ids.Handle.parse(str(handle)) == handle and len(str(handle)) < 200
    key = b"k"
    token = ids.webhook_token(key, prediction)
    assert ids.token_matches(key, prediction, token)
    assert not ids.token_matches(key, ids.cog_id(job_id, 4), token)
    assert not ids.token_matches(b"other", prediction, token)
    assert not ids.token_matches(key, prediction, "é" * 43)  # never raises


async def test_data_uris_are_checked_before_decoding() -> None:
    from mediagen.errors import PermanentProviderError

    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    uri = cog_outputs.DataUri.parse("data:image/png;base64," + base64.b64encode(png).decode(), 4096)
    assert (uri.content_type, uri.ext, uri.size) == ("image/png", "png", len(png))
    assert b"".join([chunk async for chunk in uri.chunks()]) == png
    for bad, why in (("data:image/png;base64," + "A" * 8000, "exceeds 4096"),
                     ("data:text/html;base64,PGgxPg==", "unsupported content type"),
                     ("data:image/png,%89PNG", "not base64"),
                     ("data:image/png;base64,AAA", "not valid base64")):
        with pytest.raises(PermanentProviderError, match=why):
            cog_outputs.DataUri.parse(bad, 4096)
    assert cog_outputs.file_outputs({"a": ["data:x", "text", 3], "b": "https://h/x.png"}) == [
        "data:x", "https://h/x.png"]
    assert json.loads(json.dumps(cog.WEBHOOK_EVENTS)) == ["start", "output", "logs", "completed"]
