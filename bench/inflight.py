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
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import psutil
from httpx_aiohttp import AiohttpTransport

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mediagen.embedded import EmbeddedServices  # noqa: E402

WORK = ROOT / ".bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(cmd: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
    handle = (WORK / log).open("wb")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)


async def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url, timeout=2)).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(url)


def asyncpg_dsn(url: str) -> str:
    return url.replace("asyncpg://", "postgresql://", 1)


async def run(args: argparse.Namespace) -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    services = EmbeddedServices(WORK / "embedded")
    services.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        fake_port, api_port = free_port(), free_port()
        env = {
            **os.environ,
            "DATABASE_URL": services.database_url,
            "REDIS_URL": services.redis_url,
            "REPLICATE_API_TOKEN": "bench-token",
            "REPLICATE_BASE_URL": f"http://127.0.0.1:{fake_port}/v1",
            "DOWNLOAD_ALLOW_PRIVATE": "true",  # the fake serves its files on 127.0.0.1
            "LOCAL_STORAGE_PATH": str(WORK / "media"),
            "API_PORT": str(api_port),
            "LOG_LEVEL": "WARNING",
        }
        for key in ("PUBLIC_BASE_URL", "STORAGE_TYPE", "BUILTIN_LATENCY", "POLL_INTERVAL",
                    "WORKER_CONCURRENCY", "DB_POOL_MAX"):
            env.pop(key, None)  # default settings, whatever the caller's environment says
        subprocess.run([sys.executable, "-m", "mediagen", "migrate"], env=env, cwd=ROOT,
                       check=True, capture_output=True)
        procs.append(spawn([sys.executable, "-m", "tests.fakes.replicate_server", "--port",
                            str(fake_port), "--latency", str(args.latency), "--token",
                            "bench-token"], env, "fake.log"))
        procs.append(spawn([sys.executable, "-m", "mediagen", "api"], env, "api.log"))
        worker = spawn([sys.executable, "-m", "mediagen", "worker"], env, "worker.log")
        procs.append(worker)
        await wait_http(f"http://127.0.0.1:{fake_port}/_admin/stats")
        await wait_http(f"http://127.0.0.1:{api_port}/api/v1/health")
        db = await asyncpg.connect(asyncpg_dsn(services.database_url))
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
        return 0 if unfinished == 0 and failed == 0 else 1
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        services.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
