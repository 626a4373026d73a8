"""Where a job stands beyond its state: the prediction's progress and the place in the queue."""

from __future__ import annotations

from mediagen.jobs.models import Job
from mediagen.jobs.states import JobStatus
from mediagen.providers.base import Prediction, PredictionStatus
from mediagen.providers.replicate import parse_progress


def update(job: Job, prediction: Prediction) -> dict[str, int] | None:
    """The progress the prediction's logs report, if it differs from what the job has stored."""
    if prediction.status in (PredictionStatus.FAILED, PredictionStatus.CANCELED):
        return None
    progress = parse_progress(prediction.logs)
    return progress if progress is not None and progress != job.progress else None


async def queue_position(job: Job) -> int | None:
    """How many pending jobs were created before this pending one (None once it has started).

    One COUNT on the (status, created_at) index.
    """
    if job.status is not JobStatus.PENDING:
        return None
    return await Job.filter(status=JobStatus.PENDING, created_at__lt=job.created_at).count()
