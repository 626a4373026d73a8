"""The shapes of `GET /api/v1/usage`: the query, and one row per group plus the total."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mediagen.jobs.schemas import IsoDatetime

DEFAULT_DAYS = 30
MAX_DAYS = 366  # a year and a leap day: the cost of a request stays bounded

GroupBy = Literal["day", "model"]


class UsageQuery(BaseModel):
    """The range `[from, to)` of job creation times (UTC) and how to group it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: IsoDatetime | None = Field(
        None, alias="from", description="Jobs created at or after this (default: `to` - 30 days)."
    )
    end: IsoDatetime | None = Field(
        None, alias="to", description="Jobs created before this (default: now)."
    )
    group_by: GroupBy = Field("day", description="`day` (UTC) or `model`.")

    @model_validator(mode="after")
    def _range(self) -> Self:
        end = self.end or datetime.now(UTC)
        if self.start is not None:
            start = self.start
        elif end - datetime.min.replace(tzinfo=UTC) > timedelta(days=DEFAULT_DAYS):
            start = end - timedelta(days=DEFAULT_DAYS)
        else:  # `to` in the first days of year 1
            start = datetime.min.replace(tzinfo=UTC)
        if start > end:
            raise ValueError("`from` must not be after `to`")
        if end - start > timedelta(days=MAX_DAYS):
            raise ValueError(f"the range may span at most {MAX_DAYS} days")
        self.start, self.end = start, end
        return self

    @property
    def bounds(self) -> tuple[datetime, datetime]:
        assert self.start is not None and self.end is not None  # set by the validator
        return self.start, self.end


class UsageGroup(BaseModel):
    group: str | None = Field(
        description="The day (`YYYY-MM-DD`, UTC) or the model; null in the total, and for "
        "jobs that named no model."
    )
    jobs: int = Field(description="Jobs created in the range.")
    by_status: dict[str, int] = Field(description="Those jobs by their current status.")
    run_seconds: float = Field(
        description="Sum over them of `completed_at - started_at` (jobs that started and ended)."
    )
    bytes_stored: int = Field(description="Sum of the sizes of their stored outputs.")


class StorageUsage(BaseModel):
    bytes_used: int = Field(
        description="Bytes of the input files the key keeps now (uploads, data: and https:// "
        "inputs; outputs are not counted here)."
    )
    quota_bytes: int = Field(
        description="The most it may keep (STORAGE_QUOTA_BYTES); 0: no quota. Past it, "
        "uploads answer 413 `storage_quota_exceeded`."
    )


class UsageReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")
    group_by: str
    groups: list[UsageGroup] = Field(description="Groups with at least one job, in order.")
    total: UsageGroup
    storage: StorageUsage = Field(description="The key's input files now, and its quota.")
