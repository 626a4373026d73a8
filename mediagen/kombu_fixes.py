"""Corrections to kombu's Redis transport (5.7.0) that a failover needs.

A primary that Sentinel (or an operator) turns into a replica answers a BRPOP in progress with
`UNBLOCKED ... (master -> replica?)` and a new one with `READONLY`. kombu takes either for a
plain reply error, which stops Celery's consumer for good ("Unrecoverable error", the worker
exits). Here both become the connection error they are: the consumer reconnects, and through
Sentinel it reaches the new primary. Found by tests/redis_failover; to report upstream.
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
