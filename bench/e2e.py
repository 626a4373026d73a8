"""Benchmark: jobs end to end on one machine, built-in generator without latency.

    make bench-e2e                 # or: python bench/e2e.py --jobs 2000 --rate 10

Starts fresh embedded Postgres and Redis, the API (one uvicorn process) and ONE worker process,
all with default settings except BUILTIN_LATENCY=0, then measures:

- throughput: --jobs 64x64 jobs submitted at once (at most --concurrency requests open) and
  the wall time from the first submit until the last is completed;
- latency: jobs offered at --rate per second for --seconds, each timed from just before its
  POST to its `completed_at` in Postgres (the same clock), p50/p90/p99.

`--tree DIR` runs another checkout of mediagen (e.g. an older commit) with the same driver, for
a side-by-side comparison in one sitting.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ROOT,
    Procs,
    asyncpg_dsn,
    clean_env,
    free_port,
    median,
    servers,
    wait_http,
)

WORK = ROOT / ".bench" / "e2e"
BODY = {"prompt": "an end-to-end lighthouse", "parameters": {"width": 64, "height": 64}}
TERMINAL = ("completed", "failed", "canceled")


async def submit(session: aiohttp.ClientSession, url: str) -> tuple[str, float]:
    sent = time.time()
    async with session.post(f"{url}/api/v1/generate", json=BODY) as response:
        if response.status != 201:
            raise RuntimeError(f"submit answered {response.status}: {await response.text()}")
        return (await response.json())["job_id"], sent


async def wait_done(db: asyncpg.Connection, ids: list[str], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    wanted = [uuid.UUID(i) for i in ids]
    while time.monotonic() < deadline:
        done = await db.fetchval("SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) "
                                 "AND status = ANY($2::text[])", wanted, list(TERMINAL))
        if done >= len(ids):
            return int(done)
        await asyncio.sleep(0.05)
    raise TimeoutError(f"jobs still unfinished after {timeout:g}s")


async def throughput(url: str, db: asyncpg.Connection, jobs: int, concurrency: int) -> dict[str, float]:
    limit = asyncio.Semaphore(concurrency)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def one() -> tuple[str, float]:
            async with limit:
                return await submit(session, url)

        submitted = await asyncio.gather(*(one() for _ in range(jobs)))
    accepted_in = time.monotonic() - started
    ids = [job_id for job_id, _ in submitted]
    await wait_done(db, ids, 600)
    wall = time.monotonic() - started
    failed = await db.fetchval("SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) AND "
                               "status <> 'completed'", [uuid.UUID(i) for i in ids])
    return {"jobs": jobs, "accepted_s": accepted_in, "wall_s": wall, "jobs_per_s": jobs / wall,
            "not_completed": float(failed)}


async def latency(url: str, db: asyncpg.Connection, rate: float, seconds: float) -> dict[str, float]:
    count = int(rate * seconds)
    sent: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:
        start = time.monotonic()
        tasks = []
        for n in range(count):
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            tasks.append(asyncio.create_task(submit(session, url)))
        for job_id, at in await asyncio.gather(*tasks):
            sent[job_id] = at
    await wait_done(db, list(sent), 120)
    rows = await db.fetch("SELECT id, completed_at FROM jobs WHERE id = ANY($1::uuid[])",
                          [uuid.UUID(i) for i in sent])
    latencies = sorted((row["completed_at"] - datetime.fromtimestamp(sent[str(row["id"])], UTC))
                       .total_seconds() * 1000 for row in rows)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    return {"jobs": count, "p50_ms": median(latencies), "p90_ms": pct(0.9), "p99_ms": pct(0.99)}


async def run(args: argparse.Namespace) -> dict[str, float]:
    """Both measurements; printed, and returned (`ok` is 1 when every job completed)."""
    tree = Path(args.tree).resolve() if args.tree else ROOT
    WORK.mkdir(parents=True, exist_ok=True)
    procs = Procs(WORK / "logs")
    with servers(WORK, None, None) as (database_url, redis_url):
        try:
            port = free_port()
            env = clean_env(DATABASE_URL=database_url, REDIS_URL=redis_url, LOG_LEVEL="INFO",
                            LOCAL_STORAGE_PATH=str(WORK / "media"), BUILTIN_LATENCY="0",
                            API_PORT=str(port), PYTHONPATH=str(tree))
            migrate = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mediagen", "migrate", env=env, cwd=tree,
                stdout=asyncio.subprocess.DEVNULL)
            if await migrate.wait():
                raise SystemExit("bench: migrations failed")
            procs.spawn([sys.executable, "-m", "uvicorn", "mediagen.main:app", "--host",
                         "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level",
                         "warning"], env, "api.log", cwd=tree)
            procs.spawn([sys.executable, "-m", "mediagen", "worker"], env, "worker.log", cwd=tree)
            url = f"http://127.0.0.1:{port}"
            await wait_http(f"{url}/api/v1/health", timeout=60, ok=300)
            db = await asyncpg.connect(asyncpg_dsn(database_url))
            try:
                # Warm-up: connections opened, statements prepared, the worker's imports done.
                await throughput(url, db, 50, args.concurrency)
                result = await throughput(url, db, args.jobs, args.concurrency)
                lat = await latency(url, db, args.rate, args.seconds)
            finally:
                await db.close()
        finally:
            procs.stop()
    label = f"{tree.name}" if args.tree else "this tree"
    print(f"\nbench-e2e ({label}; built-in generator, zero latency, 64x64; API and one worker)")
    print(f"throughput: {result['jobs']:.0f} jobs, accepted in {result['accepted_s']:.2f} s, "
          f"all terminal in {result['wall_s']:.2f} s: {result['jobs_per_s']:.1f} jobs/s "
          f"({result['not_completed']:.0f} not completed)")
    print(f"latency at {args.rate:g} jobs/s for {args.seconds:g} s ({lat['jobs']:.0f} jobs), "
          f"submit to completed: p50 {lat['p50_ms']:.0f} ms, p90 {lat['p90_ms']:.0f} ms, "
          f"p99 {lat['p99_ms']:.0f} ms")
    return {**{f"throughput_{k}": v for k, v in result.items()},
            **{f"latency_{k}": v for k, v in lat.items()},
            "ok": float(result["not_completed"] == 0)}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64, help="open submits at most")
    parser.add_argument("--rate", type=float, default=10.0, help="jobs/s offered for latency")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tree", help="a checkout of mediagen to run instead of this one")
    return parser


def main() -> int:
    return 0 if asyncio.run(run(parser().parse_args()))["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
