"""The pipeline's side of Cog capacity: when a Cog job may start, what ends its hold on a slot,
and what a server that fails its health check means for the jobs it runs.

The slots and queues themselves are `mediagen.providers.cog.slots` (Redis, Lua). Here:

- `admit` (a start step, before the claim): the job takes a slot, or waits `pending` in its
  model's queue and the step ends; no countdown, no polling.
- `release` (whatever ends an attempt: completed, failed, canceled once Cog confirmed, retried)
  frees the slot and sends the start of the queue's heads that now fit, through the outbox.
- `turned_away`: a 409 despite our accounting, or a refused connection, sets the endpoint
  aside for a moment; the job waits for a slot again without counting a retry.
- `lose` (the sweeper, for an endpoint whose health check failed): the job runs a new attempt
  at once, as after a missed webhook's deadline.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from mediagen.catalog import Endpoint
from mediagen.errors import EndpointDownError, NoCapacityError, PredictionLostError
from mediagen.jobs import repository as repo
from mediagen.jobs.dispatch import order_priority, queue_order, start_task
from mediagen.jobs.models import Job
from mediagen.jobs.states import JobStatus
from mediagen.providers.cog.slots import CogSlots

if TYPE_CHECKING:
    from mediagen.jobs.pipeline import Pipeline

log = logging.getLogger(__name__)
WAITS = Endpoint("", 0)  # what `admit` answers for a job that waits in its model's queue


class CogCapacity:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.settings = pipeline.settings
        self.catalog = pipeline.providers.catalog
        self.slots = CogSlots(
            pipeline.settings, pipeline.outbox.client, pipeline.providers.outbound
        )

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
        self.kick(heads)

    def kick(self, heads: list[tuple[str, float]]) -> None:
        """Send the start of jobs that may take a slot now, each at the priority its place in
        the queue says (a duplicate start is harmless)."""
        for job_id, order in heads:
            self.pipeline.outbox.send(start_task(job_id, order_priority(order)))

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
        return type(exc)(exc.message, retry_after=None if down else seconds)

    async def lose(self, job_id: str, reason: str) -> None:
        """A Cog job's server failed its health check: its prediction will never report, so
        the job runs a new attempt now (as after a missed webhook's deadline)."""
        job = await repo.get(job_id)
        if job is None:
            return
        if job.status is JobStatus.PROCESSING:
            await self.pipeline._on_error(job, job.attempt, PredictionLostError(reason))
        elif job.status.is_terminal:
            await self.release(job)

    async def release_canceled(self, prediction_id: str) -> None:
        """Cog confirmed the cancel of a prediction: its slot is free once its job is over."""
        from mediagen.providers.cog.ids import Handle, parse_cog_id

        handle = Handle.parse(prediction_id)
        parsed = parse_cog_id(handle.cog_id) if handle is not None else None
        job = await repo.get(parsed[0]) if parsed is not None else None
        if job is not None and job.status.is_terminal:
            await self.release(job)
