"""Where a job stands beyond its state: the prediction's progress (its place in the queue is
`mediagen.jobs.dispatch.queue_position`)."""

from __future__ import annotations

from mediagen.jobs.models import Job
from mediagen.providers.base import Prediction, PredictionStatus
from mediagen.providers.replicate.provider import parse_progress


def update(job: Job, prediction: Prediction) -> dict[str, int] | None:
    """The progress the prediction's logs report, if it differs from what the job has stored."""
    if prediction.status in (PredictionStatus.FAILED, PredictionStatus.CANCELED):
        return None
    progress = parse_progress(prediction.logs)
    return progress if progress is not None and progress != job.progress else None
