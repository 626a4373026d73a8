"""The embedded Postgres and Redis: real servers, reused across runs, nothing left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
import redis
from celery import Celery
from tortoise.context import TortoiseContext

from mediagen.embedded import EmbeddedServices
from mediagen.embedded._constants import MAX_SOCKET_PATH

ROOT = Path(__file__).resolve().parents[1]
URL_RE = re.compile(r"^asyncpg://postgres@/mediagen\?host=(?P<host>/[^&]+)$")


def gone(pid: int | None) -> bool:
    """True if no such process runs any more (a zombie awaiting its reaper counts as gone)."""
    if pid is None:
        return True
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int | None, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def file_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


async def pg(url: str) -> asyncpg.Connection:
    # asyncpg wants a libpq-style scheme; the rest of the Tortoise URL is the same.
    return await asyncpg.connect(url.replace("asyncpg://", "postgresql://", 1))


@pytest.mark.filterwarnings("ignore:Module \"mediagen.embedded\" has no models")
async def test_start_stop_restart_keeps_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data dir"  # a space: the socket path must be quoted in the URL
    services = EmbeddedServices(data_dir)
    with services:
        match = URL_RE.match(services.database_url)
        assert match, services.database_url
        assert match["host"] == str(data_dir / "run").replace(" ", "%20")
        assert re.fullmatch(r"redis://:[\w-]+@127\.0\.0\.1:\d+/0", services.redis_url)

        conn = await pg(services.database_url)
        try:
            assert await conn.fetchval("select 1") == 1
            assert await conn.fetchval("select current_database()") == "mediagen"
            await conn.execute("create table kept (v text); insert into kept values ('first run')")
        finally:
            await conn.close()

        # Tortoise 1.1 takes the same URL (its models list may not be empty).
        async with TortoiseContext() as ctx:
            await ctx.init(db_url=services.database_url, modules={"models": ["mediagen.embedded"]})
            rows = await ctx.connections.get("default").execute_query_dict("select 1 as one")
            assert rows == [{"one": 1}]

        client = redis.Redis.from_url(services.redis_url)
        assert client.ping()
        client.set("kept", "first run")
        assert client.get("kept") == b"first run"
        client.close()

        # A second run on the same data directory is refused while this one holds it.
        with pytest.raises(RuntimeError, match="in use"):
            EmbeddedServices(data_dir).start()

        pids = [services.postgres_pid, services.redis_pid]
        assert all(pids)

    assert all(wait_gone(pid) for pid in pids), pids
    assert services.postgres_pid is None and services.redis_pid is None
    with pytest.raises(RuntimeError, match="not running"):
        _ = services.database_url

    # Second start on the same directory: the cluster and the append-only file are reused.
    with EmbeddedServices(data_dir) as again:
        conn = await pg(again.database_url)
        try:
            assert await conn.fetchval("select v from kept") == "first run"
        finally:
            await conn.close()
        client = redis.Redis.from_url(again.redis_url)
        assert client.get("kept") == b"first run"
        client.close()
        pids = [again.postgres_pid, again.redis_pid]
    assert all(wait_gone(pid) for pid in pids), pids
    assert not any((data_dir / "logs" / name).stat().st_size == 0
                   for name in ("postgres.log", "redis.log"))


async def test_long_data_dir_gets_a_short_socket_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / ("x" * 40) / ("y" * 40)
    assert len(str(data_dir / "run" / ".s.PGSQL.5432")) > MAX_SOCKET_PATH
    with EmbeddedServices(data_dir) as services:
        match = URL_RE.match(services.database_url)
        assert match, services.database_url
        assert match["host"].startswith("/tmp/mediagen-")
        socket_dir = Path(match["host"])
        assert socket_dir.stat().st_mode & 0o777 == 0o700
        conn = await pg(services.database_url)
        try:
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()


def start_main(data_dir: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """`python -m mediagen.embedded`, and the URLs it printed."""
    pythonpath = os.environ.get("PYTHONPATH")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mediagen.embedded", "--data-dir", str(data_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), pythonpath]))},
    )
    assert proc.stdout is not None
    urls: dict[str, str] = {}
    for line in proc.stdout:
        key, _, value = line.strip().partition("=")
        urls[key] = value
        if key == "REDIS_URL":
            break
    assert set(urls) == {"DATABASE_URL", "REDIS_URL"}, (urls, proc.poll())
    return proc, urls


async def test_cli_stops_on_sigterm_and_orphans_of_a_killed_run_are_replaced(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    pg_pidfile = data_dir / "postgres" / "postmaster.pid"
    redis_pidfile = data_dir / "redis" / "redis.pid"

    # SIGTERM: both servers stopped, exit status 0.
    proc, urls = start_main(data_dir)
    pids = [file_pid(pg_pidfile), file_pid(redis_pidfile)]
    assert all(pids) and not any(gone(pid) for pid in pids)
    assert redis.Redis.from_url(urls["REDIS_URL"]).set("before crash", 1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert proc.stdout is not None
    proc.stdout.close()
    assert all(gone(pid) for pid in pids), pids

    # SIGKILL: the servers outlive the run that started them ...
    proc, urls = start_main(data_dir)
    orphans = [file_pid(pg_pidfile), file_pid(redis_pidfile)]
    proc.kill()
    proc.wait(5)
    assert proc.stdout is not None
    proc.stdout.close()
    assert not any(gone(pid) for pid in orphans), orphans

    # ... and the next start stops them and runs fresh ones on the same data.
    with EmbeddedServices(data_dir) as services:
        assert all(gone(pid) for pid in orphans), orphans
        assert services.postgres_pid not in orphans and services.redis_pid not in orphans
        assert redis.Redis.from_url(services.redis_url).get("before crash") == b"1"
        conn = await pg(services.database_url)
        try:
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()
        pids = [services.postgres_pid, services.redis_pid]
    assert all(wait_gone(pid) for pid in pids), pids


CELERY_APP = """
import os
from celery import Celery

app = Celery("embapp", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])

@app.task
def add(x, y):
    return x + y
"""


def test_celery_worker_round_trip(tmp_path: Path) -> None:
    (tmp_path / "embapp.py").write_text(CELERY_APP)
    with EmbeddedServices(tmp_path / "data") as services:
        env = {**os.environ, "REDIS_URL": services.redis_url}
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "embapp", "worker", "-P", "solo",
             "--without-mingle", "--without-gossip", "--loglevel=WARNING"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = Celery("embapp", broker=services.redis_url, backend=services.redis_url)
        try:
            deadline = time.monotonic() + 15
            replies: list[dict[str, Any]] | None = []
            while not replies and time.monotonic() < deadline:
                replies = client.control.ping(timeout=0.5)
            assert replies and all(
                reply == {"ok": "pong"} for node in replies for reply in node.values()
            ), replies
            assert client.send_task("embapp.add", (2, 3)).get(timeout=10) == 5
        finally:
            client.close()
            worker.terminate()
            worker.wait(15)
