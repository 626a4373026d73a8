"""Request and response bodies of the batches API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from mediagen.config import get_settings
from mediagen.jobs.schemas import _WEBHOOK, GenerateRequest
from mediagen.jobs.states import JobStatus

_SETTINGS = get_settings()  # the bound the OpenAPI schema states, as configured

BatchStatus = Literal["running", "completed", "canceled"]


class BatchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "jobs": [
                        {"prompt": "A lighthouse at dawn"},
                        {"prompt": "A lighthouse at dusk", "priority": "low"},
                    ],
                    "webhook": "https://example.com/hooks/batches",
                }
            ]
        },
    )

    jobs: list[GenerateRequest] = Field(
        ...,
        min_length=1,
        max_length=_SETTINGS.max_batch,
        description="The job requests, as `POST /api/v1/generate` takes them (at most "
        "MAX_BATCH). All are accepted or none: one invalid entry refuses the whole batch.",
    )
    webhook: str | None = Field(
        None,
        max_length=2000,
        pattern=_WEBHOOK.pattern,
        description="http(s) URL that receives one signed `batch.completed` POST (Standard "
        "Webhooks) once every job of the batch has finished; the body is the batch.",
    )


BatchCounts = create_model(  # a count for each job state (mediagen.jobs.states), in its order
    "BatchCounts",
    __doc__="How many of the batch's jobs are in each state.",
    **{str(status): (int, 0) for status in JobStatus},  # type: ignore[call-overload]
)


class BatchDetail(BaseModel):
    id: uuid.UUID
    status: BatchStatus = Field(
        description="`running` while any job is unfinished, then `completed` (whatever each "
        "job's outcome), or `canceled` if the batch was canceled."
    )
    size: int = Field(description="How many jobs the batch has.")
    counts: BatchCounts
    job_ids: list[uuid.UUID] = Field(description="The jobs, in the order they were submitted.")
    webhook: str | None
    created_at: datetime
    canceled_at: datetime | None
    completed_at: datetime | None = Field(
        description="When its last job finished; null while it is running."
    )
