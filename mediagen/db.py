"""Tortoise ORM set-up: one connection pool per process, and versioned migrations.

The schema is created only by migrations (`mediagen migrate`, `make migrate`), never by
`generate_schemas`. `TORTOISE_ORM` makes the `tortoise` CLI work too:
`tortoise -c mediagen.db.TORTOISE_ORM makemigrations`.

The hot paths (submit, status, every job transition) are single SQL statements sent straight
through asyncpg on Tortoise's own pool (`pool()`): one round trip each, prepared once per
connection, with none of the ORM's per-query work. Everything else uses the ORM.

asyncpg's pool sends a reset query (`RESET ALL; UNLISTEN *; CLOSE ALL; ...`) each time a
connection goes back to the pool: a second round trip for every one-statement request. mediagen
never changes session state (no SET, LISTEN, advisory locks or cursors outside a transaction),
so the pool is told to skip it; an open transaction is still rolled back on release.
Connections carry `application_name` (`mediagen-api`, `mediagen-worker`...), so
`pg_stat_activity` shows who holds them.

Migrations run under a Postgres advisory lock (`migrate`), so replicas that all run
`mediagen migrate` as they start (or a migrate job beside them) apply each migration once: the
first takes the lock and migrates, the others wait for it and then find nothing to do. The
lock is a transaction-level one, held by a transaction left open on a connection of its own,
so it also holds through PgBouncer in transaction mode (which pins the server connection to
an open transaction, where a session-level lock would be left on a pooled connection). The
others try for it every MIGRATION_LOCK_POLL seconds in short transactions rather than block
inside one, so through PgBouncer they hold no server connection while they wait.

DATABASE_STATEMENT_CACHE_SIZE is asyncpg's `statement_cache_size`: how many prepared
statements each connection keeps. 0 is what PgBouncer in transaction mode needs (before 1.21,
or without its `max_prepared_statements`): a statement prepared on one server connection is
unknown to the next one the pooler hands out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from tortoise import Tortoise, connections
from tortoise.backends.asyncpg.client import AsyncpgDBClient
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.migrations.api import migrate as _migrate

from mediagen.config import Settings, get_settings
from mediagen.errors import DatabaseUnavailableError

log = logging.getLogger(__name__)

MODELS = [
    "mediagen.jobs.models",
    "mediagen.idempotency",
    "mediagen.keys.models",
    "mediagen.notify.models",
    "mediagen.signing",
    "mediagen.files.models",
    "mediagen.batches.models",
    "mediagen.scheduling.models",
]
# The advisory lock `migrate` holds: any constant, the same in every version (the first eight
# bytes of sha256("mediagen.migrate"), as a signed bigint).
MIGRATION_LOCK = 0x3078_BFAC_838A_E1FA
MIGRATION_LOCK_POLL = 0.25  # seconds between tries while another process migrates
_initialised = False
_pool: tuple[asyncio.AbstractEventLoop, asyncpg.Pool] | None = None


def database_url(settings: Settings, application_name: str = "mediagen") -> str:
    """The configured URL with the pool size and the connection's name added (Tortoise reads
    them from it)."""
    if not settings.database_url:
        raise DatabaseUnavailableError(
            "DATABASE_URL is not set; `mediagen run` starts an embedded Postgres when it is unset"
        )
    parts = urlsplit(settings.database_url.get_secret_value())
    query = dict(parse_qsl(parts.query))
    query.setdefault("minsize", "1")
    query.setdefault("maxsize", str(settings.db_pool_max))
    query.setdefault("application_name", application_name)
    query.setdefault("statement_cache_size", str(settings.database_statement_cache_size))
    return urlunsplit(parts._replace(query=urlencode(query)))


def tortoise_config(settings: Settings, application_name: str = "mediagen") -> dict[str, Any]:
    return {
        "connections": {"default": database_url(settings, application_name)},
        "apps": {
            "jobs": {
                "models": MODELS,
                "migrations": "mediagen.migrations",
                "default_connection": "default",
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


def __getattr__(name: str) -> Any:
    """`TORTOISE_ORM`, built from settings only when the `tortoise` CLI asks for it."""
    if name == "TORTOISE_ORM":
        return tortoise_config(get_settings())
    raise AttributeError(name)


async def init_db(settings: Settings | None = None, application_name: str = "mediagen") -> None:
    """Open this process's Tortoise context and its pool (once; later calls are no-ops).

    The global fallback lets every task on the process's event loop see the one context,
    whichever task or thread created it.
    """
    global _initialised
    if _initialised:
        return
    await Tortoise.init(
        config=tortoise_config(settings or get_settings(), application_name),
        _enable_global_fallback=True,
    )
    _initialised = True
    await pool()


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (module docstring)."""


async def pool() -> asyncpg.Pool:
    """This loop's asyncpg pool: the one Tortoise opened (there is no second pool).

    Kept per event loop: a forked worker process (or a test) runs another loop, and Tortoise
    then replaces its connection (`connections.get`) rather than share the parent's sockets."""
    global _pool
    loop = asyncio.get_running_loop()
    if _pool is None or _pool[0] is not loop:
        client: Any = connections.get("default")
        if client._pool is None:  # Tortoise opens its pool lazily, on the first query
            await client.execute_query("SELECT 1")
        opened = cast(asyncpg.Pool, client._pool)
        opened._reset = _keep_session  # asyncpg's `reset=` option, set after Tortoise made it
        _pool = (loop, opened)
    return _pool[1]


async def close_db() -> None:
    global _initialised, _pool
    _pool = None
    if _initialised:
        await connections.close_all()
        await Tortoise.close_connections()
        _initialised = False


async def migrate(settings: Settings | None = None) -> None:
    """Apply every pending migration (idempotent), holding the migration lock (module
    docstring): run at once by several processes, one migrates and the others wait."""
    settings = settings or get_settings()
    url = database_url(settings, "mediagen-migrate")
    credentials = {**expand_db_url(url)["credentials"], "minsize": 1, "maxsize": 1}
    holder = AsyncpgDBClient(connection_name="mediagen-migrate-lock", **credentials)
    started = time.monotonic()
    try:
        async with holder.acquire_connection() as connection:
            while True:
                async with connection.transaction():
                    if await connection.fetchval(
                        "SELECT pg_try_advisory_xact_lock($1)", MIGRATION_LOCK
                    ):
                        if (waited := time.monotonic() - started) > 1:
                            log.info("waited %.1f s for another process's migrations", waited)
                        try:
                            await _migrate(config=tortoise_config(settings, "mediagen-migrate"))
                        finally:
                            await Tortoise.close_connections()
                        return
                # Out of the transaction while waiting: through PgBouncer, waiters that each
                # kept a server connection could leave none for the migrations themselves.
                await asyncio.sleep(MIGRATION_LOCK_POLL)
    finally:
        await holder.close()


async def ping() -> None:
    """One round trip to the database; `DatabaseUnavailableError` when it does not answer."""
    try:
        await connections.get("default").execute_query("SELECT 1")
    except Exception as exc:
        raise DatabaseUnavailableError(f"database unreachable: {exc}") from exc
