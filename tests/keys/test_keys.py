"""API keys, ownership, listing and cancel, over HTTP against an API with AUTH_REQUIRED=auto
(the default) and the session's real worker."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from mediagen.jobs.models import Job
from mediagen.jobs.states import JobStatus
from mediagen.keys.models import ApiKey
from tests.conftest import ROOT, TEST_ENV, start_api
from tests.stack import Stack
from tests.support import free_port, new_job, wait_terminal

BODY = {"prompt": "a key-holder's kite", "parameters": {"width": 64, "height": 64}}


def mediagen_cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "mediagen", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def create_key(name: str) -> str:
    return mediagen_cli("keys", "create", name).splitlines()[1]


@pytest.fixture(scope="module")
def auto_api(database: str, default_stack: Stack) -> Iterator[str]:
    """An API whose jobs the default stack's worker runs (they share its Redis database)."""
    assert default_stack.worker is not None
    proc, url = start_api(
        "api-keys", {"AUTH_REQUIRED": "auto", "REDIS_URL": default_stack.redis_url}
    )
    yield url
    proc.stop()


@pytest.fixture(scope="module")
def keys(auto_api: str) -> dict[str, str]:
    """Two keys. (Auto mode before any key was made: tests/security/test_auth.py, on a database
    of its own.)"""
    return {"alice": create_key("alice"), "bob": create_key("bob")}


def as_key(url: str, secret: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=30)


@pytest.fixture
async def alice(auto_api: str, keys: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with as_key(auto_api, keys["alice"]) as client:
        yield client


@pytest.fixture
async def bob(auto_api: str, keys: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with as_key(auto_api, keys["bob"]) as client:
        yield client


async def test_keys_are_prefixed_and_stored_only_as_a_hash(keys: dict[str, str]) -> None:
    for secret in keys.values():
        assert secret.startswith("mg_") and len(secret) > 40
        stored = await ApiKey.get(key_hash=hashlib.sha256(secret.encode()).hexdigest())
        assert secret not in (stored.key_hash, stored.prefix, stored.name)
        assert secret.startswith(stored.prefix)
    listing = mediagen_cli("keys", "list")
    assert "alice" in listing and "bob" in listing
    assert not any(secret in listing for secret in keys.values())


async def test_once_keys_exist_a_key_is_required(auto_api: str, keys: dict[str, str]) -> None:
    async with as_key(auto_api, None) as anonymous, as_key(auto_api, "mg_wrong") as wrong:
        for client in (anonymous, wrong):
            response = await client.post("/api/v1/generate", json=BODY)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["code"] == "unauthorized"
        basic = await anonymous.get("/api/v1/jobs", headers={"Authorization": "Basic eDp5"})
        assert basic.status_code == 401


async def test_a_revoked_key_stops_working(auto_api: str, keys: dict[str, str]) -> None:
    secret = create_key("temporary")
    async with as_key(auto_api, secret) as client:
        assert (await client.post("/api/v1/generate", json=BODY)).status_code == 201
        mediagen_cli("keys", "revoke", secret[:11])
        assert (await client.post("/api/v1/generate", json=BODY)).status_code == 401


async def test_keys_cannot_see_each_others_jobs(alice: httpx.AsyncClient,
                                                bob: httpx.AsyncClient) -> None:
    created = await alice.post("/api/v1/generate", json=BODY)
    job_id = created.json()["job_id"]
    assert (await wait_terminal(alice, job_id))["status"] == "completed"
    for path in (f"/api/v1/status/{job_id}", f"/api/v1/jobs/{job_id}"):
        assert (await bob.get(path)).status_code == 404
        assert (await alice.get(path)).status_code == 200
    cancel = await bob.post(f"/api/v1/jobs/{job_id}/cancel")
    assert cancel.status_code == 404
    bobs = (await bob.get("/api/v1/jobs", params={"limit": 100})).json()["data"]
    assert job_id not in {job["job_id"] for job in bobs}
    alices = (await alice.get("/api/v1/jobs", params={"limit": 100})).json()["data"]
    assert job_id in {job["job_id"] for job in alices}


async def _key_id(secret: str) -> uuid.UUID:
    return (await ApiKey.get(key_hash=hashlib.sha256(secret.encode()).hexdigest())).id


async def test_list_filters_and_pagination_across_250_jobs(auto_api: str) -> None:
    secret = create_key("lister")
    key_id = await _key_id(secret)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    statuses = [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.PENDING, JobStatus.CANCELED]
    await Job.bulk_create([
        Job(id=uuid.uuid4(), prompt=f"job {n}", parameters={}, provider="builtin",
            model="acme/painter" if n % 5 == 0 else None, status=statuses[n % 4],
            api_key_id=key_id, created_at=base + timedelta(minutes=n // 2))  # ties on purpose
        for n in range(250)
    ])
    async with as_key(auto_api, secret) as client:
        seen: list[dict] = []
        url: str | None = "/api/v1/jobs?limit=37"
        pages = 0
        while url:
            page = (await client.get(url)).json()
            seen += page["data"]
            url = page["next"]
            pages += 1
        assert pages == 7 and len(seen) == 250
        assert len({job["job_id"] for job in seen}) == 250
        created = [job["created_at"] for job in seen]
        assert created == sorted(created, reverse=True)

        failed = (await client.get("/api/v1/jobs", params={"status": "failed", "limit": 100})).json()
        assert len(failed["data"]) == 63 and {j["status"] for j in failed["data"]} == {"failed"}
        model = await client.get("/api/v1/jobs", params={"model": "acme/painter", "limit": 100})
        assert len(model.json()["data"]) == 50
        window = await client.get("/api/v1/jobs", params={
            "created_after": (base + timedelta(minutes=9)).isoformat(),
            "created_before": (base + timedelta(minutes=20)).isoformat(), "limit": 100})
        assert len(window.json()["data"]) == 20  # minutes 10..19, two jobs each
        filtered_pages = await client.get("/api/v1/jobs", params={"status": "pending", "limit": 50})
        body = filtered_pages.json()
        assert "status=pending" in body["next"] and len(body["data"]) == 50
        rest = (await client.get(body["next"])).json()
        assert len(rest["data"]) == 12 and rest["next"] is None
        # Instants beyond the years 1..9999 once in UTC (found by the fuzzer: a 500 before).
        for edge in ({"created_after": "0001-01-01T19:21:07+22:59"},
                     {"created_before": "9999-12-31T23:00:00-05:00"}):
            response = await client.get("/api/v1/jobs", params={**edge, "limit": 1})
            assert response.status_code == 200, (edge, response.text)
        for bad in ({"limit": 0}, {"limit": 101}, {"status": "sleeping"}, {"cursor": "garbage"},
                    {"created_after": "yesterday"}, {"colour": "red"}):
            response = await client.get("/api/v1/jobs", params=bad)
            assert response.status_code == 422, (bad, response.text)


async def test_cancel_in_each_state(alice: httpx.AsyncClient, keys: dict[str, str]) -> None:
    key_id = await _key_id(keys["alice"])
    jobs = {}
    for status, extra in ((JobStatus.PENDING, {}), (JobStatus.RETRYING, {"attempt": 1}),
                          (JobStatus.PROCESSING, {"attempt": 1,
                                                  "prediction_id": "builtin-x-1-0"})):
        job = await new_job("to cancel", owner=key_id, status=status, **extra)
        jobs[status] = str(job.id)
    for job_id in jobs.values():
        response = await alice.post(f"/api/v1/jobs/{job_id}/cancel")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "canceled"
        detail = (await alice.get(f"/api/v1/jobs/{job_id}")).json()
        assert detail["status"] == "canceled" and detail["error"] == "canceled by the client"
        again = await alice.post(f"/api/v1/jobs/{job_id}/cancel")
        assert again.status_code == 409
        assert again.json()["detail"] == f"job {job_id} is already canceled"
        assert again.json()["status"] == "canceled"

    finished = await alice.post("/api/v1/generate", json=BODY)
    done_id = finished.json()["job_id"]
    assert (await wait_terminal(alice, done_id))["status"] == "completed"
    conflict = await alice.post(f"/api/v1/jobs/{done_id}/cancel")
    assert conflict.status_code == 409
    assert conflict.json()["code"] == "conflict"
    assert conflict.json()["status"] == "completed"
    assert (await alice.get(f"/api/v1/status/{done_id}")).json()["status"] == "completed"


async def test_idempotency_key_replays_conflicts_and_mismatches(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    from mediagen.idempotency import IdempotencyRecord, fingerprint
    from mediagen.jobs.schemas import GenerateRequest

    key = f"order-{uuid.uuid4()}"
    first = await alice.post("/api/v1/generate", json=BODY, headers={"Idempotency-Key": key})
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    jobs_before = await Job.all().count()
    again = await alice.post("/api/v1/generate", json=BODY, headers={"Idempotency-Key": key})
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert await Job.all().count() == jobs_before  # nothing created

    other_body = {**BODY, "prompt": "a different kite"}
    mismatch = await alice.post("/api/v1/generate", json=other_body,
                                headers={"Idempotency-Key": key})
    assert mismatch.status_code == 422
    assert mismatch.json()["code"] == "idempotency_key_mismatch"

    # Keys are scoped per API key: bob's identical key is a new request.
    bobs = await bob.post("/api/v1/generate", json=BODY, headers={"Idempotency-Key": key})
    assert bobs.status_code == 201 and bobs.json()["job_id"] != first.json()["job_id"]

    # A twin still in progress (claimed, no response yet) answers 409.
    busy = f"busy-{uuid.uuid4()}"
    body_hash = fingerprint(GenerateRequest.model_validate(BODY).model_dump(mode="json"))
    await IdempotencyRecord.create(id=uuid.uuid4(), scope=str(await _key_id(keys["alice"])),
                                   key=busy, request_hash=body_hash)
    in_progress = await alice.post("/api/v1/generate", json=BODY,
                                   headers={"Idempotency-Key": busy})
    assert in_progress.status_code == 409
    assert "still being processed" in in_progress.json()["detail"]
    too_long = await alice.post("/api/v1/generate", json=BODY,
                                headers={"Idempotency-Key": "k" * 256})
    assert too_long.status_code == 422


async def test_a_key_with_jobs_cannot_be_deleted_out_from_under_them(
    keys: dict[str, str],
) -> None:
    """Deleting a key row does not hand its jobs to anonymous callers: the database refuses."""
    from tortoise.exceptions import IntegrityError

    key_id = await _key_id(keys["alice"])
    await new_job("alice's", owner=key_id)
    with pytest.raises(IntegrityError):
        await ApiKey.filter(id=key_id).delete()
    assert await Job.filter(api_key_id=key_id).exists()


def test_keys_without_a_database_answer_one_clear_line() -> None:
    """No traceback: one line that says which database (without its password) and why."""
    closed = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "mediagen", "keys", "list"], capture_output=True, text=True,
        timeout=60, cwd=ROOT,
        env={**os.environ, "DATABASE_URL": f"postgres://postgres:s3cret@127.0.0.1:{closed}/x"})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0] == (f"mediagen: cannot reach the database at postgres://postgres@127.0.0.1:"
                        f"{closed}/x (connection refused): is Postgres running? set DATABASE_URL")
    assert "s3cret" not in done.stderr + done.stdout


def test_keys_find_a_run_started_with_another_data_dir(tmp_path: Path, database: str) -> None:
    """`mediagen run` writes its servers' addresses into EMBEDDED_DATA_DIR/embedded.env; the
    admin commands read them from there, whatever the directory."""
    (tmp_path / "embedded.env").write_text(f"DATABASE_URL={TEST_ENV['DATABASE_URL']}\n"
                                           f"REDIS_URL={TEST_ENV['REDIS_URL']}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    done = subprocess.run(
        [sys.executable, "-m", "mediagen", "keys", "list"], capture_output=True, text=True,
        timeout=60, cwd=tmp_path, env={**env, "EMBEDDED_DATA_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
