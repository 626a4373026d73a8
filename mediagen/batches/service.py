"""The API side of batches: accept many jobs at once, show them as one, cancel them as one.

A batch is accepted all or none: every entry is checked first (its model, priority ceiling,
webhook and input files; a refusal names the entry, `jobs[i]`), then one transaction writes the
batch and all its jobs, within the owner's MAX_JOBS_IN_FLIGHT for all N together
(`repository.insert`). Only after the commit are the jobs dispatched, as single jobs are: if
that publish fails they stay accepted and the sweeper dispatches them.

A batch has no state of its own beyond its jobs': its counts are read from them. It is marked
finished (`completed_at`), and its webhook written, by `repository.settle`, which every
terminal move of one of its jobs asks for (`mediagen.jobs.events.announce`) and the sweeper
repeats for batches whose ask was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from mediagen.batches import repository as repo
from mediagen.batches.schemas import BatchCounts, BatchDetail, BatchRequest
from mediagen.broker import Outbox
from mediagen.catalog import Catalog, get_catalog
from mediagen.config import Settings
from mediagen.errors import ConflictError, MediagenError, NotFoundError, RateLimitedError
from mediagen.files import inputs
from mediagen.jobs import repository as jobs_repo
from mediagen.jobs import service as jobs_service
from mediagen.jobs.dispatch import dispatch_new
from mediagen.jobs.priority import check_priority
from mediagen.jobs.states import UNFINISHED, JobStatus
from mediagen.keys.models import ApiKey
from mediagen.keys.owners import owner_id
from mediagen.limits import rates as quotas
from mediagen.notify import service as notify
from mediagen.observability import context, metrics

log = logging.getLogger(__name__)
_background: set[asyncio.Task[None]] = set()


async def create_batch(
    request: BatchRequest,
    settings: Settings,
    outbox: Outbox,
    owner: ApiKey | None = None,
    catalog: Catalog | None = None,
) -> BatchDetail:
    """Accept every job of the batch or none (module docstring); durable once this returns."""
    catalog = catalog or get_catalog()
    checked: set[str] = set()
    if request.webhook is not None:
        await notify.check_webhook(request.webhook, settings, owner)
        checked.add(request.webhook)
    jobs: list[repo.NewJob] = []
    for index, entry in enumerate(request.jobs):
        with _entry(index):
            route = catalog.route(entry.model)
            check_priority(entry.priority, owner, settings)
            if entry.webhook is not None and entry.webhook not in checked:
                await notify.check_webhook(entry.webhook, settings, owner)
                checked.add(entry.webhook)
        jobs.append(
            repo.NewJob(
                id=uuid.uuid4(),
                prompt=entry.prompt,
                parameters=entry.parameters.model_dump(exclude_none=True),
                model=catalog.job_model(route, entry.model),
                provider=route.provider,
                priority=str(entry.priority),
                retention_seconds=entry.retention,
                webhook=entry.webhook,
                webhook_events=entry.webhook_events_filter if entry.webhook else (),
            )
        )
    try:
        for index, job in enumerate(jobs):  # last: it may store files (data: URIs)
            with _entry(index):
                files = await inputs.accept(job.parameters, job.id, owner_id(owner), settings)
            if files:
                jobs[index] = dataclasses.replace(job, input_files=files)
    except BaseException:
        await _discard(jobs)  # the entries before the refused one stored theirs
        raise
    batch_id = uuid.uuid4()
    created_at = await repo.insert(
        batch_id,
        jobs,
        owner=owner_id(owner),
        max_in_flight=settings.max_jobs_in_flight,
        webhook=request.webhook,
        request_id=context.request_id.get(),
        traceparent=context.current_headers().get("traceparent"),
    )
    if created_at is None:
        await _discard(jobs)
        raise _too_many(settings, len(jobs))
    log.info("batch created", extra={"batch_id": str(batch_id), "size": len(jobs)})
    sent = []
    for index, job in enumerate(jobs):
        metrics.job_created(job.provider, job.model)
        job_created = created_at + timedelta(microseconds=index)
        sent.append(dispatch_new(outbox, job.id, job_created, job.priority))
    ids = [job.id for job in jobs]
    for future in set(sent):  # one outbox batch, unless it was sending meanwhile
        future.add_done_callback(lambda done: _undispatched(ids) if not done.result() else None)
    return BatchDetail(
        id=batch_id,
        status="running",
        size=len(jobs),
        counts=BatchCounts(pending=len(jobs)),
        job_ids=ids,
        webhook=request.webhook,
        created_at=created_at,
        canceled_at=None,
        completed_at=None,
    )


class _entry:
    """Names the entry in a refusal about it: `jobs[3]: ...`."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if isinstance(exc, MediagenError):
            exc.message = f"jobs[{self.index}]: {exc.message}"
            exc.args = (exc.message,)


def _too_many(settings: Settings, size: int) -> RateLimitedError:
    refused = RateLimitedError(
        f"the batch's {size} jobs do not fit within the limit of "
        f"{settings.max_jobs_in_flight} unfinished jobs; nothing was created",
        quotas.IN_FLIGHT_RETRY_AFTER,
    )
    refused.limit = "in_flight"
    return refused


async def _discard(jobs: list[repo.NewJob]) -> None:
    """The input files stored for the jobs of a refused batch."""
    for job in jobs:
        await inputs.discard(job.id, job.parameters, job.input_files)


def _undispatched(job_ids: list[uuid.UUID]) -> None:
    """The starts were not published: let the sweeper dispatch the jobs after DISPATCH_GRACE."""

    async def clear() -> None:
        try:
            await jobs_repo.clear_dispatched(job_ids)
        except Exception as exc:  # they are still dispatched, a lease later
            log.warning("batch jobs: dispatch not reset: %s", exc)

    task = asyncio.get_running_loop().create_task(clear())
    _background.add(task)
    task.add_done_callback(_background.discard)


async def settle() -> None:
    """Wait for the dispatch resets still running (at shutdown, before the pool closes)."""
    if _background:
        await asyncio.gather(*_background, return_exceptions=True)


# --- reading ---------------------------------------------------------------------------------
def detail_of(row: Mapping[str, Any]) -> BatchDetail:
    """The batch as its row and its jobs' states show it (`repository.get_owned`)."""
    counts = {str(status): 0 for status in JobStatus}
    for status in row["statuses"]:
        counts[status] += 1
    running = any(counts[str(status)] for status in UNFINISHED)
    completed_at = row["completed_at"]
    if completed_at is None and not running:  # finished; `settle` is about to say so
        completed_at = row["last_completed_at"]
    return BatchDetail(
        id=row["id"],
        status="running" if running else "canceled" if row["canceled_at"] else "completed",
        size=row["size"],
        counts=BatchCounts(**counts),
        job_ids=row["job_ids"],
        webhook=row["webhook"],
        created_at=row["created_at"],
        canceled_at=row["canceled_at"],
        completed_at=completed_at,
    )


async def get_batch(batch_id: uuid.UUID, owner: ApiKey | None) -> BatchDetail:
    """The batch if `owner` created it: another key's batch is "not found", never "forbidden"."""
    row = await repo.get_owned(batch_id, owner_id(owner))
    if row is None:
        raise NotFoundError(f"batch {batch_id} not found")
    return detail_of(row)


async def cancel_batch(batch_id: uuid.UUID, outbox: Outbox, owner: ApiKey | None) -> BatchDetail:
    """Cancel every unfinished job of the batch, each as `POST /jobs/{id}/cancel` does (its
    prediction canceled upstream, its events and webhook sent). A batch that finished before
    is 409; canceling a canceled batch again changes nothing."""
    before = await get_batch(batch_id, owner)
    if before.status == "completed":
        raise ConflictError(f"batch {batch_id} is already completed")
    if not await repo.mark_canceled(batch_id) and before.canceled_at is None:
        raise ConflictError(f"batch {batch_id} is already completed")  # just now
    row = await repo.get_owned(batch_id, owner_id(owner))
    assert row is not None
    unfinished = [
        job_id
        for job_id, status in zip(row["job_ids"], row["statuses"], strict=True)
        if status in UNFINISHED
    ]
    await asyncio.gather(*(_cancel(job_id, outbox, owner) for job_id in unfinished))
    return await get_batch(batch_id, owner)


async def _cancel(job_id: uuid.UUID, outbox: Outbox, owner: ApiKey | None) -> None:
    # Finished meanwhile (it keeps its outcome), or deleted meanwhile: nothing to cancel.
    with contextlib.suppress(ConflictError, NotFoundError):
        await jobs_service.cancel_job(job_id, outbox, owner)
