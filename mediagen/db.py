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
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from tortoise import Tortoise, connections
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
]
_initialised = False
_pool: tuple[asyncio.AbstractEventLoop, asyncpg.Pool] | None = None


def database_url(settings: Settings, application_name: str = "mediagen") -> str:
    """The configured URL with the pool size and the connection's name added (Tortoise reads
    them from it)."""
    if not settings.database_url:
        raise DatabaseUnavailableError(
            "DATABASE_URL is not set; `mediagen run` starts an embedded Postgres when it is unset"
        )
    parts = urlsplit(settings.database_url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("minsize", "1")
    query.setdefault("maxsize", str(settings.db_pool_max))
    query.setdefault("application_name", application_name)
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
    """Apply every pending migration (idempotent)."""
    await _migrate(config=tortoise_config(settings or get_settings()))
    await Tortoise.close_connections()


async def ping() -> None:
    """One round trip to the database; `DatabaseUnavailableError` when it does not answer."""
    try:
        await connections.get("default").execute_query("SELECT 1")
    except Exception as exc:
        raise DatabaseUnavailableError(f"database unreachable: {exc}") from exc
