"""The job row: the single source of truth for a job's state (Celery's result store is unused)."""

from __future__ import annotations

import uuid
from typing import Any

from tortoise import fields
from tortoise.indexes import Index
from tortoise.models import Model

from mediagen.jobs.states import JobStatus, Priority
from mediagen.keys.models import ApiKey


class Job(Model):
    id = fields.UUIDField(primary_key=True)
    status = fields.CharEnumField(JobStatus, max_length=16, default=JobStatus.PENDING)
    prompt = fields.TextField()
    parameters: dict[str, Any] = fields.JSONField(default=dict)
    model = fields.CharField(max_length=200, null=True)
    provider = fields.CharField(max_length=32)
    # The key that created the job; only it can see the job (NULL: created without a key).
    # RESTRICT: deleting a key must delete its jobs first, never hand them to anonymous callers.
    api_key: fields.ForeignKeyNullableRelation[ApiKey] = fields.ForeignKeyField(
        "jobs.ApiKey", related_name="jobs", null=True, on_delete=fields.RESTRICT
    )
    api_key_id: uuid.UUID | None

    # Outcome
    result_key = fields.CharField(max_length=512, null=True)
    outputs: list[dict[str, Any]] = fields.JSONField(default=list)
    # The model's output value (mediagen.jobs.values): what it returned, `null` at the place
    # of each file (`outputs[i]["at"]`); while it streams, the chunks so far (a list).
    output: Any = fields.JSONField(null=True)
    error = fields.TextField(null=True)
    # What kind of failure `error` describes, for machines (`queue_timeout`); NULL for most.
    error_code = fields.CharField(max_length=32, null=True)
    # The running prediction's last reported progress: {current, total, percent} (or NULL).
    progress: dict[str, int] | None = fields.JSONField(null=True)

    # Attempts: `attempt` counts starts (1-based once running); `retry_count` counts retries.
    attempt = fields.IntField(default=0)
    retry_count = fields.IntField(default=0)
    prediction_id = fields.CharField(max_length=200, null=True)
    # Which row of the owner's JobCounter counts this job while it is unfinished.
    quota_shard = fields.SmallIntField(null=True)

    # Durability: when the task was handed to the broker, until when the current owner holds the
    # job, and when a retry is due. The sweeper re-dispatches whatever these show as stranded.
    dispatched_at = fields.DatetimeField(null=True)
    lease_expires_at = fields.DatetimeField(null=True)
    next_attempt_at = fields.DatetimeField(null=True)
    # When a job still pending fails with `queue_timeout` (created_at + max_queue_seconds, its
    # own or its key's or model's default); NULL: it may wait as long as JOB_TIMEOUT allows.
    queue_deadline = fields.DatetimeField(null=True)

    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)
    started_at = fields.DatetimeField(null=True)
    completed_at = fields.DatetimeField(null=True)

    # Lifecycle (docs/lifecycle.md): how soon it starts, the batch it came in, how long its
    # outputs are kept (`retention_seconds`, else RESULT_TTL; `expires_at` is set when it
    # completes), the input files it uses (ids in `files`), the provider's logs (capped) and
    # what it cost (`metrics`: queue and run seconds, predict_time, bytes stored).
    priority = fields.CharEnumField(
        Priority, max_length=8, default=Priority.NORMAL, db_default=Priority.NORMAL.value
    )
    batch_id = fields.UUIDField(null=True)
    batch_index = fields.SmallIntField(null=True)  # its place in the batch (0-based)
    retention_seconds = fields.IntField(null=True)
    expires_at = fields.DatetimeField(null=True)
    input_files: list[str] | None = fields.JSONField(null=True)
    logs = fields.TextField(null=True)
    # Where the current prediction's log starts in `logs` (bytes; mediagen.jobs.joblogs).
    logs_base = fields.IntField(null=True)
    metrics: dict[str, Any] | None = fields.JSONField(null=True)

    # The request that created the job (X-Request-ID) and its trace context (W3C traceparent),
    # so every worker step, however it was dispatched, logs and traces under them.
    request_id = fields.CharField(max_length=128, null=True)
    traceparent = fields.CharField(max_length=64, null=True)
    # The API that created the job when it answers in another shape: `replicate` (its webhooks
    # carry the prediction object, mediagen.replicate_api), with the base URL the request came
    # to (`surface_base`: the webhook's absolute URLs). NULL: mediagen's own API.
    surface = fields.CharField(max_length=16, null=True)
    surface_base = fields.CharField(max_length=300, null=True)

    class Meta:
        table = "jobs"
        indexes = (
            # The sweeper scans unfinished jobs by state and due time.
            Index(fields=("status", "lease_expires_at"), name="jobs_status_lease_idx"),
            Index(fields=("status", "next_attempt_at"), name="jobs_status_next_idx"),
            Index(fields=("created_at",), name="jobs_created_idx"),
            # Queue position: pending jobs created before this one.
            Index(fields=("status", "created_at"), name="jobs_status_created_idx"),
            # Listing: one key's jobs, newest first (keyset pagination on created_at, id).
            Index(fields=("api_key_id", "created_at", "id"), name="jobs_key_created_idx"),
            # Webhooks find their job by the upstream prediction id.
            Index(fields=("prediction_id",), name="jobs_prediction_idx"),
            # A batch's jobs (counts, cancel).
            Index(fields=("batch_id",), name="jobs_batch_idx"),
            # Retention (partial indexes, made in migration 0012): completed jobs by
            # `expires_at`, finished jobs by `completed_at`. Pending jobs by `queue_deadline`
            # (partial, made in migration 0017_queue_deadline).
            # The per-model backlog on /metrics (partial, made in migration 0018_model_signals):
            # pending jobs by model, then creation time.
        )

    def __str__(self) -> str:
        return f"Job({self.id}, {self.status})"


class UpstreamCancel(Model):
    """A prediction that must be stopped upstream.

    Its job was canceled or timed out, or the attempt that created it lost the job meanwhile.
    Written with the change that calls for it, removed once the provider confirmed; the sweeper
    sends again what is still here, since a failed or lost cancel would otherwise leave a
    prediction running (and billing) upstream."""

    prediction_id = fields.CharField(max_length=200, primary_key=True)
    job_id = fields.UUIDField()
    # The job's provider, so the cancel reaches it even after the job was deleted.
    provider = fields.CharField(max_length=32, null=True)
    attempts = fields.IntField(default=0)
    created_at = fields.DatetimeField(auto_now_add=True)
    next_attempt_at = fields.DatetimeField(null=True)

    class Meta:
        table = "upstream_cancels"


ANONYMOUS = uuid.UUID(int=0)  # the counter scope of jobs created without a key
COUNTER_SHARDS = 16


class JobCounter(Model):
    """Unfinished jobs per API key (`ANONYMOUS` for keyless callers), in COUNTER_SHARDS rows.

    Kept by the same single statements that create a job and that move it to a terminal state,
    so the in-flight limit reads a row instead of counting a backlog, and can never drift. One
    row per key would make every submission of a key wait for the previous one's commit (its
    row lock is held through the WAL flush); with shards, a submission takes any shard that has
    room and is not locked (`FOR UPDATE SKIP LOCKED`), and each shard holds at most its share
    of the limit, so the total never exceeds it. A job remembers its shard (`Job.quota_shard`).

    The same statements keep the unfinished jobs by state (`pending`, `processing`,
    `retrying`; their sum is `unfinished`), so the backlog gauges of /metrics read these rows
    (a few per key) instead of counting jobs.
    """

    id = fields.IntField(primary_key=True)
    scope = fields.UUIDField()
    shard = fields.SmallIntField()
    unfinished = fields.IntField(default=0)
    pending = fields.IntField(default=0, db_default=0)
    processing = fields.IntField(default=0, db_default=0)
    retrying = fields.IntField(default=0, db_default=0)

    class Meta:
        table = "job_counters"
        unique_together = (("scope", "shard"),)
