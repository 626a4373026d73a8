"""The queues and slots in Redis, as Python sees them: one `Queues` per process, on its
outbox's client. Scripts and layout: `mediagen.scheduling._lua`.

A model's pools: a Cog model's servers (each with its slots), or, for a model of any other
provider with a `concurrency` (models file) or the CONCURRENCY setting, one pool of that many
slots (`pools`). A model with no pool has no limit of its own: the workers are its limit.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from mediagen.broker import Outbox
from mediagen.catalog import Catalog, Endpoint, ModelRoute
from mediagen.config import Settings
from mediagen.providers.cog.ids import endpoint_key
from mediagen.retry import MAX_POLL_WAIT
from mediagen.scheduling._lua import (
    ACQUIRE,
    ENQUEUE,
    PICK,
    POSITION,
    PREFIX,
    QUEUED,
    RELEASE,
    REMOVE,
)

ANONYMOUS = "-"  # the one turn all callers without a key share
HELD = PREFIX + "held:"
DOWN = PREFIX + "down:"
PAUSED = PREFIX + "paused"
LENT = PREFIX + "lent"
WEIGHTS = PREFIX + "weights"


def level_of(rank: int) -> str:
    """A priority's level in the queues ('2' high, '1' normal, '0' low)."""
    return str(max(0, min(rank, 2)))


def pool_of(endpoint: Endpoint) -> str:
    return endpoint_key(endpoint.url)


def model_pool(model: str) -> str:
    return f"model:{model}"


def pools(route: ModelRoute, settings: Settings) -> list[tuple[str, int]]:
    """Where jobs of `route` hold a slot: its Cog servers, or one pool of its concurrency;
    none when it has no limit. A listed Cog model without servers (a DNS name not resolved
    yet) has one pool of no slot: its jobs wait; one no longer listed has none, so its jobs
    start and fail saying why."""
    if route.provider == "cog":
        if not route.endpoints and route.listed:  # its DNS name has no address yet: it waits
            return [(f"none:{route.name}", 0)]
        return [(pool_of(e), e.slots) for e in route.endpoints]
    limit = route.concurrency if route.concurrency is not None else settings.model_concurrency
    return [(model_pool(route.name), limit)] if limit else []


@dataclass(frozen=True)
class Entry:
    """A pending job to queue: its model's name, its level, and whose turn it takes."""

    job_id: uuid.UUID | str
    model: str
    level: str
    key: str = ANONYMOUS
    weight: int = 0  # 0: the key's stored weight (1 if none)


@dataclass(frozen=True)
class Taken:
    """A job whose turn it is (its slot taken, if its model has a limit)."""

    job_id: str
    pool: str  # '' without a limit


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Queues:
    """The queue and slot operations of one process (each one Lua script, one round trip)."""

    def __init__(self, settings: Settings, catalog: Catalog, client: aioredis.Redis) -> None:
        self.settings = settings
        self.catalog = catalog
        self.client = client
        self._scripts: dict[str, AsyncScript] = {}
        self._margin = settings.lease_seconds + MAX_POLL_WAIT

    def _script(self, text: str) -> AsyncScript:
        script = self._scripts.get(text)
        if script is None:
            script = self._scripts[text] = self.client.register_script(text)
        return script

    # --- the spec: the catalog as the scripts see it -------------------------------------
    def _entry(self, route: ModelRoute) -> dict[str, Any] | None:
        found = pools(route, self.settings)
        if not found:
            return None
        deadline = route.deadline if route.provider == "cog" else self.settings.job_timeout
        return {"p": found, "l": int((deadline + self._margin) * 1000)}

    def spec(self, routes: Iterable[ModelRoute] | None = None) -> bytes:
        """Each limited model's pools and lease, as JSON (a model left out has no limit)."""
        out: dict[str, Any] = {}
        for route in self.catalog.models() if routes is None else routes:
            entry = self._entry(route)
            if entry is not None:
                out[route.name] = entry
        return orjson.dumps(out)

    def endpoint(self, route: ModelRoute, pool: str) -> Endpoint | None:
        """The Cog server of `pool` (None for a model pool, or a server no longer listed)."""
        return next((e for e in route.endpoints if pool_of(e) == pool), None)

    # --- starts --------------------------------------------------------------------------
    async def pick(self, token: str) -> Taken | Literal["self"] | None:
        """The job whose turn it is, for a start message naming `token` (module docstring of
        `mediagen.scheduling`); "self": `token` is not queued; None: nothing can start."""
        reply = await self._script(PICK)(args=[token, _now(), self.spec()])
        kind = _text(reply[0])
        if kind == "picked":
            return Taken(_text(reply[1]), _text(reply[2]))
        return "self" if kind == "self" else None

    async def unlend(self, job_id: str) -> None:
        """`job_id` was picked but not started: its own message no longer starts another."""
        await self.client.srem(LENT, job_id)

    async def acquire(self, job_id: str, level: str, route: ModelRoute) -> Taken | None:
        """A slot for a job that is not queued (None: it now waits, first in line)."""
        spec = self.spec([route])
        reply = await self._script(ACQUIRE)(args=[job_id, _now(), level, route.name, spec])
        return Taken(job_id, _text(reply[1])) if _text(reply[0]) == "held" else None

    async def release(self, job_id: str, route: ModelRoute) -> list[tuple[str, str]]:
        """Free the job's slot ('' : none); the jobs of its model that fit now, with levels."""
        spec = self.spec([route])
        reply = await self._script(RELEASE)(args=[job_id, _now(), route.name, spec])
        return [(_text(reply[i]), _text(reply[i + 1])) for i in range(0, len(reply), 2)]

    async def heads(self, count: int) -> list[str]:
        """The first `count` jobs of every queue (the sweeper checks they are still pending)."""
        out: list[str] = []
        for level in ("2", "1", "0"):
            models = await self.client.smembers(f"{PREFIX}active:{level}")
            for model in sorted(_text(m) for m in models):
                found = await self.client.zrange(f"{PREFIX}q:{level}:{model}", 0, count - 1)
                out += [_text(m) for m in found]
        return out

    async def queued(self, model: str) -> list[tuple[str, str]]:
        reply = await self._script(QUEUED)(args=[model])
        return [(_text(reply[i]), _text(reply[i + 1])) for i in range(0, len(reply), 2)]

    # --- pools ---------------------------------------------------------------------------
    async def holders(self, pool: str) -> list[str]:
        return [_text(m) for m in await self.client.zrange(HELD + pool, 0, -1)]

    async def set_down(self, pool: str, seconds: float, why: str) -> None:
        """Give `pool` no new work for `seconds` (or until it is set up again)."""
        await self.client.set(DOWN + pool, why, px=max(1, int(seconds * 1000)))

    async def set_up(self, pool: str) -> None:
        await self.client.delete(DOWN + pool)

    async def usage(self, routes: Sequence[ModelRoute]) -> dict[str, tuple[int, int]]:
        """Each limited model's busy and total slots (`/metrics`): the unexpired holds on its
        pools, and the slots of those not set aside (a pool set aside may still finish what it
        runs, so busy can exceed total meanwhile). One round trip for all."""
        now = _now()
        listed = [(route, pools(route, self.settings)) for route in routes]
        listed = [(route, found) for route, found in listed if found]
        async with self.client.pipeline(transaction=False) as pipe:
            for _, found in listed:
                for pool, _slots in found:
                    pipe.zcount(HELD + pool, f"({now}", "+inf")
                    pipe.exists(DOWN + pool)
            replies = iter(await pipe.execute())
        used = {}
        for route, found in listed:
            busy = total = 0
            for _, slots in found:
                busy += int(next(replies))
                total += 0 if int(next(replies)) else slots
            used[route.name] = (busy, total)
        return used

    # --- operators -----------------------------------------------------------------------
    async def paused(self) -> set[str]:
        return {_text(m) for m in await self.client.smembers(PAUSED)}

    async def set_paused(self, models: Iterable[str], paused: bool) -> None:
        names = list(models)
        if names:
            if paused:
                await self.client.sadd(PAUSED, *names)
            else:
                await self.client.srem(PAUSED, *names)

    async def set_weight(self, key: str, weight: int) -> None:
        await self.client.hset(WEIGHTS, key, weight)


async def queue_position(
    client: aioredis.Redis, job_id: uuid.UUID | str
) -> tuple[int, bool] | None:
    """`Queues.position` on any client (a status read, an event stream)."""
    ahead, paused = await AsyncScript(client, POSITION)(args=[str(job_id)])
    return None if int(ahead) < 0 else (int(ahead), bool(int(paused)))


def _now() -> int:
    return int(time.time() * 1000)


# --- through the outbox: written with the commit's other news, in its one round trip ---------
def enqueue(outbox: Outbox, entries: Sequence[Entry]) -> None:
    """Queue pending jobs, each at the end of its key's turns (module docstring)."""
    args: list[Any] = []
    for entry in entries:
        args += [str(entry.job_id), entry.level, entry.model, entry.key, entry.weight]
    if args:
        outbox.run(ENQUEUE, args)


def remove(outbox: Outbox, job_ids: Iterable[uuid.UUID | str]) -> None:
    """The jobs left the queue (started, canceled, failed, deleted)."""
    args = [str(job_id) for job_id in job_ids]
    if args:
        outbox.run(REMOVE, args)


async def remove_now(client: aioredis.Redis, job_ids: Iterable[uuid.UUID | str]) -> None:
    """`remove`, at once, for a process without an outbox at hand."""
    args = [str(job_id) for job_id in job_ids]
    if args:
        await client.register_script(REMOVE)(args=args)
