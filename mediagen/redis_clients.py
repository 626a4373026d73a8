"""Every Redis client mediagen makes, built from one place: REDIS_URL, or Sentinel, and TLS.

Without REDIS_SENTINELS a client connects to REDIS_URL. With it, REDIS_URL gives only the
password, the database number and the scheme (`rediss://`: TLS); the address of the primary is
asked of the Sentinels (REDIS_SENTINEL_MASTER) for every new connection. After a failover the
connections to the old primary fail (or, if it was demoted and still answers, its READONLY
error is turned into a reconnection by redis-py's Sentinel-managed connections), and the next
connection goes to the new primary: every process follows on its own.

Without Sentinel, a command whose pooled connection was found closed (Redis restarted) is sent
again once, at once; a Redis that is down fails at once. Every client also has TCP keepalive
with short probes, so a connection whose peer vanished
without a word (a host that died, a network that dropped it) fails within about half a minute
instead of after the kernel's two hours.

Celery's broker (kombu) is configured from the same settings (`celery_broker`): a `sentinel://`
URL with the master's name, or `rediss://` with the same certificates.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import quote

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as async_sentinel
import redis.sentinel as sync_sentinel
from redis import retry as sync_retry
from redis.asyncio import retry as async_retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.connection import parse_url

from mediagen.config import Settings

DEFAULT_URL = "redis://localhost:6379/0"
CONNECT_TIMEOUT = 2.0
SENTINEL_TIMEOUT = 1.0  # one Sentinel's answer (the next is asked when one does not answer)
# With Sentinel, a command that met a failover is sent again this often, after 0.25 s, 0.5 s...
RETRIES, RETRY_BASE, RETRY_CAP = 3, 0.25, 2.0
# Keepalive probes: the first after 10 s of silence, then every 5 s; 3 unanswered: dead.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3


def _keepalive_options() -> dict[int, int]:
    options = {}
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        if hasattr(socket, name):  # Linux; other systems keep their own timers
            options[getattr(socket, name)] = value
    return options


def url(settings: Settings) -> str:
    """REDIS_URL, or the local default."""
    return settings.redis_url.get_secret_value() if settings.redis_url else DEFAULT_URL


def uses_tls(settings: Settings) -> bool:
    return url(settings).startswith("rediss://")


def _tls(settings: Settings) -> dict[str, Any]:
    """redis-py's TLS options (the certificates checked against REDIS_TLS_CA_FILE, or the
    system's trusted ones when it is unset)."""
    if not uses_tls(settings):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required"}
    if settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    if settings.redis_tls_cert_file:
        options["ssl_certfile"] = str(settings.redis_tls_cert_file)
        options["ssl_keyfile"] = str(settings.redis_tls_key_file)
    return options


def _options(
    settings: Settings,
    asynchronous: bool,
    name: str,
    timeout: float | None,
    connect_timeout: float,
    decode: bool,
    max_connections: int | None,
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "client_name": name,
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout,
        "socket_keepalive": True,
        "socket_keepalive_options": _keepalive_options(),
        "decode_responses": decode,
        **_tls(settings),
    }
    if max_connections is not None:
        options["max_connections"] = max_connections
    retry = async_retry.Retry if asynchronous else sync_retry.Retry
    if settings.redis_sentinel_list:
        # Sentinel-managed connections get no retry by default: a command that met a failover
        # (a lost connection, a demoted primary's READONLY) is sent again, to the new primary.
        options["retry"] = retry(
            ExponentialWithJitterBackoff(base=RETRY_BASE, cap=RETRY_CAP), RETRIES
        )
    else:
        # Once, at once, and only for a connection found closed (a pooled connection to a
        # Redis that restarted): a Redis that is down still fails at once, and one that does
        # not answer within the timeout is not waited for twice.
        options["retry"] = retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
    # Pipelines (the outbox's MULTI/EXEC) are sent again on these too. A demoted primary
    # refused the whole transaction, so sending it again is safe; a connection lost after
    # EXEC could apply it twice, which the outbox's writes bear (a task message twice is run
    # once; an event twice is shown twice).
    options["retry_on_error"] = [redis.ConnectionError]
    return options


def _sentinel_parts(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what each connection to the primary takes from REDIS_URL, the Sentinels' own options)."""
    given: dict[str, Any] = parse_url(url(settings))  # type: ignore[no-untyped-call]
    primary: dict[str, Any] = {k: given[k] for k in ("username", "password", "db") if k in given}
    tls = _tls(settings)
    sentinels: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT,
        "socket_connect_timeout": SENTINEL_TIMEOUT,
        **({"ssl": True, **tls} if tls else {}),
    }
    if settings.redis_sentinel_password:
        sentinels["password"] = settings.redis_sentinel_password.get_secret_value()
    return primary, sentinels


# redis-py 8.1 asks the Sentinels for the primary only when a pool hands out a connection: a
# connection dropped inside a command's retries (after a demoted primary's READONLY) connects
# again to the address it had, the demoted primary, and every retry fails alike. These ask the
# Sentinels on every connect.
class _AsyncPrimaryConnection(async_sentinel.SentinelManagedConnection):
    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if not self.is_connected:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health, retry_socket_connect)


class _AsyncPrimarySSLConnection(_AsyncPrimaryConnection, aioredis.SSLConnection):
    pass


class _PrimaryConnection(sync_sentinel.SentinelManagedConnection):
    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if not self.is_connected:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health, retry_socket_connect)


class _PrimarySSLConnection(_PrimaryConnection, redis.SSLConnection):
    pass


class _SentinelAsyncRedis(aioredis.Redis):
    """A client of the Sentinels' primary that closes its Sentinel connections with itself."""

    sentinel_manager: async_sentinel.Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel_manager is not None:
            await self.sentinel_manager.aclose()


class _SentinelRedis(redis.Redis):
    sentinel_manager: sync_sentinel.Sentinel | None = None

    def close(self) -> None:
        super().close()
        if self.sentinel_manager is not None:
            for client in self.sentinel_manager.sentinels:
                client.close()


def async_client(
    settings: Settings,
    name: str,
    *,
    timeout: float | None = 5.0,
    connect_timeout: float = CONNECT_TIMEOUT,
    decode: bool = False,
    max_connections: int | None = None,
) -> aioredis.Redis:
    """An asyncio client named `name` (in `CLIENT LIST`): `timeout` bounds each reply (longer
    than any blocking read it makes), `decode` gives str instead of bytes."""
    options = _options(settings, True, name, timeout, connect_timeout, decode, max_connections)
    if not settings.redis_sentinel_list:
        return aioredis.from_url(url(settings), **options)
    primary, sentinel_options = _sentinel_parts(settings)
    tls = uses_tls(settings)
    options["connection_class"] = _AsyncPrimarySSLConnection if tls else _AsyncPrimaryConnection
    manager = async_sentinel.Sentinel(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_list, sentinel_kwargs=sentinel_options, **primary, **options
    )
    client: _SentinelAsyncRedis = manager.master_for(
        settings.redis_sentinel_master, redis_class=_SentinelAsyncRedis
    )
    client.sentinel_manager = manager
    return client


def sync_client(
    settings: Settings,
    name: str,
    *,
    timeout: float | None = 5.0,
    connect_timeout: float = CONNECT_TIMEOUT,
    decode: bool = False,
) -> redis.Redis:
    """A blocking client, for code that has no event loop (commands, probes)."""
    options = _options(settings, False, name, timeout, connect_timeout, decode, None)
    if not settings.redis_sentinel_list:
        return redis.Redis.from_url(url(settings), **options)
    primary, sentinel_options = _sentinel_parts(settings)
    tls = uses_tls(settings)
    options["connection_class"] = _PrimarySSLConnection if tls else _PrimaryConnection
    manager = sync_sentinel.Sentinel(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_list, sentinel_kwargs=sentinel_options, **primary, **options
    )
    client: _SentinelRedis = manager.master_for(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_master, redis_class=_SentinelRedis
    )
    client.sentinel_manager = manager
    return client


def celery_broker(settings: Settings) -> dict[str, Any]:
    """Celery settings for the broker: `broker_url`, the transport options that depend on the
    connection (Sentinel, timeouts, keepalive) and `broker_use_ssl`. The caller adds its own
    transport options (visibility timeout, priorities) to `broker_transport_options`."""
    transport: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": 5,
        "socket_keepalive": True,
        "socket_keepalive_options": _keepalive_options(),
        # A PING before reusing a connection idle this long (kombu's default is 25 s).
        # kombu also drops a BRPOP connection whose reply is this much overdue (a half-open
        # connection: the consumer recovers within about 1 + 2 x this seconds).
        "health_check_interval": 5,
    }
    conf: dict[str, Any] = {"broker_transport_options": transport}
    tls = _tls(settings)
    if tls:
        conf["broker_use_ssl"] = tls
    if not settings.redis_sentinel_list:
        conf["broker_url"] = url(settings)
        return conf
    primary, sentinel_options = _sentinel_parts(settings)
    user = quote(primary.get("username") or "", safe="")
    secret = quote(primary.get("password") or "", safe="")
    auth = f"{user}:{secret}@" if (user or secret) else ""
    db = primary.get("db", 0)
    conf["broker_url"] = ";".join(
        f"sentinel://{auth}{host}:{port}/{db}" for host, port in settings.redis_sentinel_list
    )
    transport["master_name"] = settings.redis_sentinel_master
    transport["sentinel_kwargs"] = sentinel_options
    return conf
