"""Deletion on the real stack: `DELETE /api/v1/jobs/{id}` leaves no trace of a job (storage,
row, webhook rows, event stream), also when it was processing; `mediagen keys delete` removes
one key's data and nothing of another's."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from mediagen.broker import Outbox
from mediagen.config import Settings
from mediagen.db import pool
from mediagen.files.inputs import made_id
from mediagen.jobs import deletion
from mediagen.jobs.models import Job
from mediagen.jobs.pipeline import Pipeline
from mediagen.jobs.states import JobStatus
from mediagen.keys.models import ApiKey
from mediagen.keys.service import create_key
from mediagen.providers.base import PredictionStatus
from mediagen.providers.builtin.provider import BuiltinProvider
from mediagen.storage.local import LocalStorage
from tests.conftest import REDIS, ROOT, TEST_ENV
from tests.files.images import png
from tests.stack import InProcess, in_process
from tests.support import new_job, sibling, wait_terminal

MEDIA = Path(TEST_ENV["LOCAL_STORAGE_PATH"])
SLOW_REDIS = REDIS.fresh()
QUIET = REDIS.fresh()  # no worker reads it
RED, BLUE = (230, 20, 20), (20, 20, 230)


async def _submit(
    client: httpx.AsyncClient, headers: dict[str, str] | None = None, **inputs: str
) -> str:
    response = await client.post(
        "/api/v1/generate",
        json={"prompt": "a harbour", "parameters": {"width": 64, "height": 64, **inputs}},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["job_id"])


async def _traces(job_id: str, redis_db: redis.Redis) -> dict[str, Any]:
    """Everything a job may leave behind."""
    db = await pool()
    uid = uuid.UUID(job_id)
    return {
        "files": sorted(p.name for p in MEDIA.glob(f"{job_id}*")),
        "row": await db.fetchval("SELECT count(*) FROM jobs WHERE id = $1", uid),
        "webhook": await db.fetchval("SELECT count(*) FROM job_webhooks WHERE job_id = $1", uid),
        "deliveries": await db.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE job_id = $1", uid
        ),
        "stream": redis_db.exists(f"mediagen:events:{job_id}"),
        "queued": bool(redis_db.hexists("mediagen:sched:jobs", job_id)),
    }


NONE_LEFT = {"files": [], "row": 0, "webhook": 0, "deliveries": 0, "stream": 0, "queued": False}


async def _hook(job_id: str) -> None:
    """A webhook and a delivery, as a job submitted with a webhook has them."""
    db = await pool()
    await db.execute(
        "INSERT INTO job_webhooks (id, job_id, url, events, created_at) VALUES "
        "(gen_random_uuid(), $1, 'https://example.com/h', '[\"completed\"]'::jsonb, now())",
        uuid.UUID(job_id),
    )
    await db.execute(
        "INSERT INTO webhook_deliveries (id, job_id, event, url, payload, status, attempts, "
        "created_at) VALUES (gen_random_uuid(), $1, 'completed', 'https://example.com/h', "
        "'{}'::jsonb, 'delivered', 1, now())",
        uuid.UUID(job_id),
    )


async def _input_file(owner: uuid.UUID | None) -> uuid.UUID:
    """An uploaded input file of `owner`'s: its object in storage and its row."""
    file_id = uuid.uuid4()
    (MEDIA / "files").mkdir(parents=True, exist_ok=True)
    (MEDIA / "files" / f"{file_id}.png").write_bytes(b"png")
    await (await pool()).execute(
        "INSERT INTO files (id, api_key_id, key, filename, content_type, size, created_at, "
        "expires_at) VALUES ($1, $2, $3, 'a.png', 'image/png', 3, now(), "
        "now() + interval '1 day')",
        file_id,
        owner,
        f"files/{file_id}.png",
    )
    return file_id


async def _file_left(file_id: str) -> tuple[bool, int]:
    """(its object is in storage, its rows)."""
    row = await (await pool()).fetchrow("SELECT key FROM files WHERE id = $1", uuid.UUID(file_id))
    on_disk = any(MEDIA.glob(f"files/{file_id}.*"))
    return on_disk, 0 if row is None else 1


async def test_delete_of_a_completed_job_removes_every_trace(
    client: httpx.AsyncClient, redis_db: redis.Redis
) -> None:
    """Its outputs, the input made for it from a data: URI, its rows and stream go; the file the
    caller uploaded stays, for the other jobs that name it."""
    upload = await client.post("/api/v1/files", files={"file": ("in.png", png(RED), "image/png")})
    assert upload.status_code == 201, upload.text
    uploaded = upload.json()
    inline = "data:image/png;base64," + base64.b64encode(png(BLUE)).decode()
    job_id = await _submit(client, image=uploaded["uri"], mask=inline)
    detail = await wait_terminal(client, job_id)
    assert detail["status"] == "completed", detail
    made = detail["parameters"]["mask"].removeprefix("mediagen://files/")
    assert made == str(made_id(job_id, "mask"))
    await _hook(job_id)
    before = await _traces(job_id, redis_db)
    assert before["files"] and before["row"] == 1 and before["webhook"] == 1
    assert before["deliveries"] == 1 and before["stream"] == 1
    assert await _file_left(made) == await _file_left(uploaded["id"]) == (True, 1)

    response = await client.delete(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 204, response.text
    assert await _traces(job_id, redis_db) == NONE_LEFT
    assert await _file_left(made) == (False, 0)
    assert await _file_left(uploaded["id"]) == (True, 1)
    assert (await client.get(f"/api/v1/jobs/{job_id}")).status_code == 404
    assert (await client.get(detail["result_url"])).status_code == 410
    assert (await client.delete(f"/api/v1/jobs/{job_id}")).status_code == 404
    again = await wait_terminal(client, await _submit(client, image=uploaded["uri"]))
    assert again["status"] == "completed", again


async def test_another_keys_job_is_not_found_and_untouched(
    client: httpx.AsyncClient, redis_db: redis.Redis
) -> None:
    _, alice = await create_key("alice-del")
    _, bob = await create_key("bob-del")
    job_id = await _submit(client, {"Authorization": f"Bearer {alice}"})
    as_alice = {"Authorization": f"Bearer {alice}"}
    async with sibling(client, headers=as_alice) as mine:
        assert (await wait_terminal(mine, job_id))["status"] == "completed"
    refused = await client.delete(
        f"/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {bob}"}
    )
    assert refused.status_code == 404
    assert (await client.delete(f"/api/v1/jobs/{job_id}")).status_code == 404  # anonymous
    assert (await _traces(job_id, redis_db))["row"] == 1
    assert (await client.delete(f"/api/v1/jobs/{job_id}", headers=as_alice)).status_code == 204
    assert (await _traces(job_id, redis_db))["row"] == 0


# --- a job deleted while it runs ------------------------------------------------------------
@pytest.fixture(scope="module")
async def slow_api(database: str) -> AsyncIterator[InProcess]:
    """The application and a worker of their own (in-process) whose built-in model takes 2 s
    per prediction."""
    async with in_process({"REDIS_URL": SLOW_REDIS, "BUILTIN_LATENCY": "2"}, worker=True) as app:
        yield app


async def test_delete_while_processing_leaves_no_trace_after_the_attempt(
    slow_api: InProcess,
) -> None:
    slow_redis = redis.Redis.from_url(SLOW_REDIS)
    async with slow_api.client() as client:
        job_id = await _submit(client)
        for _ in range(200):  # running: its prediction created, not finished
            job = await Job.get(id=job_id)
            if job.status is JobStatus.PROCESSING and job.prediction_id:
                break
            await asyncio.sleep(0.05)
        assert job.status is JobStatus.PROCESSING and job.prediction_id
        response = await client.delete(f"/api/v1/jobs/{job_id}")
        assert response.status_code == 204, response.text
        # The attempt's poll comes at 2 s; give it time to run and finish.
        await asyncio.sleep(4)
        assert await _traces(job_id, slow_redis) == NONE_LEFT
    slow_redis.close()


async def test_outputs_stored_by_an_attempt_whose_job_was_deleted_are_deleted(
    database: str, tmp_path: Path
) -> None:
    """The worker finishing a job deleted meanwhile: its completion finds no row, and what it
    stored goes."""
    settings = Settings(_env_file=None, builtin_latency=0.3)  # type: ignore[call-arg]
    storage = LocalStorage(tmp_path)
    outbox = Outbox(aioredis.from_url(QUIET))
    pipeline = Pipeline(settings, BuiltinProvider(0.3), storage, outbox)
    try:
        job_id = str((await new_job("a quay")).id)
        step = await pipeline.start(job_id)
        assert step is not None and step.step == "poll"
        job = await Job.get(id=job_id)
        await asyncio.sleep(0.4)
        provider = pipeline.providers.get(job.provider)
        assert job.prediction_id
        prediction = await provider.get(job.prediction_id, pipeline._request(job, 1))
        assert prediction.status is PredictionStatus.SUCCEEDED
        await deletion.delete_job(job.id, None, storage)  # canceled, then gone
        assert not await Job.exists(id=job_id)
        assert await pipeline.on_prediction(job, 1, prediction) is None  # the attempt finishes
        assert list(tmp_path.iterdir()) == []
    finally:
        await outbox.close()
        await outbox.client.aclose()


# --- a key's data ---------------------------------------------------------------------------
async def test_keys_delete_removes_one_keys_data_and_leaves_anothers(
    client: httpx.AsyncClient, redis_db: redis.Redis
) -> None:
    doomed, doomed_secret = await create_key("doomed")
    kept, kept_secret = await create_key("kept")
    jobs: dict[str, list[str]] = {}
    for name, secret in (("doomed", doomed_secret), ("kept", kept_secret)):
        auth = {"Authorization": f"Bearer {secret}"}
        jobs[name] = [
            await _submit(client, auth),
            await _submit(client, {**auth, "Idempotency-Key": f"k-{name}"}),
        ]
        async with sibling(client, headers=auth) as mine:
            for job_id in jobs[name]:
                assert (await wait_terminal(mine, job_id))["status"] == "completed"
    # One unfinished job too (no worker is told of it), and an input file each.
    jobs["doomed"].append(str((await new_job("waiting", owner=doomed.id)).id))
    db = await pool()
    files = {"doomed": await _input_file(doomed.id), "kept": await _input_file(kept.id)}

    result = subprocess.run(
        [sys.executable, "-m", "mediagen", "keys", "delete", doomed.prefix],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "3 jobs" in result.stdout and "1 files" in result.stdout, result.stdout

    for job_id in jobs["doomed"]:
        assert await _traces(job_id, redis_db) == NONE_LEFT
    assert not (MEDIA / "files" / f"{files['doomed']}.png").exists()
    assert not await ApiKey.exists(id=doomed.id)
    for table, column in (
        ("files", "api_key_id"),
        ("job_counters", "scope"),
        ("storage_counters", "scope"),
    ):
        count = await db.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", doomed.id)
        assert count == 0, table
    assert (
        await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE scope = $1", str(doomed.id))
        == 0
    )

    for job_id in jobs["kept"]:
        left = await _traces(job_id, redis_db)
        assert left["row"] == 1 and left["files"], left
    assert (MEDIA / "files" / f"{files['kept']}.png").exists()
    assert await ApiKey.exists(id=kept.id, revoked_at=None)
    assert await db.fetchval("SELECT count(*) FROM files WHERE id = $1", files["kept"]) == 1
    assert (
        await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE scope = $1", str(kept.id))
        == 1
    )
