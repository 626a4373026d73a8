"""The whole service on loopback, as real processes: Postgres, Redis and the fake Replicate
(started once per run), and per scenario a fresh database, the API under uvicorn, two Celery
workers (one `-P threads` as `mediagen worker` runs it, one `-P prefork -c 2` so that a pool
child can be killed) and the sweeper (`mediagen beat`).

Processes run from a scratch directory with every setting passed explicitly, so the project's
`.env` (and a stray `.mediagen/embedded.env`) never leak in.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio as aioredis

from mediagen.config import Settings
from tests.chaos.measure import AUDIT_SQL
from tests.chaos.procs import Postgres, Proc, Redis, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "chaos-token"
WORKERS = "mediagen:workers"  # mediagen.broker.WORKERS


@dataclass(frozen=True)
class Timings:
    """The durability timings, scaled down so that a crash heals in seconds, not minutes."""

    lease_seconds: float = 20
    sweep_interval: float = 5
    dispatch_grace: float = 5
    retry_delay: float = 1
    retry_max_delay: float = 5
    max_retries: int = 3
    job_timeout: float = 120
    poll_interval: float = 1
    replicate_timeout: float = 10
    latency: tuple[float, float] = (0.5, 5.0)  # fake Replicate, per job

    def env(self) -> dict[str, str]:
        """As mediagen's environment variables."""
        names = ("lease_seconds", "sweep_interval", "dispatch_grace", "retry_delay")
        names += ("retry_max_delay", "max_retries", "job_timeout", "poll_interval")
        env = {name.upper(): f"{getattr(self, name):g}" for name in names}
        env["REPLICATE_TIMEOUT"] = f"{self.replicate_timeout:g}"
        return env

    def bound(self) -> float:
        """T: the longest a job may take to terminal after a single crash (docs/chaos.md).

        The step the crash lost is noticed once the job's lease (renewed at every step, for
        LEASE_SECONDS plus the next poll's wait) has run out, at the next sweep (one more tick
        in case that sweep waited in the queue past its expiry); the resumed job may need a new
        prediction (latency) and a poll; plus 5 s for queueing and the download.
        """
        return (
            self.lease_seconds
            + 2 * self.sweep_interval
            + 2 * self.poll_interval
            + self.latency[1]
            + 5
        )


async def wait_worker(redis_url: str, worker: Proc, timeout: float = 60) -> None:
    """Until the worker's main process has written its heartbeat (after `worker_ready`)."""
    client = aioredis.from_url(redis_url, socket_timeout=2)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if not worker.alive():
                last = (worker.tail(1) or "no output").strip()
                raise RuntimeError(f"{worker.name} exited at start ({worker.log}): {last}")
            try:
                members = await client.zrange(WORKERS, 0, -1)
            except (aioredis.ConnectionError, OSError):
                members = []
            if any(m.decode().endswith(f":{worker.pid}") for m in members):
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{worker.name} did not report in within {timeout:g}s")
    finally:
        await client.aclose()


def clean_environ() -> dict[str, str]:
    """os.environ without any mediagen setting or test override (pytest's conftest sets some)."""
    settings = {name.upper() for name in Settings.model_fields}
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in settings and not k.startswith(("TEST_", "CELERY", "PYTEST"))
    }
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class App:
    """One scenario's service processes and where they keep their state."""

    key: str
    dir: Path
    env: dict[str, str]
    database: str
    api_url: str
    api: Proc
    threads: Proc
    prefork: Proc
    beat: Proc
    procs: list[Proc] = field(default_factory=list)

    @property
    def media(self) -> Path:
        return Path(self.env["LOCAL_STORAGE_PATH"])

    @property
    def workers(self) -> list[Proc]:
        return [self.threads, self.prefork]


class Stack:
    """Servers for a whole run, and `App`s on them one scenario at a time."""

    def __init__(self, root: Path, timings: Timings) -> None:
        self.root, self.timings = root, timings
        root.chmod(0o755)  # Postgres runs as another user when we are root: let it in
        self.base_env = clean_environ()
        self.pg = Postgres(root, free_port(), self.base_env)
        self.redis = Redis(root, free_port(), self.base_env)
        self.fake_port = free_port()
        self.fake_url = f"http://127.0.0.1:{self.fake_port}"
        fake = [sys.executable, "-m", "tests.fakes.replicate_server", "--port"]
        fake += [str(self.fake_port), "--latency", "2", "--token", TOKEN]
        self.fake = Proc(
            "fake-replicate",
            fake,
            self.base_env,
            root,
            root / "logs" / "fake-replicate.log",
        )
        self.app: App | None = None
        self.failed = False  # a scenario broke a promise: keep the logs

    # --- servers ---------------------------------------------------------------------------
    def start(self) -> None:
        """initdb + Postgres, Redis, the fake Replicate (blocking; a few seconds)."""
        self.pg.init()
        self.pg.start()
        self.redis.start()
        self.fake.start()
        wait_until(
            lambda: httpx.get(f"{self.fake_url}/_admin/stats", timeout=1).status_code == 200,
            30,
            "fake Replicate",
            self.fake,
        )

    async def fake_stats(self) -> dict[str, object]:
        async with httpx.AsyncClient(timeout=10) as client:
            stats: dict[str, object] = (await client.get(f"{self.fake_url}/_admin/stats")).json()
            return stats

    # --- one scenario's service --------------------------------------------------------------
    async def launch(
        self, key: str, overrides: dict[str, str], lowvis: bool = False, webhooks: bool = False
    ) -> App:
        """Fresh database (migrated, audited), empty Redis, reset fake; start the processes.
        `webhooks`: PUBLIC_BASE_URL is the API's address (Cog servers report by webhook)."""
        workdir = self.root / key
        (workdir / "media").mkdir(parents=True)
        database = f"chaos_{key.lower()}"
        api_port = free_port()
        env = {
            **self.base_env,
            **self.timings.env(),
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{self.pg.port}/{database}",
            "REDIS_URL": self.redis.url,
            "REPLICATE_API_TOKEN": TOKEN,
            "REPLICATE_BASE_URL": f"{self.fake_url}/v1",
            "DOWNLOAD_ALLOW_PRIVATE": "true",
            "DOWNLOAD_TIMEOUT": "20",
            "PUBLIC_BASE_URL": "",  # no webhooks: every job is polled
            "STORAGE_TYPE": "local",
            "LOCAL_STORAGE_PATH": str(workdir / "media"),
            "EMBEDDED_DATA_DIR": str(workdir),
            "API_HOST": "127.0.0.1",
            "API_PORT": str(api_port),
            "WORKER_CONCURRENCY": "16",
            "DB_POOL_MAX": "10",
            "LOG_LEVEL": "INFO",
            "DEBUG": "false",
            **overrides,
        }
        if webhooks:
            env["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{api_port}"
        admin = await asyncpg.connect(self.pg.dsn())
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{database}"')
        finally:
            await admin.close()
        migrate = [sys.executable, "-m", "mediagen", "migrate"]
        done = await asyncio.to_thread(
            subprocess.run, migrate, cwd=workdir, env=env, capture_output=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"migrate failed: {done.stderr.decode(errors='replace')[-2000:]}")
        conn = await asyncpg.connect(self.pg.dsn(database))
        try:
            await conn.execute(AUDIT_SQL)
        finally:
            await conn.close()
        client = aioredis.from_url(self.redis.url)
        try:
            await client.flushall()
        finally:
            await client.aclose()
        async with httpx.AsyncClient(timeout=10) as http:
            (await http.post(f"{self.fake_url}/_admin/reset")).raise_for_status()

        celery_app = "tests.chaos.lowvis" if lowvis else "mediagen.worker"
        logs = workdir / "logs"
        py = sys.executable

        def proc(name: str, cmd: list[str]) -> Proc:
            return Proc(name, cmd, env, workdir, logs / f"{name}.log")

        threads_cmd = [py, "-m", "mediagen", "worker"]
        if lowvis:  # the same command line `mediagen worker` execs, on the S8 app
            threads_cmd = [py, "-m", "celery", "-A", celery_app, "worker", "-P", "threads"]
            threads_cmd += ["-c", "16", "-Q", "mediagen,mediagen.webhooks", "-n", "chaos-threads@%h", "-l", "INFO"]
        prefork_cmd = [py, "-m", "celery", "-A", celery_app, "worker", "-P", "prefork", "-c", "2"]
        prefork_cmd += ["-Q", "mediagen,mediagen.webhooks", "-n", "chaos-prefork@%h", "--loglevel", "INFO"]
        prefork_cmd += ["--without-mingle", "--without-gossip"]
        app = App(
            key=key,
            dir=workdir,
            env=env,
            database=database,
            api_url=f"http://127.0.0.1:{api_port}",
            api=proc("api", [py, "-m", "mediagen", "api"]),
            threads=proc("worker-threads", threads_cmd),
            prefork=proc("worker-prefork", prefork_cmd),
            beat=proc("beat", [py, "-m", "mediagen", "beat"]),
        )
        app.procs = [app.api, app.threads, app.prefork, app.beat]
        self.app = app
        for p in app.procs:
            p.start()
        await asyncio.gather(
            self.api_ready(app), self.worker_ready(app.threads), self.worker_ready(app.prefork)
        )
        return app

    async def api_ready(self, app: App, timeout: float = 60) -> None:
        await asyncio.to_thread(
            wait_until,
            lambda: httpx.get(f"{app.api_url}/openapi.json", timeout=2).status_code == 200,
            timeout,
            "the API",
            app.api,
        )

    async def worker_ready(self, worker: Proc, timeout: float = 60) -> None:
        await wait_worker(self.redis.url, worker, timeout)

    async def restart(self, proc: Proc) -> None:
        """Start `proc` again (after a crash or a stop) and wait until it serves."""
        assert self.app is not None
        await asyncio.to_thread(proc.stop, 15)  # reap the old group, whatever is left of it
        proc.start()
        if proc in self.app.workers:
            await self.worker_ready(proc)
        elif proc is self.app.api:
            await self.api_ready(self.app)

    async def stop_app(self) -> None:
        """Stop the scenario's processes (all at once; SIGKILL after 10 s)."""
        if self.app is not None:
            await asyncio.gather(*(asyncio.to_thread(p.stop, 10) for p in self.app.procs))
            self.app = None
