"""Cog capacity as the pipeline sees it (`mediagen.providers.base.Capacity`): when a Cog job may
start, what ends its hold on a slot, and what a server that fails its health check means for
the jobs it runs.

The slots and queues themselves are `mediagen.providers.cog.slots` (Redis, Lua). Here:

- `admit` (a start step, before the claim): the job takes a slot, or waits `pending` in its
  model's queue and the step ends; no countdown, no polling.
- `release` (whatever ends an attempt: completed, failed, canceled once Cog confirmed, retried)
  frees the slot and sends the start of the queue's heads that now fit, through the outbox.
  The prediction's terminal webhook runs it first, in the API (`webhooks`): the server is free
  once it reports the prediction done, while the worker still stores the outputs.
- `turned_away`: a 409 that lasts despite our accounting (the provider sends a PUT that met one
  again for a moment first), or a refused connection, sets the endpoint aside for a moment;
  the job waits for a slot again without counting a retry.
- `sweep` (the sweeper): health-checks every endpoint (`GET /health-check`); one that is not
  READY or BUSY gets no work until it is again, and after LOST_AFTER_FAILED_CHECKS failed checks
  in a row the jobs in flight on it run a new attempt (their predictions will never report:
  the sweeper's `lose`). It drops expired slot leases and queue entries of jobs that are no
  longer waiting, and sends the start of the jobs at the head of each model's queue that fit in
  the free slots (a lost start costs a sweep, no more). And it deletes the staged outputs no
  job will use (`mediagen.providers.cog.staging`).
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from mediagen.broker import Outbox
from mediagen.catalog import Catalog, Endpoint, ModelRoute
from mediagen.config import Settings
from mediagen.errors import EndpointDownError, NoCapacityError
from mediagen.jobs import repository as repo
from mediagen.jobs.dispatch import order_priority, queue_order, start_task
from mediagen.jobs.models import Job
from mediagen.jobs.states import UNFINISHED, JobStatus
from mediagen.outbound import Outbound
from mediagen.providers.base import WAITS, Lose
from mediagen.providers.cog.ids import Handle, parse_cog_id
from mediagen.providers.cog.slots import CogSlots
from mediagen.providers.cog.staging import sweep_staged
from mediagen.storage.base import Storage

log = logging.getLogger(__name__)
# Failed health checks in a row after which a Cog server's running predictions are retried.
LOST_AFTER_FAILED_CHECKS = 3
QUEUE_HEAD = 1000  # entries at the head of a model's queue checked per sweep


class CogCapacity:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        outbox: Outbox,
        outbound: Outbound,
        storage: Storage,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.outbox = outbox
        self.storage = storage  # where outputs are staged
        self.slots = CogSlots(settings, outbox.client, outbound)

    async def admit(self, job_id: str) -> Endpoint | None:
        """For a Cog job: the endpoint whose slot it now holds, or WAITS (it waits, pending, in
        its model's queue: a `release` sends its start again when a slot is free for it). None
        for any other job (one read more per start where Cog models are routed)."""
        job = await repo.get(job_id)
        if job is None or job.provider != "cog":
            return None
        if job.status.is_terminal:  # canceled while it waited: its place goes to the next
            await self.release(job)
            return None
        if job.status is JobStatus.PROCESSING and job.prediction_id:
            return None  # a duplicate start of a running attempt: the claim refuses it
        route = self.catalog.for_job(job.provider, job.model)
        if not route.endpoints:
            return None  # no longer in the models file: the provider fails it, saying why
        try:
            order = queue_order(job.created_at, job.priority)
            slot = await self.slots.acquire(str(job.id), order, route)
        except RedisError as exc:  # the sweeper dispatches it again
            log.warning("job %s: no slot taken (Redis: %s); it stays pending", job_id, exc)
            return WAITS
        if slot is None:
            log.info("job waits for a Cog slot", extra={"job_id": job_id, "model": route.name})
            return WAITS
        return slot

    async def unclaimed(self, job_id: str) -> None:
        """A slot was taken for a job the claim did not start: free it, unless another start
        runs the job (processing) and holds it."""
        job = await repo.get(job_id)
        if job is not None and job.status is not JobStatus.PROCESSING:
            await self.release(job)

    async def release(self, job: Job) -> None:
        """The Cog job's attempt ended: free its slot and start the queue's heads that fit."""
        if job.provider != "cog":
            return
        route = self.catalog.for_job(job.provider, job.model)
        if not route.endpoints:
            return
        try:
            heads = await self.slots.release(str(job.id), route)
        except RedisError as exc:  # the lease expires; the sweeper kicks the queue
            log.warning("job %s: Cog slot not released: %s", job.id, exc)
            return
        self._kick(heads)

    def _kick(self, heads: list[tuple[str, float]]) -> None:
        """Send the start of jobs that may take a slot now, each at the priority its place in
        the queue says (a duplicate start is harmless)."""
        for job_id, order in heads:
            self.outbox.send(start_task(job_id, order_priority(order)))

    async def turned_away(self, slot: Endpoint, exc: NoCapacityError) -> NoCapacityError:
        """A Cog server answered 409 despite our accounting (someone else uses it, or a
        prediction we gave up on still runs) or could not be reached: it gets no work for a
        while, and the job waits for a slot again (first in its model's queue, by creation
        time), without counting a retry. What the pipeline then retries with."""
        down = isinstance(exc, EndpointDownError)
        busy_for = max(1.0, self.settings.poll_interval)
        seconds = 2 * self.settings.sweep_interval if down else busy_for
        try:
            await self.slots.set_down(slot, seconds, "unreachable" if down else "busy")
        except RedisError as failed:
            log.warning("Cog endpoint %s not set aside: %s", slot.url, failed)
        # Busy: try again once it may be free. Down: at once (another endpoint, or the queue
        # until the health check brings this one back).
        return type(exc)(exc.message, retry_after=None if down else seconds, **exc.details)

    async def canceled(self, prediction_id: str) -> None:
        """Cog confirmed the cancel of a prediction: its slot is free once its job is over."""
        handle = Handle.parse(prediction_id)
        parsed = parse_cog_id(handle.cog_id) if handle is not None else None
        job = await repo.get(parsed[0]) if parsed is not None else None
        if job is not None and job.status.is_terminal:
            await self.release(job)

    # --- the sweeper's share -----------------------------------------------------------------
    async def sweep(self, lose: Lose) -> None:
        """Health checks, expired slots and stale queue entries of every Cog model, and the
        staged outputs no job will use."""
        for route in self.catalog.models():
            if route.provider != "cog" or not route.endpoints:
                continue
            try:
                await self._check(route, lose)
            except Exception as exc:  # Redis down: the next sweep tries again
                log.warning("sweep: Cog model %s not checked: %s", route.name, exc)
        try:
            await sweep_staged(self.storage, self.settings)
        except Exception as exc:  # the database or storage is down: the next sweep goes on
            log.warning("sweep: staged Cog outputs not checked: %s", exc)

    async def _check(self, route: ModelRoute, lose: Lose) -> None:
        slots = self.slots
        down_for = max(3 * self.settings.sweep_interval, 10.0)
        health = await asyncio.gather(*(slots.healthy(e) for e in route.endpoints))
        for endpoint, healthy in zip(route.endpoints, health, strict=True):
            if healthy:
                await slots.set_up(endpoint)  # and its failed checks start again from 0
                continue
            await slots.set_down(endpoint, down_for, "health check failed")
            # New work stops at the first failure; the predictions it runs are given up only
            # once it has failed several checks in a row (a slow answer under load is not a
            # dead server, and each job given up costs a prediction again).
            if await slots.failed_check(endpoint, down_for) < LOST_AFTER_FAILED_CHECKS:
                continue
            for job_id in await slots.holders(endpoint):
                log.warning("sweep: Cog server %s is down; job %s runs again", endpoint.url, job_id)
                await lose(job_id, "its Cog server failed its health check")
        head = await slots.waiting_head(route, QUEUE_HEAD)
        if head:
            still = {
                str(job_id)
                for job_id in await Job.filter(id__in=head, status__in=UNFINISHED).values_list(
                    "id", flat=True
                )
            }
            await slots.drop_waiting(route, [m for m in head if m not in still])
        self._kick(await slots.release("", route))
