"""Retention on the real stack: outputs kept until their job's `expires_at`, then deleted from
storage (local and S3 on moto's server) with the job `expired` and its URLs answering 410; and
the pruning of old rows, a batch per statement, recent ones kept."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from botocore.exceptions import ClientError

from mediagen.config import Settings, get_settings
from mediagen.db import pool
from mediagen.jobs import retention
from mediagen.jobs.models import Job
from mediagen.jobs.repository import now
from mediagen.jobs.states import JobStatus
from mediagen.storage.local import LocalStorage
from mediagen.storage.s3 import S3Storage
from tests.conftest import REDIS, REDIS_URL, TEST_ENV
from tests.s3_fixtures import BUCKET, CREDENTIALS, moto_endpoint, raw_s3
from tests.stack import InProcess, in_process
from tests.support import new_job, wait_terminal

__all__ = ["moto_endpoint", "raw_s3"]  # fixtures, served to this module

MEDIA = Path(TEST_ENV["LOCAL_STORAGE_PATH"])
S3_REDIS = REDIS.fresh()


async def _submit(client: httpx.AsyncClient, **extra: Any) -> str:
    response = await client.post(
        "/api/v1/generate",
        json={"prompt": "a lighthouse", "parameters": {"width": 64, "height": 64}, **extra},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["job_id"])


async def _due_now(job_id: str) -> None:
    """Its retention ran out (as if its 60 s had passed)."""
    await (await pool()).execute(
        "UPDATE jobs SET expires_at = now() - interval '1 second' WHERE id = $1",
        uuid.UUID(job_id),
    )


async def test_completion_sets_expiry_from_retention_or_result_ttl(
    client: httpx.AsyncClient,
) -> None:
    short = await _submit(client, retention=60)
    default = await _submit(client)
    for job_id, kept in ((short, 60), (default, get_settings().result_ttl)):
        detail = await wait_terminal(client, job_id)
        assert detail["status"] == "completed", detail
        job = await Job.get(id=job_id)
        assert job.expires_at is not None and job.completed_at is not None
        kept_for = (job.expires_at - job.completed_at).total_seconds()
        assert abs(kept_for - kept) < 1, kept_for
        assert detail["expires_at"] is not None


async def test_expired_local_output_is_deleted_and_its_urls_answer_gone(
    client: httpx.AsyncClient,
) -> None:
    job_id = await _submit(client, retention=60)
    detail = await wait_terminal(client, job_id)
    assert detail["status"] == "completed", detail
    url = detail["result_url"]
    assert (await client.get(url)).status_code == 200
    stable = await client.get(f"/api/v1/jobs/{job_id}/outputs/0")
    assert stable.status_code == 307 and stable.headers["location"].startswith("/media/")
    files = list(MEDIA.glob(f"{job_id}*"))
    assert files

    # Not due yet: nothing happens to it.
    storage = LocalStorage(MEDIA)
    await retention.expire_outputs(storage, get_settings(), 1000)
    assert (await Job.get(id=job_id)).status is JobStatus.COMPLETED

    await _due_now(job_id)
    assert await retention.expire_outputs(storage, get_settings(), 1000) >= 1
    assert not any(path.exists() for path in files)
    after = (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert after["status"] == "expired"
    assert after["outputs"] == [] and after["result_url"] is None
    assert after["error"] == retention.EXPIRED_NOTE
    gone = await client.get(url)
    assert gone.status_code == 410 and gone.json()["code"] == "gone"
    stable = await client.get(f"/api/v1/jobs/{job_id}/outputs/0")
    assert stable.status_code == 410 and stable.json()["code"] == "gone"
    status = (await client.get(f"/api/v1/status/{job_id}")).json()
    assert status["status"] == "expired" and status["result_url"] is None
    live = await client.get(f"/api/v1/jobs/{job_id}/events")  # a snapshot, then the end
    assert live.status_code == 200 and '"status":"expired"' in live.text.replace(" ", "")


async def test_a_missing_output_of_a_live_job_stays_not_found(client: httpx.AsyncClient) -> None:
    job_id = await _submit(client)
    detail = await wait_terminal(client, job_id)
    assert detail["status"] == "completed", detail
    for path in MEDIA.glob(f"{job_id}*"):
        path.unlink()
    assert (await client.get(detail["result_url"])).status_code == 404
    assert (await client.get(f"/api/v1/jobs/{job_id}/outputs/1")).status_code == 404


# --- S3 -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_env(moto_endpoint: str, raw_s3: Any) -> dict[str, str]:
    return {
        "STORAGE_TYPE": "s3",
        "S3_ENDPOINT_URL": moto_endpoint,
        "S3_BUCKET_NAME": BUCKET,
        "S3_KEY_PREFIX": f"ret-{uuid.uuid4().hex[:6]}",
        "S3_PRESIGN_EXPIRY": "600",
        "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
        "REDIS_URL": S3_REDIS,
    }


@pytest.fixture(scope="module")
async def s3_api(database: str, s3_env: dict[str, str]) -> AsyncIterator[InProcess]:
    """The application and its worker in-process, storing on S3."""
    async with in_process(s3_env, worker=True) as stack:
        yield stack


@pytest.fixture
async def s3_storage(s3_env: dict[str, str]) -> AsyncIterator[S3Storage]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        storage_type="s3",
        s3_bucket_name=BUCKET,
        s3_endpoint_url=s3_env["S3_ENDPOINT_URL"],
        s3_key_prefix=s3_env["S3_KEY_PREFIX"],
        media_base_url="",
        **CREDENTIALS,
    )
    storage = S3Storage.from_settings(settings)
    yield storage
    await storage.close()


async def test_expired_s3_output_is_deleted_and_its_api_url_answers_gone(
    s3_api: InProcess, raw_s3: Any, s3_env: dict[str, str], s3_storage: S3Storage
) -> None:
    async with s3_api.client() as client, httpx.AsyncClient(timeout=30) as s3:
        big = {"width": 512, "height": 512}  # big enough for a thumbnail
        job_id = await _submit(client, retention=60, parameters=big)
        detail = await wait_terminal(client, job_id)
        assert detail["status"] == "completed", detail
        key = f"{s3_env['S3_KEY_PREFIX']}/jobs/{job_id}/0.png"
        await raw_s3.head_object(Bucket=BUCKET, Key=key)
        thumbnail = f"{s3_env['S3_KEY_PREFIX']}/jobs/{job_id}/0.thumb.webp"
        await raw_s3.head_object(Bucket=BUCKET, Key=thumbnail)
        small = await s3.get(detail["outputs"][0]["thumbnail_url"])  # presigned, from S3
        assert small.status_code == 200 and small.content[8:12] == b"WEBP"
        stable = await client.get(f"/api/v1/jobs/{job_id}/outputs/0")
        assert stable.status_code == 307
        location = stable.headers["location"]
        assert location.startswith(s3_env["S3_ENDPOINT_URL"]) and "X-Amz-Signature=" in location
        fetched = await s3.get(location)  # from S3 itself
        assert fetched.status_code == 200 and fetched.content[:4] == b"\x89PNG"

        await _due_now(job_id)
        assert await retention.expire_outputs(s3_storage, get_settings(), 1000) >= 1
        for deleted in (key, thumbnail):
            with pytest.raises(ClientError) as missing:
                await raw_s3.head_object(Bucket=BUCKET, Key=deleted)
            assert missing.value.response["Error"]["Code"] in ("404", "NoSuchKey")
        after = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        assert after["status"] == "expired" and after["outputs"] == []
        gone = await client.get(f"/api/v1/jobs/{job_id}/outputs/0")
        assert gone.status_code == 410 and gone.json()["code"] == "gone"
        # The presigned URL handed out earlier goes to S3, which no longer has the object.
        assert (await s3.get(location)).status_code == 404


# --- pruning --------------------------------------------------------------------------------
async def _aged(table: str, ids: list[Any], column: str, days: int) -> None:
    await (await pool()).execute(
        f"UPDATE {table} SET {column} = now() - make_interval(days => $2) "
        "WHERE id = ANY($1::uuid[])",
        ids,
        days,
    )


async def test_pruning_deletes_old_rows_in_batches_and_keeps_recent_ones(
    database: str, tmp_path: Path, redis_db: redis.Redis
) -> None:
    settings = get_settings()
    record_days = settings.job_record_ttl // 86400 + 1
    storage = LocalStorage(tmp_path)
    db = await pool()
    old = [(await new_job(status=JobStatus.FAILED)).id for _ in range(7)]
    old.append((await new_job(status=JobStatus.CANCELED)).id)
    recent = [(await new_job(status=JobStatus.FAILED)).id for _ in range(2)]
    unfinished_old = (await new_job()).id  # pending: never pruned, however old
    await _aged("jobs", old, "completed_at", record_days)
    await _aged("jobs", [unfinished_old], "created_at", record_days)
    await Job.filter(id__in=recent).update(completed_at=now())
    # An old completed job still holding its output: expired (output deleted) first.
    kept_job = await new_job(status=JobStatus.COMPLETED)
    key = f"{kept_job.id}.png"
    await storage.save(key, b"png", "image/png")
    await Job.filter(id=kept_job.id).update(
        outputs=[{"key": key, "content_type": "image/png", "size": 3}], result_key=key
    )
    await _aged("jobs", [kept_job.id], "completed_at", record_days)
    redis_db.xadd(f"mediagen:events:{old[0]}", {"event": "status", "data": b"{}"})
    # A webhook and deliveries of an old job (cascade), and deliveries of a recent one.
    await db.execute(
        "INSERT INTO job_webhooks (id, job_id, url, events, created_at) "
        "VALUES (gen_random_uuid(), $1, 'https://example.com/h', '[]'::jsonb, now())",
        old[0],
    )
    deliveries = []
    for job_id, status, days in (
        (old[0], "delivered", 0),
        (recent[0], "delivered", 30),
        (recent[0], "failed", 30),
        (recent[0], "pending", 30),
        (recent[0], "delivered", 0),
    ):
        deliveries.append(
            await db.fetchval(
                "INSERT INTO webhook_deliveries (id, job_id, event, url, payload, status, "
                "attempts, created_at) VALUES (gen_random_uuid(), $1, 'completed', "
                "'https://example.com/h', '{}'::jsonb, $2, 0, now() - make_interval(days => $3)) "
                "RETURNING id",
                job_id,
                status,
                days,
            )
        )
    records = [
        await db.fetchval(
            "INSERT INTO idempotency_keys (id, scope, key, request_hash, created_at) "
            "VALUES (gen_random_uuid(), 'anonymous', $1, 'h', now() - make_interval(hours => $2)) "
            "RETURNING id",
            f"prune-{uuid.uuid4().hex}",
            hours,
        )
        for hours in (25, 25, 25, 1)
    ]
    batches = [
        await db.fetchval(
            "INSERT INTO batches (id, size, created_at) VALUES "
            "(gen_random_uuid(), 1, now() - make_interval(hours => $1)) RETURNING id",
            hours,
        )
        for hours in (2, 0)
    ]
    with_job = await db.fetchval(
        "INSERT INTO batches (id, size, created_at) VALUES "
        "(gen_random_uuid(), 1, now() - interval '2 hours') RETURNING id"
    )
    await Job.filter(id=recent[1]).update(batch_id=with_job)

    client = aioredis.from_url(REDIS_URL)
    try:
        # One statement deletes at most a batch of rows.
        assert await retention._old_jobs(settings, 3, client) == 3
        assert await Job.filter(id__in=old).count() == 5
        pruned = await retention.prune(storage, settings, client, batch=3)
    finally:
        await client.aclose()
    assert pruned.finished
    assert pruned.counts["job records"] >= 6  # the other 5, and the expired one
    assert pruned.counts["expired jobs"] >= 1
    assert await Job.filter(id__in=old).count() == 0
    assert not await Job.exists(id=kept_job.id)
    assert not (tmp_path / key).exists()
    assert await Job.filter(id__in=[*recent, unfinished_old]).count() == 3
    assert not redis_db.exists(f"mediagen:events:{old[0]}")
    assert await db.fetchval("SELECT count(*) FROM job_webhooks WHERE job_id = $1", old[0]) == 0
    left = await db.fetch(
        "SELECT id FROM webhook_deliveries WHERE id = ANY($1::uuid[])", deliveries
    )
    assert {row["id"] for row in left} == {deliveries[3], deliveries[4]}
    left = await db.fetch("SELECT id FROM idempotency_keys WHERE id = ANY($1::uuid[])", records)
    assert {row["id"] for row in left} == {records[3]}
    left = await db.fetch("SELECT id FROM batches WHERE id = ANY($1::uuid[])", [*batches, with_job])
    assert {row["id"] for row in left} == {batches[1], with_job}


async def test_sweep_prunes_on_its_own_schedule(database: str, tmp_path: Path) -> None:
    """A round runs when none ran within PRUNE_EVERY (across workers: a Redis key), and at
    the next sweep again while a round left work behind."""
    settings = get_settings()
    client = aioredis.from_url(REDIS.fresh())
    await client.flushdb()
    storage = LocalStorage(tmp_path)
    try:
        old = (await new_job(status=JobStatus.FAILED)).id
        await _aged("jobs", [old], "completed_at", settings.job_record_ttl // 86400 + 1)
        await retention.sweep_retention(storage, settings, client)
        assert not await Job.exists(id=old)
        ttl = await client.ttl("mediagen:retention:round")
        assert 0 < ttl <= retention.PRUNE_EVERY
        again = (await new_job(status=JobStatus.FAILED)).id
        await _aged("jobs", [again], "completed_at", settings.job_record_ttl // 86400 + 1)
        await retention.sweep_retention(storage, settings, client)
        assert await Job.exists(id=again)  # not due yet
    finally:
        await client.flushdb()
        await client.aclose()
