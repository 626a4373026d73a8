"""`mediagen run` (what `make run` starts) with nothing configured: embedded Postgres and Redis,
migrations, API and worker; the README's round trip works and SIGTERM stops everything."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.s3_fixtures import BUCKET, CREDENTIALS, moto_endpoint, raw_s3
from tests.support import Proc, free_port, wait_for

__all__ = ["moto_endpoint", "raw_s3"]  # fixtures used through getfixturevalue

README_BODY = {
    "prompt": "A beautiful sunset over mountains",
    "parameters": {"width": 1024, "height": 1024, "num_inference_steps": 50},
}


def _processes_under(path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(path) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(params=["local", "s3"])
def storage_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Local storage, or S3 with the README's documented variables (moto's S3 server)."""
    if request.param == "local":
        return {"STORAGE_TYPE": "local", "LOCAL_STORAGE_PATH": str(tmp_path / "media")}
    endpoint = request.getfixturevalue("moto_endpoint")
    request.getfixturevalue("raw_s3")  # creates the bucket
    return {"STORAGE_TYPE": "s3", "S3_BUCKET_NAME": BUCKET, "S3_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"]}


@pytest.mark.timeout(180)
def test_run_with_nothing_configured(tmp_path: Path, storage_env: dict[str, str]) -> None:
    port = free_port()
    data_dir = tmp_path / "embedded"
    env = {"DATABASE_URL": "", "REDIS_URL": "", "API_PORT": str(port),
           "EMBEDDED_DATA_DIR": str(data_dir), "WORKER_CONCURRENCY": "4", **storage_env}
    run = Proc.start("run", [sys.executable, "-m", "mediagen", "run"], tmp_path / "run.log", env)
    # Signal only the launcher (not its process group): it must stop its children itself.
    try:
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/api/v1/health", timeout=3).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 90, run, "embedded service healthy")
        assert (data_dir / "embedded.env").read_text().startswith("DATABASE_URL=")

        with httpx.Client(base_url=base, timeout=10) as client:
            created = client.post("/api/v1/generate", json=README_BODY)
            assert created.status_code == 201
            job_id = created.json()["job_id"]
            deadline = time.monotonic() + 60
            while (status := client.get(f"/api/v1/status/{job_id}").json())["status"] != "completed":
                assert status["status"] in ("pending", "processing"), status
                assert time.monotonic() < deadline, status
                time.sleep(0.1)
            media = client.get(status["result_url"])  # /media/... or a presigned S3 URL
            assert media.status_code == 200 and media.headers["content-type"] == "image/png"
            assert media.content.startswith(b"\x89PNG")
    finally:
        os.kill(run.popen.pid, signal.SIGTERM)
        code = run.popen.wait(60)
    assert code == 0, run.tail()
    assert not (data_dir / "embedded.env").exists()
    wait_for(lambda: not _processes_under(data_dir), 10, what="embedded servers stopped")
