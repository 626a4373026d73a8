"""Everything a process tells Redis after a commit, batched: Celery task messages, job events and
the queue scripts of pending jobs, written from async code without a thread hop.

Celery's publisher (kombu) is synchronous, so async code used to publish from a thread, one
message and one round trip at a time; under load that was the largest cost of a submit. Here
each process has one `Outbox` on its event loop. Callers append what their committed
transaction implies and get a future; a background task sends everything appended meanwhile
in one MULTI/EXEC pipeline and resolves the futures (True: Redis took it all; False: it did
not, and the sweeper will find what is missing, because Postgres already holds the truth).

A task message is exactly what kombu's Redis transport LPUSHes for `send_task(...,
queue=QUEUE)` (Celery protocol 2, JSON body, base64 body encoding; see `task_message`), so
stock Celery workers consume it. A test publishes through both and compares.

Job events (`mediagen.jobs.events`) go to one Redis Stream per job; the queues of pending jobs
are changed by Lua scripts in the same transaction (`mediagen.scheduling`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import logging
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis.asyncio as aioredis

from mediagen.observability.context import current_headers

log = logging.getLogger(__name__)

QUEUE = "mediagen"  # job steps and the sweeper (a Redis list of that name)
WEBHOOK_QUEUE = "mediagen.webhooks"  # client webhook deliveries, apart so none waits behind them
QUEUES = (QUEUE, WEBHOOK_QUEUE)  # what a worker consumes
STREAM_MAXLEN = 1000  # job event streams: approximate (`MAXLEN ~`), never fewer once trimmed
STREAM_TTL = 24 * 3600  # refreshed by every event
_ORIGIN = f"mediagen@{socket.gethostname()}"
_REPLY_TO = str(uuid.uuid4())  # Celery sets one per app; results are ignored, so it is unused
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@dataclass(frozen=True)
class Task:
    """A Celery task to run: its registered name, positional arguments, and a delay."""

    name: str
    args: tuple[Any, ...]
    countdown: float = 0.0
    queue: str = QUEUE
    # kombu's Redis priority (0 is served first): the message goes to the queue's sub-list
    # for it (`queue_key`). Every step is sent at 3, where normal jobs' starts go
    # too, so they are served in order together; only a high job's start comes before them
    # (0) and a low one's after (6) (mediagen.jobs.priority).
    priority: int = 3


# kombu's Redis transport keeps one list per priority step, named `queue + SEP + step` (step 0:
# the queue's own name); its BRPOP names them in step order, so lower steps are served first.
PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEP = "\x06\x16"


def queue_key(queue: str, priority: int) -> str:
    """The Redis list kombu's `_q_for_pri` picks for a message of `priority` on `queue`."""
    step = max(s for s in PRIORITY_STEPS if s <= max(0, min(priority, 9)))
    return f"{queue}{PRIORITY_SEP}{step}" if step else queue


def task_message(
    task: Task, now: datetime | None = None, headers: Mapping[str, str] | None = None
) -> bytes:
    """The JSON document kombu's Redis transport stores for `task` (Celery message protocol 2).

    `headers` are added to the message's headers, as `apply_async(headers=...)` does; a worker
    finds them on `task.request` (the request id and trace context, mediagen.observability)."""
    task_id = str(uuid.uuid4())
    eta = None
    if task.countdown > 0:
        eta = ((now or datetime.now(UTC)) + timedelta(seconds=task.countdown)).isoformat()
    args = list(task.args)
    body = orjson.dumps([args, {}, _EMBED])
    return orjson.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": task.name,
                "id": task_id,
                "shadow": None,
                "eta": eta,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": repr(args),
                "kwargsrepr": "{}",
                "origin": f"{os.getpid()}@{_ORIGIN}",
                "ignore_result": None,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
                **(headers or {}),
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": _REPLY_TO,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": task.queue},
                "priority": task.priority,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def stream_key(job_id: uuid.UUID | str) -> str:
    return f"mediagen:events:{job_id}"


# Live worker processes: sorted set "{host}:{pid}" -> time of its last heartbeat (seconds).
# Health counts the recent ones with one ZCOUNT, whatever else Redis holds.
WORKERS = "mediagen:workers"
HEARTBEAT_TTL = 15


_SEND_ONCE = """
for i = 1, #ARGV, 4 do
  if redis.call('SET', ARGV[i], '1', 'NX', 'PX', ARGV[i + 3]) then
    redis.call('LPUSH', ARGV[i + 1], ARGV[i + 2])
  end
end
return 0
"""


@dataclass
class _Batch:
    tasks: dict[str, list[bytes]] = field(default_factory=dict)  # Redis list -> messages
    events: list[tuple[str, str, bytes]] = field(default_factory=list)
    # Lua -> the ARGV of every call of it, end to end (each script takes a list of records)
    scripts: dict[str, list[Any]] = field(default_factory=dict)
    done: asyncio.Future[bool] | None = None

    def size(self) -> int:
        return len(self.tasks) + len(self.events) + len(self.scripts)


class Outbox:
    """One per process, on its event loop. Append, then (optionally) await the returned future."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._batch = _Batch()
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # --- appending -------------------------------------------------------------------------
    def _future(self) -> asyncio.Future[bool]:
        batch = self._batch
        if batch.done is None:
            batch.done = asyncio.get_running_loop().create_future()
        if self._runner is None or self._runner.done():
            # A context of its own: the runner outlives the request or step that woke it first,
            # whose request id and trace it would otherwise carry into every later batch.
            self._runner = asyncio.create_task(
                self._run(), name="mediagen-outbox", context=contextvars.Context()
            )
        self._idle.clear()
        self._wake.set()
        return batch.done

    def send(self, task: Task) -> asyncio.Future[bool]:
        """Publish `task`, carrying the current request id and trace context."""
        message = task_message(task, headers=current_headers())
        self._batch.tasks.setdefault(queue_key(task.queue, task.priority), []).append(message)
        return self._future()

    def event(
        self, job_id: uuid.UUID | str, kind: str, data: dict[str, Any]
    ) -> asyncio.Future[bool]:
        self._batch.events.append((stream_key(job_id), kind, orjson.dumps(data)))
        return self._future()

    def send_once(self, task: Task, marker: str, seconds: float) -> asyncio.Future[bool]:
        """Publish `task` unless `marker` is set, and set it for `seconds`: at most one such
        message waits at a time, as long as its task deletes `marker` before it looks."""
        message = task_message(task, headers=current_headers())
        args = [marker, queue_key(task.queue, task.priority), message, int(seconds * 1000)]
        return self.run(_SEND_ONCE, args)

    def run(self, script: str, args: Sequence[Any]) -> asyncio.Future[bool]:
        """Run a Lua `script` with `args` (no keys) in the batch, with its task messages
        (`mediagen.scheduling`: the queues a start message reads are written in the same
        transaction). The calls of one script in a batch become one call with all their
        `args` end to end, so a script takes a list of records."""
        self._batch.scripts.setdefault(script, []).extend(args)
        return self._future()

    async def flush(self) -> bool:
        """Wait until everything appended so far has been sent (or has failed to be)."""
        if self._batch.done is not None:
            return await asyncio.shield(self._batch.done)
        await self._idle.wait()
        return True

    # --- sending -----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._batch = self._batch, _Batch()
            if batch.done is None:
                self._idle.set()
                continue
            ok = await self._send(batch)
            if not batch.done.done():
                batch.done.set_result(ok)
            if self._batch.done is None:
                self._idle.set()

    async def _send(self, batch: _Batch) -> bool:
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                # EVAL, not EVALSHA: a Redis that restarted or failed over since has no
                # script cached, and a NOSCRIPT inside MULTI would fail the batch.
                for script, args in batch.scripts.items():
                    pipe.eval(script, 0, *args)
                for queue, messages in batch.tasks.items():
                    pipe.lpush(queue, *messages)
                for key, kind, data in batch.events:
                    pipe.xadd(
                        key, {"event": kind, "data": data}, maxlen=STREAM_MAXLEN, approximate=True
                    )
                    pipe.expire(key, STREAM_TTL)
                await pipe.execute()
        except Exception as exc:  # Redis down: Postgres holds the truth, the sweeper resends
            log.warning(
                "outbox: %d messages, %d events not published: %s",
                len(batch.tasks),
                len(batch.events),
                exc,
            )
            return False
        return True

    async def close(self) -> None:
        """Send what is left, then stop."""
        if self._batch.done is not None:
            try:
                await asyncio.wait_for(self.flush(), 5)
            except TimeoutError:
                log.warning("outbox: closing with unsent messages")
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
