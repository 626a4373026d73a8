"""Who delivers now: a worker process's webhook attempts, shared fairly between keys and receivers.

Attempts run as tasks on the worker's event loop, at most WEBHOOK_CONCURRENCY at once per
process; a task thread only hands the delivery over and returns. So that a slow receiver delays
only its owner:

- **Shares.** One key (all anonymous callers together count as one) holds at most
  WEBHOOK_CONCURRENCY_PER_KEY of the process's attempts in progress (waiting for a slot
  included), and one receiver (host and port) at most WEBHOOK_CONCURRENCY_PER_HOST; each is
  never more than half of WEBHOOK_CONCURRENCY. A delivery over its key's or its receiver's
  share is put off.
- **Turns.** When every slot is busy, the deliveries waiting for one get it a key at a time in
  turn, not in the order they came.
- **Circuits** (`mediagen.notify.circuit`): a receiver that keeps failing gets no attempt for a
  cool-down; its deliveries are put off until it may be tried again.

A delivery put off spends no attempt and is never failed for it: it goes back to the broker
with a countdown (`mediagen.retry.webhook_deferrals`: about a second, growing each time the
same delivery is put off again, or until its receiver's circuit may close), and its
`next_attempt_at` says when. Shares and turns are counted in each worker process; circuits
are shared by all of them through Redis.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Callable

from mediagen import retry as retry_policy
from mediagen.broker import Task
from mediagen.config import Settings
from mediagen.notify import delivery_task
from mediagen.notify.circuit import Circuits
from mediagen.notify.delivery import Bodies, Outcome, attempt, due, move, owner_key, receiver
from mediagen.notify.models import DeliveryStatus, WebhookDelivery
from mediagen.observability import metrics
from mediagen.outbound import Outbound
from mediagen.storage.base import Storage

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"  # the share of every job made without a key, together


def share(cap: int, slots: int) -> int:
    """What one key or receiver may hold of `slots`: `cap`, and never more than half."""
    return max(1, min(cap, slots // 2))


class Turns:
    """`size` slots; when none is free, the next goes to the waiting keys in turn."""

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    async def acquire(self, key: str) -> None:
        if self.free > 0 and not self.waiting:
            self.free -= 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(key, deque()).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed a slot as it was cancelled: pass it on
            elif turn in self.waiting.get(key, ()):
                self.waiting[key].remove(turn)
                if not self.waiting[key]:
                    del self.waiting[key]
            raise

    def release(self) -> None:
        while self.waiting:
            key, queue = next(iter(self.waiting.items()))
            turn = queue.popleft()
            if queue:
                self.waiting.move_to_end(key)  # its next waits for every other key's turn
            else:
                del self.waiting[key]
            if not turn.done():
                turn.set_result(None)
                return
        self.free += 1


class Deliverer:
    """The worker process's webhook attempts (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        outbound: Outbound,
        publish: Callable[[Task], asyncio.Future[bool]],
        bodies: Bodies | None = None,
        circuits: Circuits | None = None,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.outbound = outbound
        self.publish = publish
        self.bodies: Bodies = dict(bodies or {})
        self.circuits = circuits
        slots = settings.webhook_concurrency
        self.per_key = share(settings.webhook_concurrency_per_key, slots)
        self.per_host = share(settings.webhook_concurrency_per_host, slots)
        self.keys: Counter[str] = Counter()  # attempts in progress or waiting, by key...
        self.hosts: Counter[str] = Counter()  # ...and by receiver
        self._turns = Turns(slots)
        self._deferrals = retry_policy.webhook_deferrals(settings)
        self._running: set[asyncio.Task[None]] = set()

    def submit(self, delivery_id: str, deferred: int = 0) -> None:
        """Start an attempt (call on the loop); `deferred`: how often it was put off so far."""
        task = asyncio.get_running_loop().create_task(self._run(delivery_id, deferred))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, delivery_id: str, deferred: int) -> None:
        try:
            outcome = await self._admitted(delivery_id, deferred)
        except Exception:  # the delivery stays pending; the sweeper sends it again
            log.exception("webhook delivery %s: attempt failed", delivery_id)
            return
        if outcome.countdown is not None:
            self.publish(delivery_task(delivery_id, outcome.countdown))

    async def _admitted(self, delivery_id: str, deferred: int) -> Outcome:
        """The attempt, if the delivery's key and receiver are within their shares and the
        receiver's circuit lets it through; else the delivery is put off."""
        delivery = await WebhookDelivery.get_or_none(id=delivery_id)
        if delivery is None or delivery.status is not DeliveryStatus.PENDING:
            return Outcome()
        if not due(delivery):  # in flight, or another message of it is on its way
            return Outcome()
        key_id = await owner_key(delivery)
        key, host = str(key_id) if key_id else ANONYMOUS, receiver(delivery.url)
        if self.keys[key] >= self.per_key:
            return await self._put_off(delivery, deferred, "key")
        if self.hosts[host] >= self.per_host:
            return await self._put_off(delivery, deferred, "host")
        self.keys[key] += 1
        self.hosts[host] += 1
        try:
            closed_in = await self.circuits.closed_in(host) if self.circuits else 0.0
            if closed_in > 0:
                return await self._put_off(delivery, deferred, "circuit", closed_in)
            await self._turns.acquire(key)
            try:
                outcome = await attempt(
                    delivery, key_id, self.settings, self.storage, self.outbound, self.bodies
                )
                if self.circuits is not None:  # before the receiver's share is given back
                    await self.circuits.record(host, outcome.answered)
            finally:
                self._turns.release()
            return outcome
        finally:
            _give_back(self.keys, key)
            _give_back(self.hosts, host)

    async def _put_off(
        self, delivery: WebhookDelivery, deferred: int, why: str, closed_in: float = 0.0
    ) -> Outcome:
        """Send the delivery again later, without an attempt; when, `next_attempt_at` says."""
        countdown = self._deferrals.delay(deferred, closed_in or None)
        if await move(delivery, countdown):
            metrics.webhook_deferred(why)
            self.publish(delivery_task(delivery.id, countdown, deferred + 1))
        return Outcome()

    async def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)


def _give_back(counts: Counter[str], name: str) -> None:
    counts[name] -= 1
    if counts[name] <= 0:
        del counts[name]
