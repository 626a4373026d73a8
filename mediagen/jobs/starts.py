"""Which job a start message starts: the one whose turn it is (`mediagen.jobs.turns`), claimed
as a new attempt (`Lifecycle.claim`), with the slot it holds.

A job picked in turn that cannot be claimed (an entry that reached the queue after its job was
canceled, say) does not spend the message: the next in turn is picked, STALE_PICKS times at
most (the sweeper drops stale entries), and the skipped job's own late message starts nobody
in its place. A job the claim refused because a deadline passed (JOB_TIMEOUT, or its queue
deadline while it was still pending) is failed here: the claim never starts such a job, and
the sweeper may fail it at the same moment (one of them does).
"""

from __future__ import annotations

from datetime import timedelta

from mediagen.config import Settings
from mediagen.jobs import repository as repo
from mediagen.jobs.lifecycle import Lifecycle
from mediagen.jobs.models import Job
from mediagen.jobs.states import JobStatus
from mediagen.jobs.turns import Turns
from mediagen.observability import context
from mediagen.scheduling import Taken

STALE_PICKS = 8  # jobs picked in turn but not claimable that one start message skips


class Starts:
    """The claims of one worker process."""

    def __init__(self, settings: Settings, turns: Turns, lifecycle: Lifecycle) -> None:
        self.settings = settings
        self.turns = turns
        self.lifecycle = lifecycle

    async def claim(self, job_id: str) -> tuple[Job, Taken] | None:
        """The job the start message naming `job_id` starts, claimed, and its slot; None:
        nothing to start now."""
        for _ in range(STALE_PICKS):
            taken = await self.turns.take(job_id)
            if taken is None:
                return None
            if taken.job_id != job_id:  # another job's turn: its lines carry its own ids
                context.request_id.set(None)
            context.job_id.set(taken.job_id)
            moved = await self.lifecycle.claim(
                taken.job_id, self.settings.lease_seconds, self.settings.job_timeout
            )
            if moved is not None:
                return moved.job, taken
            if taken.pool:
                await self.turns.unclaimed(taken.job_id)
            await self._not_claimed(taken.job_id)
            if taken.job_id == job_id:
                return None
            await self.turns.passed(taken.job_id)
        return None

    def expired(self, job: Job) -> bool:
        """The job is past JOB_TIMEOUT, counted from its creation."""
        return repo.now() > job.created_at + timedelta(seconds=self.settings.job_timeout)

    async def fail_deadline(self, job: Job) -> None:
        """The job is past JOB_TIMEOUT: failed, its prediction (if running) stopped."""
        await self.lifecycle.fail(
            job.id,
            f"deadline exceeded: not finished within JOB_TIMEOUT={self.settings.job_timeout:g}s",
            stop_upstream=job.status is JobStatus.PROCESSING,
        )

    async def _not_claimed(self, job_id: str) -> None:
        """The claim found nothing to start: finished, owned by another attempt, or past a
        deadline, which fails it here."""
        job = await repo.get(job_id)
        if job is None or job.status.is_terminal:
            return
        deadline = job.queue_deadline
        if job.status is JobStatus.PENDING and deadline is not None and repo.now() >= deadline:
            await self.lifecycle.time_out_queued(job.id)
            return
        if self.expired(job):
            await self.fail_deadline(job)
