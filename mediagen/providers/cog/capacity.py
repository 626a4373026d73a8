"""Cog capacity as the pipeline sees it (`mediagen.providers.base.Capacity`): what a server
that turns a job away or fails its health check means for the jobs it runs.

A Cog model's servers are its pools in the scheduler (`mediagen.scheduling`): each slot one
prediction. Here:

- `turned_away`: a 409 that lasts despite our accounting (the provider sends a PUT that met one
  again for a moment first), or a refused connection, sets the server aside for a moment; the
  job waits for a slot again without counting a retry.
- `release` (the prediction's terminal webhook, in the API, `webhooks`): the server is free once
  it reports the prediction done, while the worker still stores the outputs; unless it reports
  that its worker crashed (`worker_crashed`): then it is set aside until a health check finds it
  good again.
- `sweep` (the sweeper): health-checks every server (`GET /health-check`); one that is not
  READY or BUSY gets no work until it is again, and after LOST_AFTER_FAILED_CHECKS failed checks
  in a row the jobs in flight on it run a new attempt (their predictions will never report:
  the sweeper's `lose`). And it deletes the staged outputs no job will use
  (`mediagen.providers.cog.staging`).
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
from mediagen.jobs.models import Job
from mediagen.jobs.turns import Turns
from mediagen.outbound import Outbound
from mediagen.providers.base import Lose
from mediagen.providers.cog.ids import Handle, parse_cog_id
from mediagen.providers.cog.slots import CogSlots
from mediagen.providers.cog.staging import sweep_staged
from mediagen.storage.base import Storage

log = logging.getLogger(__name__)
# Failed health checks in a row after which a Cog server's running predictions are retried.
LOST_AFTER_FAILED_CHECKS = 3


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
        self.turns = Turns(settings, catalog, outbox)
        self.slots = CogSlots(settings, self.turns.queues, outbound)

    async def release(self, job: Job) -> None:
        """The Cog job's prediction is over: its slot goes to the next in turn."""
        if job.provider == "cog":
            await self.turns.release(job)

    async def worker_crashed(self, job: Job, prediction: str) -> None:
        """The server of the job's prediction `prediction` (a Cog id) said its worker crashed:
        it is stopping, or died. It gets no new work until its health check is good again:
        the slot the prediction frees would otherwise go at once to the next job in turn,
        whose PUT would meet a refused connection and cost it an attempt."""
        handle = Handle.parse(job.prediction_id or "")
        if handle is None or handle.cog_id != prediction:  # not recorded yet: no server known
            return
        try:
            await self.turns.queues.set_down(handle.endpoint, self._down_for(), "worker crashed")
        except RedisError as failed:
            log.warning("Cog endpoint %s not set aside: %s", handle.endpoint, failed)

    async def turned_away(self, slot: Endpoint, exc: NoCapacityError) -> NoCapacityError:
        """A Cog server answered 409 despite our accounting (someone else uses it, or a
        prediction we gave up on still runs) or could not be reached: it gets no work for a
        while, and the job waits for a slot again (first in its model's queue), without
        counting a retry. What the pipeline then retries with."""
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

    def _down_for(self) -> float:
        """How long a server that failed gets no work unless a health check finds it good."""
        return max(3 * self.settings.sweep_interval, 10.0)

    # --- the sweeper's share -----------------------------------------------------------------
    async def sweep(self, lose: Lose) -> None:
        """Health checks of every Cog server, and the staged outputs no job will use."""
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
        down_for = self._down_for()
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
