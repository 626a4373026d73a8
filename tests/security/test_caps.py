"""Caps on what one caller can make the service keep: outputs per job (whatever the provider
returns) and the bytes of input files per key (a quota, shown in `/api/v1/usage`)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from mediagen.files import service as files
from mediagen.files.models import InputFile
from mediagen.storage import create_storage
from tests.fakes.replicate import FakeReplicate
from tests.files.images import png
from tests.stack import app, create_key, settings_with
from tests.support import sibling, wait_terminal

SMALL = {"width": 64, "height": 64}


async def _job(client: httpx.AsyncClient, prompt: str, **parameters: Any) -> dict[str, Any]:
    created = await client.post("/api/v1/generate",
                                json={"prompt": prompt, "parameters": {**SMALL, **parameters}})
    assert created.status_code == 201, created.text
    return await wait_terminal(client, created.json()["job_id"], 60)


# --- outputs per job ---------------------------------------------------------------------------

async def test_a_builtin_job_past_the_outputs_cap_fails_saying_so(database: str) -> None:
    async with app({"MAX_OUTPUTS_PER_JOB": "2"}, worker=True) as client:
        job = await _job(client, "three foxes", num_outputs=3)
        assert job["status"] == "failed", job
        assert "MAX_OUTPUTS_PER_JOB" in job["error"] and job["outputs"] == [], job["error"]
        assert job["retry_count"] == 0  # the same answer every time: not retried
        fine = await _job(client, "two foxes", num_outputs=2)
        assert fine["status"] == "completed" and len(fine["outputs"]) == 2, fine


async def test_a_replicate_prediction_with_too_many_outputs_fails_the_job(database: str) -> None:
    many = ",".join(["image/png"] * 20)  # more than the default cap of 16
    with FakeReplicate(latency=0.2) as fake:
        env = {"REPLICATE_API_TOKEN": fake.config.token, "REPLICATE_BASE_URL": fake.url,
               "DOWNLOAD_ALLOW_PRIVATE": "true", "POLL_INTERVAL": "0.2"}
        async with app(env, worker=True) as client:
            job = await _job(client, f"a flood of pictures [fake:outputs={many}]")
            assert job["status"] == "failed", job
            assert "20 outputs" in job["error"] and "MAX_OUTPUTS_PER_JOB (16)" in job["error"]
            assert job["outputs"] == []


# --- the storage quota of a key ------------------------------------------------------------------

async def _upload(client: httpx.AsyncClient, data: bytes) -> httpx.Response:
    return await client.post("/api/v1/files", files={"file": ("in.png", data, "image/png")})


async def _storage(client: httpx.AsyncClient) -> dict[str, int]:
    usage = await client.get("/api/v1/usage")
    assert usage.status_code == 200, usage.text
    storage: dict[str, int] = usage.json()["storage"]
    return storage


async def test_uploads_stop_at_the_key_s_storage_quota(database: str) -> None:
    first, second = png((200, 30, 30)), png((30, 30, 200))
    quota = len(first) + len(second) // 2  # room for one, not two
    _, alice = await create_key(f"quota-{uuid.uuid4().hex[:6]}")
    _, bob = await create_key(f"quota-{uuid.uuid4().hex[:6]}")
    async with app({"STORAGE_QUOTA_BYTES": str(quota)}) as client, \
            sibling(client, headers={"Authorization": f"Bearer {alice}"}) as a, \
            sibling(client, headers={"Authorization": f"Bearer {bob}"}) as b:
        kept = await _upload(a, first)
        assert kept.status_code == 201, kept.text
        full = await _upload(a, second)
        assert full.status_code == 413, full.text
        assert full.json()["code"] == "storage_quota_exceeded"
        assert str(quota) in full.json()["detail"]
        assert await _storage(a) == {"bytes_used": len(first), "quota_bytes": quota}
        assert (await _upload(b, second)).status_code == 201  # another key's own quota
        assert await _storage(b) == {"bytes_used": len(second), "quota_bytes": quota}

        deleted = await a.delete(f"/api/v1/files/{kept.json()['id']}")
        assert deleted.status_code == 204
        assert (await _storage(a))["bytes_used"] == 0
        again = await _upload(a, second)
        assert again.status_code == 201, again.text

        # An expired file leaves the count when retention deletes it.
        await InputFile.filter(id=again.json()["id"]).update(
            expires_at=datetime.now(UTC) - timedelta(seconds=1))
        storage = create_storage(settings_with())
        try:
            assert await files.delete_expired(storage, 100) >= 1
        finally:
            await storage.close()
        assert (await _storage(a))["bytes_used"] == 0


async def test_usage_shows_no_quota_when_there_is_none(database: str) -> None:
    _, key = await create_key(f"quota-{uuid.uuid4().hex[:6]}")
    async with app({"STORAGE_QUOTA_BYTES": "0"}, headers={"Authorization": f"Bearer {key}"}) \
            as client:
        data = png((10, 200, 10))
        assert (await _upload(client, data)).status_code == 201
        assert await _storage(client) == {"bytes_used": len(data), "quota_bytes": 0}
