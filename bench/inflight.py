"""Benchmark: K jobs in flight on ONE worker process against a fake Replicate with 5 s latency.

    make bench-inflight              # or: python bench/inflight.py --jobs 1000 --latency 5

Starts, on loopback: an embedded Postgres and Redis (fresh, in .bench/), the fake Replicate
server (tests/fakes), the API under uvicorn and one Celery worker process with default settings.
Submits K jobs at once through the HTTP API and reports the wall time until all are terminal,
jobs/s, the most jobs in flight at once, failed/unfinished counts and the worker's peak RSS.
A design that waits inside a task would hold one job per pool slot.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import psutil
from httpx_aiohttp import AiohttpTransport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Procs, asyncpg_dsn, clean_env, free_port, servers, wait_http

WORK = ROOT / ".bench" / "inflight"


async def run(args: argparse.Namespace) -> dict[str, float]:
    """The measurement; printed, and returned (`ok` is 1 when every job completed)."""
    WORK.mkdir(parents=True, exist_ok=True)
    procs = Procs(WORK / "logs")
    with servers(WORK, None, None) as (database_url, redis_url):
        try:
            return await _measure(args, procs, database_url, redis_url)
        finally:
            procs.stop()


async def _measure(args: argparse.Namespace, procs: Procs, database_url: str,
                   redis_url: str) -> dict[str, float]:
    fake_port, api_port = free_port(), free_port()
    env = clean_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        REPLICATE_API_TOKEN="bench-token",
        REPLICATE_BASE_URL=f"http://127.0.0.1:{fake_port}/v1",
        DOWNLOAD_ALLOW_PRIVATE="true",  # the fake serves its files on 127.0.0.1
        LOCAL_STORAGE_PATH=str(WORK / "media"),
        API_PORT=str(api_port),
        LOG_LEVEL="INFO",
    )
    subprocess.run([sys.executable, "-m", "mediagen", "migrate"], env=env, cwd=ROOT,
                   check=True, capture_output=True)
    procs.spawn([sys.executable, "-m", "tests.fakes.replicate_server", "--port",
                 str(fake_port), "--latency", str(args.latency), "--token",
                 "bench-token"], env, "fake.log")
    procs.spawn([sys.executable, "-m", "mediagen", "api"], env, "api.log")
    worker = procs.spawn([sys.executable, "-m", "mediagen", "worker"], env, "worker.log")
    await wait_http(f"http://127.0.0.1:{fake_port}/_admin/stats")
    await wait_http(f"http://127.0.0.1:{api_port}/api/v1/health")
    db = await asyncpg.connect(asyncpg_dsn(database_url))
    async with httpx.AsyncClient() as probe:  # until the worker has reported in
        while (await probe.get(f"http://127.0.0.1:{api_port}/api/v1/health")).status_code != 200:
            await asyncio.sleep(0.2)
    worker_ps = psutil.Process(worker.pid)

    body = {"prompt": "a benchmark of many lighthouses",
            "parameters": {"width": 512, "height": 512}}
    started = time.monotonic()
    # httpx's own pool costs the client more CPU than the server spends (see README).
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=120,
                                 transport=AiohttpTransport()) as client:
        responses = await asyncio.gather(*(client.post("/api/v1/generate", json=body)
                                           for _ in range(args.jobs)), return_exceptions=True)
    submitted = time.monotonic() - started
    accepted = sum(isinstance(r, httpx.Response) and r.status_code == 201 for r in responses)
    errors = [r for r in responses if not isinstance(r, httpx.Response) or r.status_code != 201]
    if errors:
        print(f"submit errors: {len(errors)}, first: {errors[0]!r}")

    max_inflight, peak_rss, counts = 0, 0, {}
    deadline = started + args.timeout
    while time.monotonic() < deadline:
        rows = await db.fetch("SELECT status, count(*) FROM jobs GROUP BY status")
        counts = {row["status"]: row["count"] for row in rows}
        max_inflight = max(max_inflight, counts.get("processing", 0) + counts.get("retrying", 0))
        peak_rss = max(peak_rss, worker_ps.memory_info().rss)
        if counts.get("completed", 0) + counts.get("failed", 0) >= accepted:
            break
        await asyncio.sleep(0.1)
    wall = time.monotonic() - started
    await db.close()
    completed, failed = counts.get("completed", 0), counts.get("failed", 0)
    unfinished = accepted - completed - failed
    stats = httpx.get(f"http://127.0.0.1:{fake_port}/_admin/stats").json()
    print(f"jobs submitted:        {args.jobs} ({accepted} accepted in {submitted:.2f} s)")
    print(f"fake Replicate latency: {args.latency:g} s; predictions created: "
          f"{stats.get('created')}")
    print(f"wall time to terminal: {wall:.2f} s")
    print(f"throughput:            {completed / wall:.1f} jobs/s")
    print(f"max jobs in flight:    {max_inflight}")
    print(f"completed / failed / unfinished: {completed} / {failed} / {unfinished}")
    print(f"worker peak RSS:       {peak_rss / 2**20:.0f} MiB (one process, "
          f"{len(worker_ps.threads())} threads)")
    return {"accepted": accepted, "accepted_s": submitted, "wall_s": wall,
            "jobs_per_s": completed / wall, "max_in_flight": max_inflight,
            "rss_mib": peak_rss / 2**20, "ok": float(unfinished == 0 and failed == 0)}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    return parser


def main() -> int:
    return 0 if asyncio.run(run(parser().parse_args()))["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
