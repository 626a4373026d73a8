"""Corrections to kombu's Redis transport (5.7.0) that a failover needs.

A primary that Sentinel (or an operator) turns into a replica answers a BRPOP in progress with
`UNBLOCKED ... (master -> replica?)` and a new one with `READONLY`. kombu takes either for a
plain reply error, which stops Celery's consumer for good ("Unrecoverable error", the worker
exits). Here both become the connection error they are: the consumer reconnects, and through
Sentinel it reaches the new primary.

A connection that went half-open (the server or the network forgot it; nothing is closed) is
found by kombu's own check only for the BRPOP in flight: the channel's other pooled
connections are just as dead, and the next command on one (the write that records a message
just popped as unacknowledged) waits out its socket timeout and fails, losing that message
until the sweeper sends its job again (LEASE_SECONDS later). Here, when kombu drops a stale
BRPOP connection, the channel's idle connections are dropped with it, so what follows opens
fresh ones. Both found by tests/redis_failover; to report upstream.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

DEMOTED = ("UNBLOCKED", "READONLY")  # a reply's first word when its server is a replica now


def follow_demoted_primary() -> None:
    """Patch `Channel._brpop_read` once (idempotent)."""
    channel: Any = kombu_redis.Channel
    original = channel._brpop_read
    if getattr(original, "_mediagen_fix", False):
        return

    def brpop_read(self: Any, **options: Any) -> Any:
        try:
            return original(self, **options)
        except ResponseError as exc:
            if not str(exc).startswith(DEMOTED):
                raise
            self.client.connection.disconnect()
            raise RedisConnectionError(f"the broker is no longer the primary: {exc}") from exc

    brpop_read._mediagen_fix = True  # type: ignore[attr-defined]
    channel._brpop_read = brpop_read


def drop_stale_pools() -> None:
    """Patch `MultiChannelPoller.maybe_check_brpop_health` once (idempotent)."""
    poller: Any = kombu_redis.MultiChannelPoller
    original = poller.maybe_check_brpop_health
    if getattr(original, "_mediagen_fix", False):
        return

    def maybe_check_brpop_health(self: Any) -> None:
        polling = [(channel, channel._in_poll) for channel in self._channels if channel._in_poll]
        original(self)
        for channel, connection in polling:
            if getattr(connection, "_sock", True) is not None:
                continue  # still connected: it was not found stale
            for pool in (channel._pool, channel._async_pool):
                if pool is not None:
                    pool.disconnect(inuse_connections=False)

    maybe_check_brpop_health._mediagen_fix = True  # type: ignore[attr-defined]
    poller.maybe_check_brpop_health = maybe_check_brpop_health
