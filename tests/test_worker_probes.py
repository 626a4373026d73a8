"""A worker's own probes: on its port, `GET /livez` and `GET /readyz` answer without the
metrics token, and even with metrics turned off (only port 0 closes it); readiness is its
heartbeat being fresh and its broker answering. `mediagen worker-check`, the exec probe for
deployments without the port, says the same of the workers on its host: exit 0, or 1 and why."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import REDIS, ROOT, Stacks, free_port, redis_server
from tests.stack import Stack
from tests.support import wait_for


@pytest.fixture(scope="module")
def worker(stacks: Stacks) -> Iterator[tuple[Stack, str, subprocess.Popen[bytes]]]:
    """A worker on a Redis server of its own (to stop), its port open, metrics off."""
    port, server = redis_server()
    exporter = free_port()
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "WORKER_METRICS_PORT": str(exporter),
        "METRICS_ENABLED": "false",
        "METRICS_TOKEN": "scrape-only",
    }
    try:
        with stacks.own(env, api=False, name="probed") as stack:
            yield stack, f"http://127.0.0.1:{exporter}", server
    finally:
        server.terminate()
        server.wait(10)


def _check(redis_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mediagen", "worker-check"],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=5)


def test_worker_probes_answer_without_token_with_metrics_off(
    worker: tuple[Stack, str, subprocess.Popen[bytes]],
) -> None:
    stack, url, _ = worker
    wait_for(lambda: _get(f"{url}/readyz").status_code == 200, 20, stack.worker, "ready")
    live, ready = _get(f"{url}/livez"), _get(f"{url}/readyz")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert ready.json()["status"] == "ok" and "beat" in ready.json()["detail"], ready.text
    assert _get(f"{url}/metrics").status_code == 404  # METRICS_ENABLED=false

    checked = _check(stack.redis_url)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("mediagen worker-check: ok: "), checked.stdout


def test_worker_check_fails_without_a_worker_on_this_host() -> None:
    checked = _check(REDIS.fresh())
    assert checked.returncode == 1
    assert checked.stderr.startswith("mediagen worker-check: not ready: no heartbeat from a worker process on ")
    assert checked.stderr.count("\n") == 1


def test_a_worker_without_its_broker_is_not_ready(
    worker: tuple[Stack, str, subprocess.Popen[bytes]],
) -> None:
    stack, url, server = worker
    server.terminate()
    server.wait(10)
    wait_for(lambda: _get(f"{url}/readyz").status_code == 503, 20, stack.worker, "not ready")
    assert "broker" in _get(f"{url}/readyz").json()["detail"]
    assert _get(f"{url}/livez").status_code == 200  # alive: restarting it would not help
    checked = _check(stack.redis_url)
    assert checked.returncode == 1
    assert "the broker does not answer" in checked.stderr
