"""Predictions to stop at their provider: a prediction that outlived its attempt (its job was
canceled, failed or retried while it ran) is recorded here, in the statement that ended the
attempt (`mediagen.jobs.statements`, `stop_upstream`) or after it, and the record stays until
the provider confirms the cancel or it failed often enough. The worker sends the cancel at
once; the sweeper sends again the ones due (failed, or whose message was lost).
"""

from __future__ import annotations

import uuid

from mediagen.db import pool
from mediagen.jobs.statements import CANCEL_DUE


async def record(prediction_id: str, job_id: uuid.UUID | str) -> None:
    """Record that `prediction_id` must be canceled upstream (it outlived its attempt)."""
    await (await pool()).execute(
        "INSERT INTO upstream_cancels (prediction_id, job_id, provider, attempts, created_at, "
        "next_attempt_at) VALUES ($1, $2, (SELECT provider FROM jobs WHERE id = $2), 0, now(), "
        f"{CANCEL_DUE}) ON CONFLICT DO NOTHING",
        prediction_id,
        job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id)),
    )


async def owner_of(prediction_id: str) -> tuple[str, str | None] | None:
    """(provider, model) of the job a prediction was made for: the job its upstream cancel
    names, else the job that holds it, else (the job was deleted meanwhile) the provider the
    cancel recorded; None if none of them exists."""
    row = await (await pool()).fetchrow(
        "SELECT provider, model FROM jobs WHERE id = (SELECT job_id FROM upstream_cancels "
        "WHERE prediction_id = $1) UNION ALL "
        "(SELECT provider, model FROM jobs WHERE prediction_id = $1 LIMIT 1) UNION ALL "
        "(SELECT provider, NULL FROM upstream_cancels WHERE prediction_id = $1 "
        "AND provider IS NOT NULL) LIMIT 1",
        prediction_id,
    )
    return None if row is None else (row["provider"], row["model"])


async def stopped(prediction_id: str) -> None:
    """The provider confirmed the cancel (or it was given up on): the record goes."""
    await (await pool()).execute(
        "DELETE FROM upstream_cancels WHERE prediction_id = $1", prediction_id
    )


async def not_stopped(prediction_id: str, retry_in: float, give_up_after: int) -> bool:
    """A cancel failed: try again in `retry_in` s, unless it failed `give_up_after` times (then
    the record goes, and False)."""
    db = await pool()
    attempts = await db.fetchval(
        "UPDATE upstream_cancels SET attempts = attempts + 1, "
        "next_attempt_at = now() + make_interval(secs => $2::float8) "
        "WHERE prediction_id = $1 RETURNING attempts",
        prediction_id,
        float(retry_in),
    )
    if attempts is not None and attempts >= give_up_after:
        await stopped(prediction_id)
        return False
    return True


async def due(hold_for: float, limit: int) -> list[str]:
    """Cancels due again (failed, or their message lost), held for `hold_for` s meanwhile."""
    rows = await (await pool()).fetch(
        "UPDATE upstream_cancels SET next_attempt_at = now() + make_interval(secs => $1::float8) "
        "WHERE prediction_id IN (SELECT prediction_id FROM upstream_cancels "
        "WHERE next_attempt_at < now() ORDER BY next_attempt_at LIMIT $2) RETURNING prediction_id",
        float(hold_for),
        limit,
    )
    return [row["prediction_id"] for row in rows]
