"""Fair turns against the real stack: an API, a Celery worker started once the backlog is
there, and the operators' commands (`mediagen keys set-weight`, `mediagen models
pause|resume`) run as processes.

- Key A queues hundreds of jobs, then key B a few while A's run: B's start in turn with A's,
  not behind all of A's (the start messages already in the broker serve both).
- Weights: a key of weight 3 gets three starts for each of a weight-1 key's.
- A paused model's jobs stay pending (`paused` in their detail and `queue` events) while
  another model's run; resumed, they start.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from mediagen.jobs.models import Job
from tests.conftest import REDIS, ROOT
from tests.jobs.test_events import open_events
from tests.stack import create_key, launch_worker, start_api, wait_worker
from tests.support import Proc, wait_terminal

SMALL = {"width": 64, "height": 64}
MODELS = """
[models."mediagen/builtin"]
provider = "builtin"
default = true

[models."acme/other"]
provider = "builtin"
"""


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mediagen", *args], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def stack(database: str, tmp_path: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """An API on a Redis database of its own, no worker yet: (its URL, its environment)."""
    models = tmp_path / "models.toml"  # type: ignore[operator]
    models.write_text(MODELS)
    env = {"REDIS_URL": REDIS.fresh(), "MODELS_FILE": str(models),
           "RATE_LIMIT_READS_PER_MINUTE": "0", "RATE_LIMIT_PER_MINUTE": "0",
           "MAX_JOBS_IN_FLIGHT": "0", "KEY_CACHE_SECONDS": "0"}
    proc, url = start_api("api-fair", env)
    yield url, env
    proc.stop()


async def as_key(url: str, name: str) -> tuple[httpx.AsyncClient, str]:
    key, secret = await create_key(name)
    return httpx.AsyncClient(base_url=url, timeout=60,
                             headers={"Authorization": f"Bearer {secret}"}), str(key.id)


async def batch(client: httpx.AsyncClient, n: int, model: str | None = None) -> list[str]:
    entry = {"prompt": "a queued fox", "parameters": SMALL, **({"model": model} if model else {})}
    ids: list[str] = []
    for first in range(0, n, 100):
        response = await client.post("/api/v1/batches",
                                     json={"jobs": [entry] * min(100, n - first)})
        assert response.status_code == 201, response.text
        ids += [str(j) for j in response.json()["job_ids"]]
    return ids


def start_worker(env: dict[str, str], threads: int) -> Proc:
    proc = launch_worker(f"worker-fair-{threads}", {"REDIS_URL": env["REDIS_URL"]},
                         ["-c", str(threads)])
    broker = redis.Redis.from_url(env["REDIS_URL"])
    try:
        return wait_worker(proc, broker)
    finally:
        broker.close()


async def started(ids: list[str]) -> list[str]:
    """The jobs of `ids` that started, in the order they started."""
    rows = await Job.filter(id__in=ids, started_at__not_isnull=True).order_by(
        "started_at").values_list("id", flat=True)
    return [str(r) for r in rows]


async def until_started(ids: list[str], count: int, proc: Proc, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while len(await started(ids)) < count:
        assert time.monotonic() < deadline, proc.tail()
        await asyncio.sleep(0.05)


async def test_a_key_that_comes_later_starts_in_turn_not_behind_the_backlog(
        stack: tuple[str, dict[str, str]]) -> None:
    url, env = stack
    a, _ = await as_key(url, "fair-a")
    b, _ = await as_key(url, "fair-b")
    async with a, b:
        a_ids = await batch(a, 400)
        worker = start_worker(env, 2)
        try:
            await until_started(a_ids, 20, worker)
            b_ids = [str((await b.post("/api/v1/generate", json={
                "prompt": "a late owl", "parameters": SMALL})).json()["job_id"]) for _ in range(5)]
            for job_id in b_ids:
                assert (await wait_terminal(b, job_id, 60))["status"] == "completed"
            a_before = set(await started(a_ids))
            order = await started(a_ids + b_ids)
        finally:
            worker.stop()
    # When B's last job started, most of A's backlog still waited: B did not wait behind it.
    assert len(a_before) < 120, len(a_before)
    # B's five started among the first starts after B came: A's and B's took turns.
    after = order[order.index(b_ids[0]) - 5:]
    assert all(after.index(j) < 25 for j in b_ids), [after.index(j) for j in b_ids]


async def test_a_heavier_key_gets_more_turns(stack: tuple[str, dict[str, str]]) -> None:
    url, env = stack
    a, _ = await as_key(url, "weight-1")
    b, b_key = await as_key(url, "weight-3")
    out = cli(env, "keys", "set-weight", b_key, "3")
    assert "now takes 3 turn(s)" in out
    listed = next(line for line in cli(env, "keys", "list").splitlines() if b_key in line)
    assert "weight=3" in listed
    async with a, b:
        a_ids = await batch(a, 60)
        b_ids = await batch(b, 60)
        worker = start_worker(env, 1)  # one at a time: starts in the order of turns
        try:
            await until_started(a_ids + b_ids, 120, worker)
        finally:
            worker.stop()
    first = (await started(a_ids + b_ids))[:40]
    from_b = sum(job_id in b_ids for job_id in first)
    assert 28 <= from_b <= 32, from_b  # three of B's for each of A's
    # Inside each key, first come first served.
    assert [j for j in await started(a_ids)] == a_ids
    assert [j for j in await started(b_ids)] == b_ids


async def test_a_paused_model_keeps_its_jobs_until_it_is_resumed(
        stack: tuple[str, dict[str, str]]) -> None:
    url, env = stack
    assert "model acme/other is paused" in cli(env, "models", "pause", "acme/other")
    client, _ = await as_key(url, "pauser")
    worker = start_worker(env, 2)
    try:
        async with client:
            held = await batch(client, 3, model="acme/other")
            free = await batch(client, 3)
            for job_id in free:  # another model's jobs run meanwhile
                assert (await wait_terminal(client, job_id, 30))["status"] == "completed"
            detail = (await client.get(f"/api/v1/jobs/{held[2]}")).json()
            assert (detail["status"], detail["paused"], detail["queue_position"]) == (
                "pending", True, 2)
            async with open_events(client, held[2]) as stream:
                _, queued = await stream.take(2)
                assert (queued.event, queued.data["paused"]) == ("queue", True)
                out = cli(env, "models", "resume", "acme/other")
                assert "model acme/other is resumed: 3 queued job(s) start in turn" in out
                for job_id in held:
                    assert (await wait_terminal(client, job_id, 30))["status"] == "completed"
            assert "was not paused" in cli(env, "models", "resume", "acme/other")
    finally:
        worker.stop()


def test_pausing_a_model_the_service_does_not_run_says_so(
        stack: tuple[str, dict[str, str]]) -> None:
    _, env = stack
    done = subprocess.run([sys.executable, "-m", "mediagen", "models", "pause", "acme/nope"],
                          cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("mediagen models: model 'acme/nope' is not allowed")
    assert "Traceback" not in done.stderr
