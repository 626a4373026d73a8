"""Capacity of self-hosted Cog models, against real Cog servers (`tests/cog_servers.py`): one
model on two endpoints of one slot each, an API, a worker and the sweeper (Celery beat, every
0.5 s) on a redis-server of their own.

- No more predictions in flight than slots (a job whose prediction is done frees its slot
  while its outputs are stored); the rest wait as `pending` with queue positions
  that start at their rank and only decrease; every job completes in one attempt.
- An endpoint whose server stops: its in-flight job runs again elsewhere, new work goes to the
  other endpoint, and once it is READY again it gets work again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from mediagen.catalog import Endpoint
from mediagen.providers.cog import provider as cog_provider
from mediagen.scheduling import pool_of
from mediagen.scheduling._lua import PREFIX
from mediagen.scheduling.queues import DOWN, HELD
from tests.cog_servers import CogServer, cog_venv  # noqa: F401 - the fixture, for this module
from tests.conftest import redis_server, start_api, start_worker
from tests.providers.test_cog import MAX_BYTES, MODEL, SECRET, _cog_id, _inputs, _submit
from tests.support import Proc, free_port, wait_for, wait_terminal

WAIT_KEY = f"{PREFIX}q:1:{MODEL}"  # the model's queue of normal jobs (mediagen.scheduling)


@dataclass
class Pair:
    url: str
    servers: tuple[CogServer, CogServer]
    broker: redis.Redis
    worker: Proc
    beat: Proc


@pytest.fixture(scope="module")
def pair(database: str, cog_venv: Path,  # noqa: F811
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("cog-pair")
    servers = (CogServer(cog_venv, tmp / "cog-a.log").start(),
               CogServer(cog_venv, tmp / "cog-b.log").start())
    models = tmp / "models.toml"
    models.write_text(
        f'[models."{MODEL}"]\nprovider = "cog"\ndeadline = 60\n'
        + "".join(f'[[models."{MODEL}".endpoints]]\nurl = "{s.url}"\nslots = 1\n'
                  for s in servers))
    redis_port, redis_proc = redis_server()
    broker = redis.Redis(port=redis_port)
    port = free_port()
    env = {"MODELS_FILE": str(models), "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
           "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", "DOWNLOAD_MAX_BYTES": str(MAX_BYTES),
           "COG_WEBHOOK_SECRET": SECRET, "SWEEP_INTERVAL": "0.5",
           "RATE_LIMIT_READS_PER_MINUTE": "0"}  # the tests poll every job many times a second
    worker = start_worker("worker-cog-pair", broker, env)
    beat = Proc.start("beat-cog-pair", ["python", "-m", "celery", "-A", "mediagen.worker", "beat",
                                        "-s", str(tmp / "schedule"), "--loglevel", "INFO"],
                      tmp / "beat.log", env)
    api, url = start_api("api-cog-pair", env, port)
    try:
        yield Pair(url, servers, broker, worker, beat)
    finally:
        api.stop()
        beat.stop()
        worker.stop()
        for server in servers:
            server.stop()
        broker.close()
        redis_proc.terminate()
        redis_proc.wait(10)


async def _in_flight(pair: Pair, job_ids: list[str]) -> int:
    """Jobs whose prediction runs: processing, with no completion recorded yet (a job whose
    server reported its prediction done has freed its slot while its outputs are stored)."""
    from mediagen.jobs.models import Job
    from mediagen.jobs.states import JobStatus

    rows = await Job.filter(id__in=job_ids, status=JobStatus.PROCESSING).values_list(
        "prediction_id", flat=True)
    return sum(not (p and pair.broker.exists(cog_provider.DONE + str(p).split(".")[0]))
               for p in rows)


def _held(pair: Pair) -> int:
    """Slots held on both endpoints at one moment."""
    with pair.broker.pipeline(transaction=True) as pipe:
        for server in pair.servers:
            pipe.zcard(HELD + pool_of(Endpoint(server.url, 1)))
        return sum(pipe.execute())


async def test_two_one_slot_endpoints_run_ten_jobs_two_at_a_time(pair: Pair) -> None:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=pair.url, timeout=30) as client:
        ids = [await _submit(client, _inputs(f"queued fox {n}", step_seconds=0.2,
                                              num_inference_steps=5)) for n in range(10)]
        most = most_held = 0
        positions: dict[str, list[int]] = {job_id: [] for job_id in ids}
        first_full: list[int | None] | None = None
        done: dict[str, dict[str, Any]] = {}
        while len(done) < len(ids):
            assert time.monotonic() - started < 60, f"not done: {positions}"
            most = max(most, await _in_flight(pair, ids))  # one snapshot of the rows
            most_held = max(most_held, _held(pair))  # ... and of the slots (MULTI/EXEC)
            waiting = pair.broker.zcard(WAIT_KEY)
            bodies = [(await client.get(f"/api/v1/jobs/{job_id}")).json() for job_id in ids]
            pending = [b["queue_position"] for b in bodies if b["status"] == "pending"]
            if first_full is None and waiting == pair.broker.zcard(WAIT_KEY) == len(pending) == 8:
                first_full = pending  # a moment when all eight waited in the queue
            for body in bodies:
                # From then on, every waiting job is in the model's queue: its position is
                # its rank there.
                if body["status"] == "pending" and first_full is not None:
                    positions[body["job_id"]].append(body["queue_position"])
                elif body["status"] in ("completed", "failed", "canceled"):
                    done[body["job_id"]] = body
            await asyncio.sleep(0.03)
    elapsed = time.monotonic() - started
    assert most == 2 and most_held == 2, (most, most_held)  # both slots used, never more
    assert [done[j]["status"] for j in ids] == ["completed"] * 10, done
    assert all(done[j]["attempts"] == 1 and done[j]["retry_count"] == 0 for j in ids), done
    # Eight waited, ranked by submission; each one's position only went down.
    assert first_full == list(range(8)), first_full
    for job_id, seen in positions.items():
        assert seen == sorted(seen, reverse=True), (job_id, seen)
    assert sum(bool(seen) for seen in positions.values()) >= 8
    # Both endpoints did work; no 409 was ever met (the accounting kept to the slots).
    for server in pair.servers:
        assert any(server.says(_cog_id(done[j])) for j in ids)
    assert "no free slot" not in pair.worker.log.read_text()
    assert pair.broker.zcard(WAIT_KEY) == 0
    print(f"10 jobs on 2 slots: {elapsed:.1f}s, at most {most} in flight")


async def test_a_stopped_endpoint_gets_no_work_and_its_job_runs_again(pair: Pair) -> None:
    first, second = pair.servers
    async with httpx.AsyncClient(base_url=pair.url, timeout=30) as client:
        long = await _submit(client, _inputs("a long watch", step_seconds=0.2,
                                             num_inference_steps=15))
        job: dict[str, Any] = {}
        for _ in range(400):
            job = (await client.get(f"/api/v1/jobs/{long}")).json()
            if job["prediction_id"] and any(s.says(_cog_id(job)) for s in pair.servers):
                break
            await asyncio.sleep(0.025)
        victim, other = (first, second) if first.says(_cog_id(job)) else (second, first)
        victim.stop()
        later = [await _submit(client, _inputs(f"after the outage {n}")) for n in range(3)]
        results = [await wait_terminal(client, job_id, 40) for job_id in [long, *later]]
        assert [r["status"] for r in results] == ["completed"] * 4, [r["error"] for r in results]
        assert results[0]["attempts"] == 2 and results[0]["retry_count"] == 1, results[0]
        assert other.says(_cog_id(results[0]))  # the new attempt ran on the healthy one
        assert all(other.says(_cog_id(r)) and not victim.says(_cog_id(r)) for r in results[1:])

        victim.start()  # READY again: the sweeper gives it work again
        down = DOWN + pool_of(Endpoint(victim.url, 1))
        wait_for(lambda: not pair.broker.exists(down), 10, what="endpoint back up")
        again = [await _submit(client, _inputs(f"back again {n}", step_seconds=0.2,
                                               num_inference_steps=5)) for n in range(2)]
        finals = [await wait_terminal(client, job_id, 40) for job_id in again]
    assert [f["status"] for f in finals] == ["completed"] * 2, finals
    assert any(victim.says(_cog_id(f)) for f in finals), finals
