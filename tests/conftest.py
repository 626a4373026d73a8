"""Test fixtures over the session's stack (`tests/stack.py`): Postgres, Redis, running API and
worker processes shared by settings, and the in-process tier. Nothing of ours is faked.

- `database`: the session's database, a copy of a template migrated once; `fresh_database` is
  another copy, in which nothing was ever made.
- `client`: the in-process tier, the application through ASGI and its worker's steps run on
  the test's event loop (`tests.stack.InProcess`), on the session's database and Redis queue.
- `stacks`: running processes (`Stacks.get(env)`: the same settings, the same processes);
  `api` and `worker` are the session's default pair.
- `redis_dbs.fresh()`: a Redis database of the test's own, empty.

The machine's Postgres (127.0.0.1:5432, user postgres, or `TEST_PG_ADMIN_URL`) is used when it
answers, else the embedded one (`TEST_EMBEDDED_PG=1` asks for it). Redis is a `redis-server` of
the session's own (`TEST_REDIS_URL` points elsewhere).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis

from tests import stack as _stack
from tests.stack import (  # noqa: F401 - re-exported for the test modules
    ROOT,
    TMP,
    Databases,
    InProcess,
    Postgres,
    Redis,
    Stacks,
    redis_server,
    start_api,
    start_worker,
)
from tests.support import Proc, free_port  # noqa: F401 - re-exported

POSTGRES = Postgres.find()
REDIS = _stack.REDIS = Redis()
REDIS_URL = REDIS.url  # the session's default Redis database: the in-process tier's queue
TEST_DB = f"mediagen_test_{os.getpid()}"
DATABASES = Databases(POSTGRES, TEST_DB)
PG_ADMIN = POSTGRES.admin_dsn

# The settings every process of the session shares (read before mediagen is imported).
TEST_ENV = {
    "DATABASE_URL": POSTGRES.url(TEST_DB),
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


# Modules that take minutes whatever else runs (a fuzzer, a chaos run, the official clients'
# rate-limit waits): run first, so that with several workers (pytest-xdist) the rest of the
# suite runs beside them instead of after them.
LONG_FIRST = ("tests/fuzz/", "tests/chaos/", "tests/replicate_api/", "tests/providers/test_cog.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return next((n for n, prefix in enumerate(LONG_FIRST) if path.startswith(prefix)),
                    len(LONG_FIRST))

    items.sort(key=rank)  # stable: the order within each group stays as collected


# Packages whose fixtures are package-scoped (one stack for all their modules): one xdist work
# unit each, so that a single worker starts that stack. And modules whose tests share no
# fixture that starts anything, each test minutes long: one unit per test, run side by side.
# tests/redis_failover/ starts Redis servers on fixed ports: one worker may run it.
ONE_UNIT = ("tests/replicate_api/", "tests/redis_failover/")
PER_TEST = ("tests/fuzz/",)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Whole modules to each worker (`--dist loadfile`), a package of ONE_UNIT as one, the
    tests of PER_TEST one by one."""
    from xdist.scheduler import LoadFileScheduling

    class Scheduler(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(PER_TEST):
                return nodeid
            return next((p for p in ONE_UNIT if nodeid.startswith(p)),
                        super()._split_scope(nodeid))

    return Scheduler(config, log)


def pytest_report_header(config: pytest.Config) -> str:
    return f"test stack: Postgres {POSTGRES.name}, Redis {REDIS.base}, files in {TMP}"


@pytest.fixture(scope="session")
async def database() -> AsyncIterator[str]:
    """The session's database: a copy of the migrated template; dropped after the session."""
    from mediagen.db import close_db, init_db

    await DATABASES.prepare()
    url = await DATABASES.copy(TEST_DB)
    assert url == TEST_ENV["DATABASE_URL"]
    from mediagen.config import get_settings

    await init_db(get_settings())
    try:
        yield url
    finally:
        await _stack.close_all()  # whatever the order pytest finalizes the session in
        await close_db()
        await DATABASES.drop_all()


@pytest.fixture(scope="session")
def redis_dbs() -> Redis:
    """The session's Redis server: `.fresh()` is a database of the caller's own."""
    return REDIS


@pytest.fixture(scope="session")
def redis_db() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture(scope="session")
def stacks(database: str) -> Iterator[Stacks]:
    """Running API/worker processes, shared by settings, stopped at the end of the session."""
    running = Stacks(REDIS)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def default_stack(stacks: Stacks) -> _stack.Stack:
    """The API and worker processes with the default settings (shared by the session: asked
    for again by each module, as `Stacks` may have stopped them meanwhile)."""
    return stacks.get(name="default")


@pytest.fixture(scope="module")
def worker(default_stack: _stack.Stack) -> Proc:
    assert default_stack.worker is not None
    return default_stack.worker


@pytest.fixture(scope="module")
def api(default_stack: _stack.Stack) -> str:
    return default_stack.url


@pytest.fixture(scope="session")
async def in_process(database: str) -> AsyncIterator[InProcess]:
    """The application and its worker in this process, with the session's settings, consuming
    the session's default Redis queue (no worker process consumes it)."""
    from mediagen.config import get_settings

    stack = await InProcess(get_settings()).open()
    try:
        yield stack
    finally:
        await stack.close()


@pytest.fixture
async def client(in_process: InProcess) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the in-process application; a step that raised fails the test."""
    async with in_process.client() as http:
        yield http
    assert in_process.worker is not None
    in_process.worker.check()


@pytest.fixture(scope="module")
async def fresh_database(database: str) -> str:
    """A database of its own, migrated, in which no key was ever made (the session's has keys
    from other tests); dropped at the end of the session."""
    return await DATABASES.fresh()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    REDIS.stop()
    POSTGRES.stop()
    if not os.environ.get("TEST_KEEP_TMP"):
        shutil.rmtree(TMP, ignore_errors=True)


def scratch_redis(db: int | None = None) -> str:
    """A Redis database of the caller's own, empty (the number asked for is not used)."""
    return REDIS.fresh()

