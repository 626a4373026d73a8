"""Before a server command starts: the database, Redis and the storage it needs answer, or one
line says which one does not, where it was looked for (without a password), why, and what to
do about it. `mediagen` prints that line and exits 1, rather than letting uvicorn, Celery or
Tortoise print a hundred lines of traceback (or, for Celery, retry for ever).

Each check connects once, bounded by CONNECT_TIMEOUT, and leaves nothing open behind it.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Literal
from urllib.parse import urlsplit

import asyncpg
from redis.exceptions import RedisError
from tortoise.backends.asyncpg.client import AsyncpgDBClient
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.exceptions import BaseORMException

from mediagen import db, redis_clients
from mediagen.config import Settings, mask_url
from mediagen.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    RedisUnavailableError,
    StorageError,
)
from mediagen.storage import create_storage

CONNECT_TIMEOUT = 5.0
POSTGRES_SCHEMES = ("postgres", "postgresql", "asyncpg")  # what Tortoise reads as asyncpg
Need = Literal["database", "schema", "redis", "storage"]
# A table the first migration makes: without it, `mediagen migrate` was never run here.
FIRST_TABLE = "jobs"


async def check(settings: Settings, needs: Iterable[Need]) -> None:
    """Each of `needs` answers, in order; the first that does not raises (the module
    docstring): ConfigurationError for a setting that is missing, else the dependency's
    own error (DatabaseUnavailableError, RedisUnavailableError, StorageError)."""
    checks: dict[Need, Callable[[Settings], Awaitable[None]]] = {
        "database": database,
        "schema": schema,
        "redis": redis,
        "storage": storage,
    }
    for need in needs:
        await checks[need](settings)


async def database(settings: Settings) -> None:
    if not settings.database_url:
        raise ConfigurationError(
            "DATABASE_URL is not set: set it to your Postgres "
            "(postgres://USER:PASSWORD@HOST:5432/DATABASE), or use `mediagen run`, which "
            "starts an embedded one while it is unset"
        )
    where = str(settings.database_url)
    if urlsplit(settings.database_url.get_secret_value()).scheme not in POSTGRES_SCHEMES:
        raise ConfigurationError(
            f"DATABASE_URL={where} is not a Postgres URL: "
            "postgres://USER:PASSWORD@HOST:5432/DATABASE"
        )
    try:
        client = await _tortoise_client(settings)
    except ConfigurationError:
        raise
    except Exception as exc:
        inner = innermost(exc)
        if isinstance(
            inner, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
        ):
            raise DatabaseUnavailableError(
                f"the database at {where} refused the login ({inner}): check the user and "
                "password in DATABASE_URL"
            ) from None
        if isinstance(inner, asyncpg.InvalidCatalogNameError):
            raise DatabaseUnavailableError(
                f"the database at {where} does not exist: create it (createdb), or set DATABASE_URL"
            ) from None
        raise DatabaseUnavailableError(
            f"cannot reach the database at {where} ({reason(exc)}): is Postgres running? "
            "set DATABASE_URL"
        ) from None
    await client.close()


async def _tortoise_client(settings: Settings) -> AsyncpgDBClient:
    """A connection made as the service makes its own (Tortoise's client: the URL's options,
    ssl= included), bounded by CONNECT_TIMEOUT; the caller closes it."""
    assert settings.database_url
    try:
        credentials = expand_db_url(db.database_url(settings, "mediagen-preflight"))["credentials"]
    except (ValueError, KeyError) as exc:  # a URL Tortoise cannot read
        raise ConfigurationError(
            f"DATABASE_URL={settings.database_url} is not a Postgres URL ({exc})"
        ) from None
    client = AsyncpgDBClient(
        connection_name="mediagen-preflight",
        **{**credentials, "minsize": 1, "maxsize": 1, "timeout": CONNECT_TIMEOUT},
    )
    try:
        await client.create_connection(with_db=True)
    except BaseException:
        await client.close()
        raise
    return client


async def schema(settings: Settings) -> None:
    """The database has mediagen's tables (after `database`, which says why it cannot be
    reached at all)."""
    pool = await _tortoise_client(settings)
    try:
        found = await pool.execute_query_dict("SELECT to_regclass($1) AS found", [FIRST_TABLE])
    finally:
        await pool.close()
    if found[0]["found"] is None:
        raise DatabaseUnavailableError(
            f"the database at {settings.database_url} has no mediagen tables: run "
            "`mediagen migrate` first"
        )


async def redis(settings: Settings) -> None:
    where = mask_url(redis_clients.url(settings))
    if settings.redis_sentinel_list:
        where = f"{settings.redis_sentinel_master} (Sentinels {settings.redis_sentinels})"
    elif not settings.redis_url:
        where += " (REDIS_URL is unset: the default)"
    client = redis_clients.async_client(
        settings, "mediagen-preflight", timeout=CONNECT_TIMEOUT, connect_timeout=CONNECT_TIMEOUT
    )
    try:
        await client.ping()
    except Exception as exc:
        text = str(exc).lower()
        refused_login = any(word in text for word in ("auth", "password", "noperm"))
        fix = (
            "check the password in REDIS_URL"
            if refused_login
            else "is Redis running? set REDIS_URL"
        )
        raise RedisUnavailableError(
            f"cannot reach Redis at {where} ({reason(exc)}): {fix}"
        ) from None
    finally:
        await client.aclose()


async def storage(settings: Settings) -> None:
    """The storage takes a probe object (written and deleted, as the health check does)."""
    if settings.storage_type == "s3":
        where = f"S3 bucket {settings.s3_bucket_name}"
        fix = "check S3_BUCKET_NAME, S3_ENDPOINT_URL and the AWS_* credentials"
    else:
        where = f"the directory {settings.local_storage_path.resolve()}"
        fix = "check LOCAL_STORAGE_PATH (it must be a directory this user can write)"
    store = create_storage(settings)
    try:
        await asyncio.wait_for(store.check(), 3 * CONNECT_TIMEOUT)
    except (StorageError, OSError, TimeoutError) as exc:
        # The innermost error: a store's own wraps it ("cannot write <key>: ...").
        raise StorageError(f"cannot store outputs in {where} ({reason(exc)}): {fix}") from None
    finally:
        await store.close()


def innermost(exc: BaseException) -> BaseException:
    """The error at the bottom of `exc`'s chain (drivers wrap the socket's own)."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return exc


def reason(exc: BaseException) -> str:
    """What went wrong, in a few words (from the innermost error of `exc`), without the
    addresses the line names already."""
    exc = innermost(exc)
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"unknown host: {exc.strerror}"
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return (str(exc) or type(exc).__name__).strip().splitlines()[0]


def run_command(settings: Settings, main: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine; a database or Redis that stops answering part-way becomes
    the same one-line error as one that never answered (`mediagen` prints it, exit 1)."""
    try:
        return asyncio.run(main)
    except (OSError, TimeoutError, asyncpg.PostgresError, BaseORMException) as exc:
        raise DatabaseUnavailableError(
            f"the database at {settings.database_url} failed ({reason(exc)})"
        ) from None
    except RedisError as exc:
        raise RedisUnavailableError(
            f"Redis at {settings.redis_url} failed ({reason(exc)})"
        ) from None
