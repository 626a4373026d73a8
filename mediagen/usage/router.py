"""`GET /api/v1/usage`: what the caller's jobs did and cost, per day or model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from mediagen.files import quota
from mediagen.jobs.router import Reader
from mediagen.jobs.schemas import ErrorResponse
from mediagen.keys.owners import owner_id
from mediagen.usage import service
from mediagen.usage.schemas import StorageUsage, UsageQuery, UsageReport

router = APIRouter(tags=["usage"])


@router.get(
    "/usage",
    response_model=UsageReport,
    summary="Your jobs, run seconds and bytes stored, per day or model; your storage quota",
    responses={
        401: {"model": ErrorResponse, "description": "A valid API key is required."},
        422: {
            "model": ErrorResponse,
            "description": "Bad range (`from` after `to`, over 366 days) or `group_by`.",
        },
        429: {"model": ErrorResponse, "description": "Read rate limit; see Retry-After."},
    },
)
async def get_usage(
    query: Annotated[UsageQuery, Query()], owner: Reader, request: Request
) -> UsageReport:
    """Jobs created in `[from, to)` (default: the last 30 days; at most 366 days), grouped by
    UTC day or by model: their count by current status, the seconds they ran and the bytes
    their outputs take. And the bytes of input files the key keeps now, against its storage
    quota."""
    start, end = query.bounds
    groups, total = await service.usage(start, end, query.group_by, owner_id(owner))
    storage = StorageUsage(
        bytes_used=await quota.used(owner_id(owner)),
        quota_bytes=request.app.state.settings.storage_quota_bytes,
    )
    return UsageReport(
        start=start, end=end, group_by=query.group_by, groups=groups, total=total, storage=storage
    )
