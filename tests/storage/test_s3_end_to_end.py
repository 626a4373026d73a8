"""A job end to end with STORAGE_TYPE=s3 against moto's S3 server: the application and a worker
of their own, in-process (on a Redis database of their own, so the session's local-storage
worker stays out); and an API process that finds no bucket."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from mediagen.providers.builtin.render import render
from tests.conftest import REDIS, start_api
from tests.stack import app
from tests.storage.conftest import BUCKET, CREDENTIALS
from tests.support import wait_terminal

S3_REDIS = REDIS.fresh()


@pytest.fixture(scope="module")
def s3_env(moto_endpoint: str, raw_s3: Any) -> dict[str, str]:
    return {
        "STORAGE_TYPE": "s3",
        "S3_ENDPOINT_URL": moto_endpoint,
        "S3_BUCKET_NAME": BUCKET,
        "S3_KEY_PREFIX": f"e2e-{uuid.uuid4().hex[:6]}",
        "S3_PRESIGN_EXPIRY": "600",
        "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
        "REDIS_URL": S3_REDIS,
    }


async def test_job_stored_on_s3_is_byte_identical(
    database: str, raw_s3: Any, s3_env: dict[str, str]
) -> None:
    """In-process: the application and its worker in the test's process, storing on S3."""
    prompt, seed = "a silver city at night", 99
    async with app(s3_env, worker=True) as client, httpx.AsyncClient(timeout=30) as s3:
        health = (await client.get("/api/v1/health")).json()
        assert health["checks"]["storage"] == {
            **health["checks"]["storage"],
            "ok": True,
            "detail": "s3",
        }
        created = await client.post(
            "/api/v1/generate",
            json={"prompt": prompt, "parameters": {"width": 256, "height": 192, "seed": seed}},
        )
        job_id = created.json()["job_id"]
        detail = await wait_terminal(client, job_id)
        assert detail["status"] == "completed", detail
        url = detail["result_url"]
        assert url.startswith(s3_env["S3_ENDPOINT_URL"]) and "X-Amz-Signature=" in url
        assert f"/{s3_env['S3_KEY_PREFIX']}/jobs/{job_id}/0.png" in url
        fetched = await s3.get(url)  # from S3 itself, not from the application
    assert fetched.status_code == 200
    assert fetched.content == render(prompt, 256, 192, seed, 50, "png")
    head = await raw_s3.head_object(
        Bucket=BUCKET, Key=f"{s3_env['S3_KEY_PREFIX']}/jobs/{job_id}/0.png"
    )
    assert head["ContentType"] == "image/png"


async def test_missing_bucket_is_a_clear_503_not_a_crash(
    database: str, s3_env: dict[str, str]
) -> None:
    proc, url = start_api("api-s3-nobucket", {**s3_env, "S3_BUCKET_NAME": "no-such-bucket"})
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            health = await client.get("/api/v1/health")
        assert health.status_code == 503
        storage = health.json()["checks"]["storage"]
        assert not storage["ok"]
        assert "S3 bucket 'no-such-bucket' does not exist" in storage["detail"]
        assert proc.popen.poll() is None  # still serving
    finally:
        proc.stop()
    assert "storage is not usable" in proc.log.read_text()
