"""The job state machine. Every move is a compare-and-set on the current state (see repository).

pending ──> processing ──> completed
   │          │   ▲
   │          ▼   │
   │        retrying
   │          │
   └────────> failed  <── (processing, retrying)

and from any unfinished state (pending, processing, retrying) -> canceled, on request.
A completed job whose outputs outlived their retention becomes `expired` (its outputs deleted).
"""

from __future__ import annotations

import enum


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
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED})
UNFINISHED = frozenset({JobStatus.PENDING, JobStatus.PROCESSING, JobStatus.RETRYING})

# The states each state may be entered from. Nothing leaves a terminal state.
ALLOWED_FROM: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PROCESSING: frozenset({JobStatus.PENDING, JobStatus.RETRYING}),
    JobStatus.RETRYING: frozenset({JobStatus.PROCESSING}),
    JobStatus.COMPLETED: frozenset({JobStatus.PROCESSING}),
    JobStatus.FAILED: UNFINISHED,
    JobStatus.CANCELED: UNFINISHED,
    JobStatus.EXPIRED: frozenset({JobStatus.COMPLETED}),
}


class Priority(enum.StrEnum):
    """How soon a job starts among the queued ones (`high` before `normal` before `low`)."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2}
