"""A finished prediction's outputs: streamed into storage, measured, or deleted when unused.

Kept apart from the pipeline's steps: what is stored and how it is counted (`metrics`) is the
same whichever step finishes the job (a poll, or a webhook through `on_prediction`).

The files are the outputs; the rest of what the model returned (text, numbers, JSON) is the
job's output value, kept beside them (`mediagen.jobs.values`): each stored output records its
place in that value (`at`), so readers show the value with the file's URL there.

A job keeps at most MAX_OUTPUTS_PER_JOB outputs, whatever its provider returns (`check_count`):
a prediction with more fails the job, saying so, and none of them is kept (keeping the first
ones would hand the caller a silently partial result). Cog's webhooks apply the same rule
before they stage anything.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from mediagen.errors import PermanentProviderError
from mediagen.jobs import repository as repo
from mediagen.jobs import thumbnails
from mediagen.jobs.states import NO_OUTPUTS
from mediagen.observability import tracing
from mediagen.providers.base import Prediction, Provider
from mediagen.storage.base import Storage

log = logging.getLogger(__name__)


async def claim_finish(client: aioredis.Redis, job_id: Any, attempt: int, hold: int) -> bool:
    """Whether this step may store the attempt's outputs: False while another step of the same
    attempt does (a Cog or Replicate completion webhook dispatches a poll while the regular
    poll may run too; a Cog staged output can be moved only once, so the second would fail the
    attempt for nothing). Held `hold` seconds (a lease): a finisher that died is replaced once
    its lease ran out. Redis down: no claim is kept, and both may try, as before."""
    try:
        claimed = await client.set(f"mediagen:finishing:{job_id}:{attempt}", 1, nx=True, ex=hold)
    except RedisError:
        return True
    return bool(claimed)


def check_count(count: int, limit: int) -> None:
    """PermanentProviderError when a prediction returned more outputs than a job keeps."""
    if count > limit:
        raise PermanentProviderError(
            f"the prediction returned {count} outputs, more than MAX_OUTPUTS_PER_JOB ({limit}) "
            "allows; none was kept"
        )


async def store(
    provider: Provider, storage: Storage, job_id: str, prediction: Prediction, max_outputs: int
) -> list[dict[str, Any]]:
    """Every output file of the prediction, streamed from the provider into storage: their
    `{key, content_type, size}` (and `at`, their place in the output value, when it has one).
    Raises the provider's or the storage's error (nothing of a failed output is kept; the ones
    before it are overwritten by the next attempt's), and PermanentProviderError for more than
    `max_outputs` outputs (before any is fetched) or for neither a file nor a value. An image
    gets its thumbnail (`thumbnail_key`: `mediagen.jobs.thumbnails`)."""
    if not prediction.outputs and prediction.output is None:
        raise PermanentProviderError("the prediction succeeded without any output")
    check_count(len(prediction.outputs), max_outputs)
    stored: list[dict[str, Any]] = []
    for index, output in enumerate(prediction.outputs):
        async with provider.fetch(output) as fetched:  # streams into storage
            key = storage.key_for(job_id, index, fetched.ext)
            with tracing.span("storage.put", {"mediagen.storage.key": key}) as span:
                size = await storage.save(key, fetched.body, fetched.content_type)
                span.set_attribute("mediagen.storage.bytes", size)
            data = fetched.body if isinstance(fetched.body, bytes) else None
        record: dict[str, Any] = {"key": key, "content_type": fetched.content_type, "size": size}
        if thumbnail := await thumbnails.make(storage, key, fetched.content_type, size, data):
            record["thumbnail_key"] = thumbnail
        if output.at is not None:
            record["at"] = list(output.at)
        stored.append(record)
    return stored


async def discard_unused(storage: Storage, job_id: Any, outputs: list[dict[str, Any]]) -> None:
    """The completion found the job no longer this attempt's: a job canceled, failed or
    deleted (its row gone: `DELETE /jobs/{id}`) while its outputs were being stored keeps
    none of them. (The same keys of a job another attempt completed, or runs now, are that
    attempt's: left alone.)"""
    now = await repo.get(job_id)
    if now is None or now.status in NO_OUTPUTS:
        for output in outputs:
            for key in thumbnails.keys_of(output):
                await storage.delete(key)
        why = "deleted" if now is None else str(now.status)
        log.info("job %s: %s while finishing; its outputs were deleted", job_id, why)
