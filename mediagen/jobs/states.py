"""The job state machine: the one list of a job's states, and every set the service derives from
it. Every move is a compare-and-set on the current state (`mediagen.jobs.repository`).

pending ──> processing ──> completed ──> expired
   │          │   ▲
   │          ▼   │
   │        retrying
   │          │
   └────────> failed  <── (processing, retrying)

and from any unfinished state (pending, processing, retrying) -> canceled, on request.
A completed job whose outputs outlived their retention becomes `expired` (its outputs deleted).

Copies that cannot import this module (the Python client, the web page) are held against it by
`tests/client/test_states.py`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        """Finished: nothing moves it again but retention (completed -> expired)."""
        return self in TERMINAL

    @property
    def rank(self) -> int:
        """Its place in a job's life: a later state ranks higher within one attempt, so a
        reader can drop a stale or repeated `status` event (`mediagen.jobs.events.order`)."""
        return _LIFE[self]


# Finished: the job will not run again (the client stops waiting; the stream closes).
TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED})
# Unfinished: may be canceled, counts against MAX_JOBS_IN_FLIGHT, is looked after by the sweeper.
UNFINISHED = frozenset(JobStatus) - TERMINAL
# How a run ends (an expiry comes later, and is not news: no webhook, no "finished" count).
OUTCOMES = TERMINAL - {JobStatus.EXPIRED}
# Finished and holding no outputs (none were made, or retention deleted them): outputs a late
# attempt stores are discarded, and the record may be pruned.
NO_OUTPUTS = TERMINAL - {JobStatus.COMPLETED}

_LIFE = {
    JobStatus.PENDING: 0,
    JobStatus.PROCESSING: 1,
    JobStatus.RETRYING: 2,
    **{status: 3 for status in OUTCOMES},
    JobStatus.EXPIRED: 4,  # after completed: a completed job's outputs expired later
}

# The states each state may be entered from. Nothing leaves a terminal state but retention.
ALLOWED_FROM: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PROCESSING: frozenset({JobStatus.PENDING, JobStatus.RETRYING}),
    JobStatus.RETRYING: frozenset({JobStatus.PROCESSING}),
    JobStatus.COMPLETED: frozenset({JobStatus.PROCESSING}),
    JobStatus.FAILED: UNFINISHED,
    JobStatus.CANCELED: UNFINISHED,
    JobStatus.EXPIRED: frozenset({JobStatus.COMPLETED}),
}


def sql_list(states: Iterable[JobStatus]) -> str:
    """`'a', 'b'`: the states as SQL literals, in the enum's order, for an `IN (...)` written
    into a statement (they are our constants, never input)."""
    wanted = set(states)
    return ", ".join(f"'{status}'" for status in JobStatus if status in wanted)


class Priority(enum.StrEnum):
    """How soon a job starts among the queued ones (`high` before `normal` before `low`)."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2}
