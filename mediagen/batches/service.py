"""The API side of batches: accept many jobs at once, show them as one, cancel them as one.

A batch is accepted all or none: every entry is checked first, as a single job is
(`mediagen.jobs.admission`: its model, priority ceiling, webhook and input files; a refusal
names the entry, `jobs[i]`), then one transaction writes the batch and all its jobs, within
the owner's MAX_JOBS_IN_FLIGHT for all N together (`repository.insert`). Only after the commit
are the jobs dispatched, as single jobs are: if that publish fails they stay accepted and the
sweeper dispatches them.

A batch has no state of its own beyond its jobs': its counts are read from them. It is marked
finished (`completed_at`), and its webhook written, by `repository.settle`, which every
terminal move of one of its jobs asks for (`mediagen.jobs.events.announce`) and the sweeper
repeats for batches whose ask was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from mediagen.batches import repository as repo
from mediagen.batches.schemas import BatchCounts, BatchDetail, BatchRequest
from mediagen.broker import Outbox
from mediagen.catalog import Catalog, get_catalog
from mediagen.catalog.listing import InputSchemas
from mediagen.config import Settings
from mediagen.errors import ConflictError, NotFoundError
from mediagen.jobs import service as jobs_service
from mediagen.jobs.admission import Admission, dispatch
from mediagen.jobs.states import UNFINISHED, JobStatus
from mediagen.keys.models import ApiKey
from mediagen.keys.owners import owner_id
from mediagen.observability import context, metrics

log = logging.getLogger(__name__)


async def create_batch(
    request: BatchRequest,
    settings: Settings,
    outbox: Outbox,
    owner: ApiKey | None = None,
    catalog: Catalog | None = None,
    schemas: InputSchemas | None = None,
    batch_id: uuid.UUID | None = None,
) -> BatchDetail:
    """Accept every job of the batch or none (module docstring); durable once this returns.
    `schemas`: the process's input schemas, which Cog jobs' inputs are checked against;
    `batch_id`: its id (reserved by an Idempotency-Key's claim), else a new one."""
    admission = Admission(settings, owner, catalog or get_catalog(), batch=True, schemas=schemas)
    if request.webhook is not None:
        await admission.webhook(request.webhook)
    jobs = [await admission.job(entry, index) for index, entry in enumerate(request.jobs)]
    jobs = await admission.inputs(jobs)
    batch_id = batch_id or uuid.uuid4()
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
        raise await admission.refused(jobs)
    log.info("batch created", extra={"batch_id": str(batch_id), "size": len(jobs)})
    for job in jobs:
        metrics.job_created(job.provider, job.model)
    dispatch(outbox, jobs, owner, admission.catalog, "batch jobs")
    return BatchDetail(
        id=batch_id,
        status="running",
        size=len(jobs),
        counts=BatchCounts(pending=len(jobs)),
        job_ids=[job.id for job in jobs],
        webhook=request.webhook,
        created_at=created_at,
        canceled_at=None,
        completed_at=None,
    )


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


async def find_batch(batch_id: uuid.UUID, owner: ApiKey | None) -> BatchDetail | None:
    """The batch if `owner` created it, else None."""
    row = await repo.get_owned(batch_id, owner_id(owner))
    return None if row is None else detail_of(row)


async def get_batch(batch_id: uuid.UUID, owner: ApiKey | None) -> BatchDetail:
    """The batch if `owner` created it: another key's batch is "not found", never "forbidden"."""
    batch = await find_batch(batch_id, owner)
    if batch is None:
        raise NotFoundError(f"batch {batch_id} not found")
    return batch


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
