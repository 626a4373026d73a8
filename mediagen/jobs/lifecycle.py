"""Every move of a job, and what follows from it once the move has committed.

A move is one guarded statement (`mediagen.jobs.repository`): it changes nothing if the job is
no longer where the caller thought (finished, retried, another attempt's), and then nothing
follows. A move that happened is followed, from what the move itself says (`Moved`), by:

- its announcement (`mediagen.jobs.events.announce`: events, webhook deliveries, batch check);
- the upstream cancel of its prediction, when the move asked for one (`stop_upstream`);
- the end of the attempt's hold on capacity (a Cog slot), when the move ended an attempt or a
  wait (`Moved.attempt_ended`) and the process keeps capacity (`attempt_ended`).

So no caller writes the announcement by hand after a write, as Polar's job queue sends only
after the commit. Each statement commits on its own, so "after the commit" is "after it
returned". A process without an outbox (a command-line tool) moves jobs all the same: what it
would have announced is found by readers reconciling with Postgres, and the sweeper sends the
recorded upstream cancels.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from types import EllipsisType
from typing import Any

from mediagen.broker import Outbox
from mediagen.jobs import events
from mediagen.jobs import repository as repo
from mediagen.jobs.dispatch import cancel_upstream_task
from mediagen.jobs.joblogs import Grown
from mediagen.jobs.models import Job
from mediagen.jobs.statements import Moved
from mediagen.jobs.states import JobStatus

log = logging.getLogger(__name__)
AttemptEnded = Callable[[Job], Awaitable[None]]


class Lifecycle:
    """The moves of jobs made by one process, announced through its outbox (None: not
    announced), with `attempt_ended` called for each move that ended an attempt. `adopt` sees
    each moved job before its announcement is sent (the worker takes on the job's request id
    when its message carried none)."""

    def __init__(
        self,
        outbox: Outbox | None,
        attempt_ended: AttemptEnded | None = None,
        adopt: Callable[[Job], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.attempt_ended = attempt_ended
        self.adopt = adopt

    async def _followed(
        self,
        moved: Moved | None,
        *,
        quiet: bool = False,
        progress: dict[str, int] | None = None,
        grown: Grown | None = None,
        streamed: events.Streamed | None = None,
        stop_upstream: bool = False,
    ) -> Moved | None:
        if moved is None:
            return None
        if self.adopt is not None:
            self.adopt(moved.job)
        if self.outbox is not None:
            if not quiet:
                events.announce(
                    self.outbox, moved, progress=progress, grown=grown, streamed=streamed
                )
            if stop_upstream and moved.job.prediction_id:
                self.outbox.send(cancel_upstream_task(moved.job.prediction_id))
        if self.attempt_ended is not None and moved.attempt_ended:
            await self.attempt_ended(moved.job)
        return moved

    # --- starting and running --------------------------------------------------------------
    async def claim(
        self, job_id: uuid.UUID | str, lease: float, job_timeout: float
    ) -> Moved | None:
        """A new attempt (`repository.claim`)."""
        return await self._followed(await repo.claim(job_id, lease, job_timeout))

    async def renew(
        self,
        job_id: uuid.UUID | str,
        attempt: int,
        lease: float,
        *,
        progress: dict[str, int] | None = None,
        grown: Grown | None = None,
        streamed: events.Streamed | None = None,
        **fields: Any,
    ) -> Moved | None:
        """Extend a running attempt's lease, storing what changed with it: `fields` (with the
        job's logs, when they `grown`, and its output, when a streaming model added chunks:
        `streamed`) and the new `progress`. New progress or chunks are a `progress` webhook."""
        if progress is not None:
            fields["progress"] = progress
        news = progress is not None or streamed is not None
        moved = await repo.renew_lease(
            job_id, attempt, lease, events=("progress",) if news else (), **fields
        )
        return await self._followed(moved, progress=progress, grown=grown, streamed=streamed)

    async def retry(
        self, job_id: uuid.UUID, attempt: int, error: str, delay: float, *, counted: bool = True
    ) -> Moved | None:
        """processing -> retrying, remembering why; counted as a retry unless it is not one
        (`counted=False`: no free slot upstream, the job only waits for one)."""
        moved = await repo.schedule_retry(job_id, attempt, error, delay, counted=counted)
        return await self._followed(moved)

    # --- finishing -------------------------------------------------------------------------
    async def complete(
        self,
        job_id: uuid.UUID | str,
        attempt: int,
        outputs: list[dict[str, Any]],
        output: Any = None,
        *,
        result_ttl: int,
        progress: dict[str, int] | None = None,
        grown: Grown | None = None,
        **fields: Any,
    ) -> Moved | None:
        """processing -> completed with its stored outputs and its output value
        (`repository.complete`, `mediagen.jobs.values`); the final `progress`, when it changed,
        is stored and announced with it."""
        if progress is not None:
            fields["progress"] = progress
        moved = await repo.complete(
            job_id,
            attempt,
            outputs[0]["key"] if outputs else None,
            outputs,
            result_ttl=result_ttl,
            events=("progress", "completed") if progress else ("completed",),
            output=output,
            **fields,
        )
        return await self._followed(moved, progress=progress, grown=grown)

    async def finish(
        self,
        job_id: uuid.UUID | str,
        to: JobStatus,
        error: str,
        *,
        attempt: int | None = None,
        owner: uuid.UUID | EllipsisType | None = ...,
        stop_upstream: bool = False,
        quiet: bool = False,
        grown: Grown | None = None,
        **fields: Any,
    ) -> Moved | None:
        """Fail or cancel an unfinished job (`repository.finish`), of `owner` when one is
        given. `stop_upstream`: its prediction is canceled upstream too. `quiet`: nothing is
        announced and no client webhook written (a job about to be deleted)."""
        moved = await repo.finish(
            job_id,
            to,
            error,
            attempt=attempt,
            owner=owner,
            events=() if quiet else None,
            stop_upstream=stop_upstream,
            **fields,
        )
        return await self._followed(moved, quiet=quiet, grown=grown, stop_upstream=stop_upstream)

    async def fail(
        self,
        job_id: uuid.UUID | str,
        error: str,
        attempt: int | None = None,
        *,
        stop_upstream: bool = False,
        grown: Grown | None = None,
        logged: dict[str, Any] | None = None,
        **fields: Any,
    ) -> bool:
        """Fail an unfinished job with `error` (public, `finish`) and log it; `logged`: more
        fields of that log line (an upstream's details, for operators only)."""
        moved = await self.finish(
            job_id,
            JobStatus.FAILED,
            error,
            attempt=attempt,
            stop_upstream=stop_upstream,
            grown=grown,
            **fields,
        )
        if moved is None:
            return False
        log.warning(
            "job failed",
            extra={"job_id": str(job_id), "attempt": attempt, "error": error, **(logged or {})},
        )
        return True

    async def time_out_queued(self, job_id: uuid.UUID | str) -> Moved | None:
        """Fail a job still pending past its queue deadline (`queue_timeout`), as any failure
        is announced: its event, its `completed` webhook, its batch, the place it waited in."""
        return await self._followed(await repo.time_out_queued(job_id))
