"""One write to a job as a single SQL statement (`mediagen.jobs.repository` says which): one
round trip, atomic with what it implies.

A transition is a guarded UPDATE, a compare-and-set on the status (and on the attempt, where an
attempt owns the job): a duplicated, late or concurrent task finds the guard false, changes
nothing and stops, so a job never moves backwards, never runs one attempt twice, and reaches a
terminal state once. The same statement writes what the transition implies:

- the client webhook deliveries its events call for (`webhook_deliveries`, if the job has a
  webhook that wants them), so a crash can never keep a transition and lose its webhook;
- on any change of state, the owner's counters (`job_counters`, the shard that counted the
  job): unfinished jobs, and unfinished jobs by state, so the in-flight limit and the backlog
  gauges read a few rows and are exact;
- when asked, the upstream cancel of the job's prediction (`upstream_cancels`), which the
  sweeper sends again until the provider confirms it.

It returns the row as it now is (`Moved`). Publishing what it means (task messages, live
events) is the caller's, after the statement has committed (`mediagen.jobs.events.announce`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from mediagen.db import pool
from mediagen.jobs.models import ANONYMOUS, Job
from mediagen.jobs.payloads import status_sql
from mediagen.jobs.sql import Expr
from mediagen.jobs.states import TERMINAL, JobStatus, sql_list
from mediagen.observability import metrics

_JSON_COLUMNS = frozenset({"parameters", "outputs", "output", "progress"})
# When the sweeper looks at a recorded upstream cancel if its own message has not settled it.
CANCEL_DUE = "now() + interval '60 seconds'"
_ISO = """'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'"""


@dataclass(frozen=True)
class Moved:
    """A job right after a successful write, the webhook deliveries written with it, and the
    state it was in when a transition moved it (None: the write was no transition)."""

    job: Job
    deliveries: tuple[uuid.UUID, ...] = ()
    was: JobStatus | None = None

    @property
    def attempt_ended(self) -> bool:
        """The write ended an attempt or a wait: the job left `processing` (or never got
        there), so whatever capacity it held or queued for is free for the next."""
        return self.was is not None and self.job.status is not JobStatus.PROCESSING


# The payload of a client webhook, as of the transition (`result_key` becomes `result_url`
# when sent; see mediagen.notify.delivery). A job of another surface (`surface`) carries it
# too, so the sender shapes its body that way; other payloads stay as they always were.
_PAYLOAD = f"""(jsonb_build_object(
    'event', e.event, {status_sql("moved")}, 'progress', moved.progress,
    'created_at', to_char(moved.created_at AT TIME ZONE 'UTC', {_ISO}),
    'updated_at', to_char(moved.updated_at AT TIME ZONE 'UTC', {_ISO}))
    || CASE WHEN moved.surface IS NULL THEN '{{}}'::jsonb
       ELSE jsonb_build_object('surface', moved.surface) END)"""


_TERMINAL = sql_list(TERMINAL)
# The owner's counter row after `moved` left `was`: one fewer unfinished job if it finished,
# and one job moved between the unfinished states' counts.
_RECOUNT = f"""unfinished = job_counters.unfinished
        - (moved.status IN ({_TERMINAL}) AND moved.was NOT IN ({_TERMINAL}))::int,
    pending = job_counters.pending + (moved.status = 'pending')::int
        - (moved.was = 'pending')::int,
    processing = job_counters.processing + (moved.status = 'processing')::int
        - (moved.was = 'processing')::int,
    retrying = job_counters.retrying + (moved.status = 'retrying')::int
        - (moved.was = 'retrying')::int"""


class Statement:
    """Builds one statement's text and arguments. The text depends only on which columns are
    set and how, so each shape is prepared once per connection and reused."""

    def __init__(self) -> None:
        self.args: list[Any] = []

    def arg(self, value: Any, cast: str = "") -> str:
        self.args.append(value)
        return f"${len(self.args)}{cast}"

    def sets(self, fields: Mapping[str, Any]) -> str:
        parts = []
        for column, value in fields.items():
            if isinstance(value, Expr):
                sql = value.sql.format(*(self.arg(a) for a in value.args))
            elif column in _JSON_COLUMNS and value is not None:
                sql = self.arg(orjson.dumps(value).decode(), "::jsonb")
            else:
                sql = self.arg(value)
            parts.append(f"{column} = {sql}")
        return ", ".join(parts)

    def update(
        self,
        where: str,
        fields: Mapping[str, Any],
        *,
        events: Sequence[str] = (),
        stop_upstream: bool = False,
    ) -> str:
        """UPDATE jobs ... RETURNING the row, plus what the change implies (module docstring)."""
        if "status" in fields:  # lock the row first, to know the state it leaves
            sql = [
                f"WITH before AS (SELECT id AS before_id, status AS was FROM jobs WHERE {where} "
                f"FOR UPDATE), moved AS (UPDATE jobs SET updated_at = now(), "
                f"{self.sets(fields)} FROM before WHERE jobs.id = before.before_id "
                "RETURNING jobs.*, before.was)"
                f", counted AS (UPDATE job_counters SET {_RECOUNT} FROM moved "
                f"WHERE job_counters.scope = coalesce(moved.api_key_id, '{ANONYMOUS}'::uuid) "
                "AND job_counters.shard = moved.quota_shard AND moved.was <> moved.status)"
            ]
        else:
            sql = [
                f"WITH moved AS (UPDATE jobs SET updated_at = now(), {self.sets(fields)} "
                f"WHERE {where} RETURNING jobs.*)"
            ]
        if stop_upstream:  # the job's prediction, if any, is to be canceled upstream
            sql.append(
                ", stopping AS (INSERT INTO upstream_cancels "
                "(prediction_id, job_id, provider, attempts, created_at, next_attempt_at) "
                f"SELECT moved.prediction_id, moved.id, moved.provider, 0, now(), {CANCEL_DUE} "
                "FROM moved "
                "WHERE moved.prediction_id IS NOT NULL ON CONFLICT (prediction_id) DO NOTHING)"
            )
        if events:
            sql.append(
                ", delivered AS (INSERT INTO webhook_deliveries "
                "(id, job_id, event, url, payload, status, attempts, created_at) "
                f"SELECT gen_random_uuid(), moved.id, e.event, w.url, {_PAYLOAD}, 'pending', 0, "
                "clock_timestamp() FROM moved JOIN job_webhooks w ON w.job_id = moved.id "
                f"CROSS JOIN unnest({self.arg(list(events), '::text[]')}) "
                "WITH ORDINALITY AS e(event, n) "
                "WHERE w.events ? e.event AND (e.event <> 'start' OR moved.attempt = 1) "
                "ORDER BY e.n RETURNING id)"
                " SELECT moved.*, ARRAY(SELECT id FROM delivered) AS delivery_ids FROM moved"
            )
        else:
            sql.append(" SELECT moved.* FROM moved")
        return "".join(sql)


async def execute(statement: Statement, sql: str) -> Moved | None:
    """Run the statement: the job as it now is, or None when its guard found nothing."""
    record = await (await pool()).fetchrow(sql, *statement.args)
    if record is None:
        return None
    row = dict(record)
    deliveries = tuple(row.pop("delivery_ids", None) or ())
    was = row.pop("was", None)
    if was is not None:  # counted here: once per change, by whichever process made it
        metrics.job_moved(
            was,
            row["status"],
            row["provider"],
            row["model"],
            row["created_at"],
            row["started_at"],
            row["completed_at"],
        )
    return Moved(Job._init_from_db(**row), deliveries, None if was is None else JobStatus(was))
