"""Where a running job stands beyond its state, as its prediction's reports tell: its progress
and what it streamed so far (its place in the queue is `mediagen.jobs.dispatch.queue_position`).
"""

from __future__ import annotations

from typing import Any

from mediagen.jobs import values
from mediagen.jobs.events import Streamed
from mediagen.jobs.models import Job
from mediagen.providers.base import Prediction, PredictionStatus
from mediagen.providers.replicate.provider import parse_progress


def update(job: Job, prediction: Prediction) -> dict[str, int] | None:
    """The progress the prediction's logs report, if it differs from what the job has stored."""
    if prediction.status in (PredictionStatus.FAILED, PredictionStatus.CANCELED):
        return None
    progress = parse_progress(prediction.logs)
    return progress if progress is not None and progress != job.progress else None


def streamed(
    job: Job, prediction: Prediction, fields: dict[str, Any], max_bytes: int
) -> Streamed | None:
    """The chunks a running prediction streamed since the job last stored its output (added
    to the `fields` of the write the step makes anyway); OutputTooLargeError past `max_bytes`
    (MAX_OUTPUT_VALUE_BYTES). A provider's chunks only grow: fewer than stored (an older
    report) are nothing new."""
    chunks = prediction.output
    if not isinstance(chunks, list):
        return None
    have = len(job.output) if isinstance(job.output, list) else 0
    if len(chunks) <= have:
        return None
    values.check(chunks, max_bytes)
    fields["output"] = chunks
    return chunks[have:], have
