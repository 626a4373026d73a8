"""Which job a start message starts, and the slot it holds meanwhile (`mediagen.scheduling`).

The pipeline's `start` asks `take` first: a message naming a queued job starts the job whose
turn it is; one naming a job that is not queued (a retry, a start taken over after a crash, an
entry Redis lost) starts that job if its model has a free slot, else the job waits first in its
model's queue. Whatever ends an attempt gives its slot back (`release`), which sends the start
of the jobs that now fit. The API runs `release` too, on a Cog prediction's terminal webhook:
the server is free before the worker has stored the outputs.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from mediagen.broker import Outbox
from mediagen.catalog import Catalog, Endpoint
from mediagen.config import Settings
from mediagen.jobs import pausing
from mediagen.jobs import repository as repo
from mediagen.jobs.dispatch import level_start
from mediagen.jobs.models import Job
from mediagen.jobs.states import JobStatus, Priority
from mediagen.scheduling import Queues, Taken, level_of, pools, remove_now

log = logging.getLogger(__name__)
QUEUE_HEAD = 1000  # entries at the head of each queue checked per sweep
# What a queued job may be: pending, or retrying and waiting for a slot again.
WAITING = (JobStatus.PENDING, JobStatus.RETRYING)


class Turns:
    """The starts and slots of one process, through its outbox."""

    def __init__(self, settings: Settings, catalog: Catalog, outbox: Outbox) -> None:
        self.settings = settings
        self.catalog = catalog
        self.outbox = outbox
        self.queues = Queues(settings, catalog, outbox.client)

    async def take(self, token: str) -> Taken | None:
        """The job a start message naming `token` starts now, its slot taken; None: none (all
        wait for a slot, or `token` needs no start). Redis does not answer: `token`'s own job
        if its model has no limit (no turn to keep, no slot to count), else none (the sweeper
        sends its start again)."""
        try:
            picked = await self.queues.pick(token)
            if picked != "self":
                return picked
            job = await repo.get(token)
            if job is None or job.status.is_terminal:
                if job is not None:
                    await self.release(job)  # canceled while it held a slot: the next gets it
                return None
            if job.status is JobStatus.PROCESSING and job.prediction_id:
                return None  # a duplicate start of a running attempt
            route = self.catalog.for_job(job.provider, job.model)
            level = level_of(Priority(job.priority).rank if job.priority else 1)
            taken = await self.queues.acquire(str(job.id), level, route)
        except RedisError as exc:
            return await self._without_redis(token, exc)
        if taken is None:
            log.info("job waits for a slot", extra={"job_id": token, "model": route.name})
        return taken

    async def _without_redis(self, token: str, exc: RedisError) -> Taken | None:
        job = await repo.get(token)
        if job is not None and job.status in WAITING and not self._limited(job):
            log.warning("job %s starts out of turn (Redis: %s)", token, exc)
            return Taken(token, "")
        log.warning("job %s: no turn taken (Redis: %s); it stays as it is", token, exc)
        return None

    def _limited(self, job: Job) -> bool:
        return bool(pools(self.catalog.for_job(job.provider, job.model), self.settings))

    def endpoint(self, job: Job, taken: Taken) -> Endpoint | None:
        """The Cog server whose slot `job` holds (None: no server slot)."""
        if not taken.pool:
            return None
        return self.queues.endpoint(self.catalog.for_job(job.provider, job.model), taken.pool)

    async def unclaimed(self, job_id: str) -> None:
        """A slot was taken for a job the claim did not start: free it, unless another start
        runs the job (processing) and holds it."""
        job = await repo.get(job_id)
        if job is not None and job.status is not JobStatus.PROCESSING:
            await self.release(job)

    async def passed(self, job_id: str) -> None:
        """A job picked in turn was not started (it was no longer waiting): its own start
        message, if one is still on its way, starts nothing in its place."""
        try:
            await self.queues.unlend(job_id)
        except RedisError as exc:  # that message then starts one job too many: harmless
            log.warning("job %s: lent mark kept: %s", job_id, exc)

    async def release(self, job: Job) -> None:
        """The job's attempt (or wait) ended: its slot goes to the next in turn."""
        if not self._limited(job):
            return  # no limit: it held nothing, and nothing waits for a slot of it
        try:
            heads = await self.queues.release(
                str(job.id), self.catalog.for_job(job.provider, job.model)
            )
        except RedisError as exc:  # the hold expires; the sweeper sends the next starts
            log.warning("job %s: slot not released: %s", job.id, exc)
            return
        self.kick(heads)

    def kick(self, heads: list[tuple[str, str]]) -> None:
        """Send a start message for each job that may take a slot now (it starts whoever's
        turn it is; one too many is harmless)."""
        for job_id, level in heads:
            self.outbox.send(level_start(job_id, level))

    async def sweep(self) -> None:
        """Drop queue entries of jobs no longer waiting (a crash between a commit and its
        announcement), and send the starts that fit in every limited model's free slots."""
        await pausing.sync(self.queues, self.outbox)
        try:
            await self.prune()
            for route in self.catalog.models():
                if pools(route, self.settings):
                    self.kick(await self.queues.release("", route))
        except RedisError as exc:  # the next sweep tries again
            log.warning("sweep: queues not checked: %s", exc)

    async def prune(self) -> None:
        """Drop the queue entries of jobs that are no longer waiting (the head of each queue)."""
        head = await self.queues.heads(QUEUE_HEAD)
        if not head:
            return
        still = {
            str(job_id)
            for job_id in await Job.filter(id__in=head, status__in=WAITING).values_list(
                "id", flat=True
            )
        }
        gone = [m for m in head if m not in still]
        if gone:
            await remove_now(self.queues.client, gone)
            log.info("sweep: %d started or finished jobs dropped from the queues", len(gone))
