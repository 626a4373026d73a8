"""Benchmark: turns between keys. Key A sends a big backlog, then key B a few jobs: how long B waits.

    make bench-fair                  # or: python bench/fair.py --jobs 10000

Starts fresh embedded Postgres and Redis, the API and ONE worker process with default settings
(built-in generator at its default latency; the per-key limits raised out of reach, as in
bench-api), and an API key for each phase's callers. Two phases, after a warm-up:

- alone: key "a-alone" submits --jobs 64x64 jobs as batches of 100 (POST /api/v1/batches), and
  its throughput is timed from its first job created to its last completed;
- shared: key A does the same, then key B submits 10 single jobs. B's wait is each of its jobs'
  time from created to started (`processing`), from Postgres (p50, max); A's throughput is
  timed as above and compared with the alone phase.

Figures are printed, never asserted. The last line:
`fair: b_wait_p50_s=X b_wait_max_s=Y a_throughput_ratio=Z`.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api import UNLIMITED
from bench.common import ROOT, Procs, asyncpg_dsn, clean_env, free_port, median, servers, wait_http
from bench.e2e import BODY, TERMINAL

WORK = ROOT / ".bench" / "fair"
BATCH = 100
B_JOBS = 10


def create_key(env: dict[str, str], name: str) -> tuple[str, str]:
    """(id, secret) of a new key, made as an operator would: `mediagen keys create`."""
    out = subprocess.run([sys.executable, "-m", "mediagen", "keys", "create", name], env=env,
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout.splitlines()
    return out[0].split()[2], out[1].strip()


async def submit_batches(client: httpx.AsyncClient, secret: str, jobs: int) -> None:
    headers = {"Authorization": f"Bearer {secret}"}
    for first in range(0, jobs, BATCH):
        body = {"jobs": [BODY] * min(BATCH, jobs - first)}
        response = await client.post("/api/v1/batches", json=body, headers=headers)
        if response.status_code != 201:
            raise SystemExit(f"bench: batch answered {response.status_code}: {response.text}")


async def wait_terminal(db: asyncpg.Connection, key: str, jobs: int, timeout: float) -> None:
    for _ in range(int(timeout / 0.2)):
        done = await db.fetchval("SELECT count(*) FROM jobs WHERE api_key_id = $1::uuid "
                                 "AND status = ANY($2::text[])", key, list(TERMINAL))
        if done >= jobs:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"jobs of key {key} still unfinished after {timeout:g}s")


async def throughput(db: asyncpg.Connection, key: str) -> float:
    """Jobs completed per second, from the key's first job created to its last completed."""
    row = await db.fetchrow("SELECT count(*) FILTER (WHERE status = 'completed') AS n, "
                            "extract(epoch FROM max(completed_at) - min(created_at)) AS wall "
                            "FROM jobs WHERE api_key_id = $1::uuid", key)
    return float(row["n"]) / float(row["wall"])


async def run(args: argparse.Namespace) -> dict[str, float]:
    """Both phases; printed, and returned."""
    WORK.mkdir(parents=True, exist_ok=True)
    procs = Procs(WORK / "logs")
    with servers(WORK, None, None) as (database_url, redis_url):
        try:
            return await _measure(args, procs, database_url, redis_url)
        finally:
            procs.stop()


async def _measure(args: argparse.Namespace, procs: Procs, database_url: str,
                   redis_url: str) -> dict[str, float]:
    port = free_port()
    env = clean_env(DATABASE_URL=database_url, REDIS_URL=redis_url, API_PORT=str(port),
                    LOCAL_STORAGE_PATH=str(WORK / "media"), LOG_LEVEL="INFO",
                    RATE_LIMIT_PER_MINUTE=UNLIMITED, MAX_JOBS_IN_FLIGHT=UNLIMITED,
                    RATE_LIMIT_READS_PER_MINUTE=UNLIMITED)
    subprocess.run([sys.executable, "-m", "mediagen", "migrate"], env=env, cwd=ROOT,
                   check=True, capture_output=True)
    keys = {name: create_key(env, name) for name in ("warm-up", "a-alone", "a", "b")}
    procs.spawn([sys.executable, "-m", "mediagen", "api"], env, "api.log")
    procs.spawn([sys.executable, "-m", "mediagen", "worker"], env, "worker.log")
    url = f"http://127.0.0.1:{port}"
    await wait_http(f"{url}/api/v1/health", timeout=60, ok=300)  # until the worker reported in
    db = await asyncpg.connect(asyncpg_dsn(database_url))
    timeout = 60 + args.jobs  # seconds: far beyond one job per second
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            # Warm-up: connections opened, statements prepared, the worker's imports done.
            await submit_batches(client, keys["warm-up"][1], BATCH)
            await wait_terminal(db, keys["warm-up"][0], BATCH, timeout)

            await submit_batches(client, keys["a-alone"][1], args.jobs)
            await wait_terminal(db, keys["a-alone"][0], args.jobs, timeout)
            alone = await throughput(db, keys["a-alone"][0])
            print(f"alone: key A's {args.jobs} jobs at {alone:.1f} jobs/s", flush=True)

            await submit_batches(client, keys["a"][1], args.jobs)
            for _ in range(B_JOBS):
                response = await client.post("/api/v1/generate", json=BODY,
                                             headers={"Authorization": f"Bearer {keys['b'][1]}"})
                response.raise_for_status()
            await wait_terminal(db, keys["b"][0], B_JOBS, timeout)
            await wait_terminal(db, keys["a"][0], args.jobs, timeout)
        shared = await throughput(db, keys["a"][0])
        waits = sorted(float(w) for w in await db.fetchval(
            "SELECT array_agg(extract(epoch FROM started_at - created_at)) FROM jobs "
            "WHERE api_key_id = $1::uuid", keys["b"][0]))
    finally:
        await db.close()
    figures = {"b_wait_p50_s": median(waits), "b_wait_max_s": waits[-1],
               "a_throughput_ratio": shared / alone}
    print(f"shared: key A's {args.jobs} jobs at {shared:.1f} jobs/s; key B's {B_JOBS} jobs "
          f"waited {', '.join(f'{w:.1f}' for w in waits)} s to start")
    print(f"fair: b_wait_p50_s={figures['b_wait_p50_s']:.2f} "
          f"b_wait_max_s={figures['b_wait_max_s']:.2f} "
          f"a_throughput_ratio={figures['a_throughput_ratio']:.2f}")
    return figures


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="key A's jobs in each phase")
    return parser


def main() -> int:
    asyncio.run(run(parser().parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
