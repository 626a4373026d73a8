"""What happened, from the three places that know: the `jobs` table (plus an audit trigger
installed only in the chaos database), the fake Replicate's counters, and the stored files.

- lost: accepted (201) but not terminal by the deadline, or not in the table at all;
- duplicated effect: more than one terminal transition (audit), a terminal row that changed
  after it was first seen (completed_at, status), or a completed job whose files are not exactly
  its outputs' keys `{job_id}.{ext}` / `{job_id}-{n}.{ext}` with the recorded sizes;
  `completed -> expired` (retention deleting the outputs later) is none of these: an expired
  job finished once, as completed;
- extra upstream creates: predictions created minus the attempts that may create one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from mediagen.jobs.states import JobStatus

# The finished states, the server's (plain strings, as the table holds them).
TERMINAL = tuple(str(status) for status in JobStatus if status.is_terminal)
# The one move out of a finished state: retention deleting a completed job's outputs.
_RETENTION = "(old_status = 'completed' AND new_status = 'expired')"


def outcome(status: str) -> str:
    """How a job finished: an expired one completed (its outputs were deleted later)."""
    return "completed" if status == "expired" else status


# Every change of status/attempt/completed_at, as the database saw it (after the guard ran).
AUDIT_SQL = """
CREATE TABLE chaos_transitions (
    seq bigserial PRIMARY KEY, job_id uuid NOT NULL, old_status text, new_status text,
    old_attempt int, new_attempt int, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION chaos_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.status IS DISTINCT FROM OLD.status OR NEW.attempt IS DISTINCT FROM OLD.attempt
     OR NEW.completed_at IS DISTINCT FROM OLD.completed_at THEN
    INSERT INTO chaos_transitions (job_id, old_status, new_status, old_attempt, new_attempt)
    VALUES (NEW.id, OLD.status, NEW.status, OLD.attempt, NEW.attempt);
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER chaos_audit AFTER UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION chaos_audit();
"""

_KEY = re.compile(
    r"^(?P<id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"(?:-(?P<n>[1-9][0-9]*))?\.(?P<ext>[a-z0-9]+)$"
)


class Monitor:
    """Polls the table once a second: when each job first looked terminal, and as what.

    Survives a Postgres outage (reconnects; every loop bounded by the caller's stop event)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.first: dict[str, tuple[str, datetime | None]] = {}
        self.changed: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        conn: asyncpg.Connection | None = None
        try:
            while not stop.is_set():
                try:
                    conn = conn or await asyncpg.connect(self.dsn, timeout=3)
                    rows = await conn.fetch(
                        "SELECT id::text, status, completed_at FROM jobs WHERE status = ANY($1)",
                        list(TERMINAL),
                        timeout=5,
                    )
                    for row in rows:
                        seen = (outcome(row["status"]), row["completed_at"])
                        before = self.first.setdefault(row["id"], seen)
                        if before != seen:
                            self.changed.add(row["id"])
                except Exception:  # any driver error while Postgres is down or restarting
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.terminate()
                    conn = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)

    async def wait_terminal(self, ids: set[str], deadline: float) -> set[str]:
        """Wait (until `deadline`, monotonic) for every id to look terminal; the rest."""
        while True:
            missing = ids - self.first.keys()
            if not missing or time.monotonic() >= deadline:
                return missing
            await asyncio.sleep(0.5)


@dataclass
class Outcome:
    """One scenario's numbers and the broken promises among them."""

    key: str
    title: str
    accepted: int = 0
    terminal: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0
    duplicated: int = 0
    extra_creates: int = 0
    created: int = 0
    attempts: int = 0
    t_after_fault: float | None = None
    bound: float = 0.0
    five_xx: int = 0
    allowed_503: int = 0
    post_max: float = 0.0
    unacked: int = 0
    stray_files: int = 0
    tmp_files: int = 0
    faults: int = 0
    crashes: int = 0
    exits: int = 0
    extra: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        t = "n/a" if self.t_after_fault is None else f"{self.t_after_fault:.1f}s"
        xx = f"5xx={self.five_xx}" + (
            f" (+{self.allowed_503} 503 in S6)" if self.key == "S6" else ""
        )
        return (
            f"{self.key} {self.title}: accepted={self.accepted} terminal={self.terminal} "
            f"(completed={self.completed} failed={self.failed}) lost={self.lost} "
            f"duplicated={self.duplicated} extra_creates={self.extra_creates} "
            f"(created={self.created} attempts={self.attempts}) "
            f"t_after_last_fault={t} (T={self.bound:.0f}s) {xx} faults={self.faults} "
            f"post_max={self.post_max:.1f}s unacked={self.unacked} exits={self.exits} "
            f"stray={self.stray_files} "
            f"tmp={self.tmp_files}{' ' + self.extra if self.extra else ''} "
            f"{'PASS' if self.ok else 'FAIL'}"
        )


async def table(dsn: str) -> tuple[list[dict[str, Any]], dict[str, tuple[int, int]]]:
    """Every job row, and per job (terminal transitions, transitions out of a terminal state)."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT id::text, status, attempt, retry_count, completed_at, outputs::text, "
            "error, prompt, prediction_id FROM jobs"
        )
        audit = await conn.fetch(
            f"SELECT job_id::text, count(*) FILTER (WHERE new_status = ANY($1) AND NOT "
            f"{_RETENTION}) AS terminals, count(*) FILTER (WHERE old_status = ANY($1) AND NOT "
            f"{_RETENTION}) AS after FROM chaos_transitions GROUP BY job_id",
            list(TERMINAL),
        )
    finally:
        await conn.close()
    jobs = [{**dict(r), "outputs": json.loads(r["outputs"] or "[]")} for r in rows]
    return jobs, {r["job_id"]: (r["terminals"], r["after"]) for r in audit}


def check_files(media: Path, jobs: list[dict[str, Any]]) -> tuple[list[str], int, int]:
    """(errors, failed jobs with files, temporary `.part` files left by killed writers)."""
    found: dict[str, dict[str, int]] = {}
    errors: list[str] = []
    tmp = 0
    for path in sorted(media.rglob("*")) if media.exists() else []:
        rel = path.relative_to(media).as_posix()
        if path.is_dir() or rel.startswith(".health/"):
            continue
        if path.name.startswith(".") and path.name.endswith(".part"):
            tmp += 1
            continue
        if rel.startswith("cog-staging/"):  # a Cog scenario counts these (cog.check_cog)
            continue
        match = _KEY.match(rel)
        if match is None:
            errors.append(f"unexpected storage key {rel}")
            continue
        found.setdefault(match["id"], {})[rel] = path.stat().st_size
    by_id = {job["id"]: job for job in jobs}
    stray = 0
    for job_id, files in found.items():
        job = by_id.get(job_id)
        if job is None:
            errors.append(f"files {sorted(files)} belong to no job")
        elif job["status"] != "completed":
            stray += 1
    for job in jobs:
        if job["status"] != "completed":
            continue
        want = {o["key"]: o["size"] for o in job["outputs"]}
        have = found.get(job["id"], {})
        if set(want) != set(have):
            errors.append(f"job {job['id']}: outputs {sorted(want)} but files {sorted(have)}")
        elif any(have[k] != size for k, size in want.items()):
            errors.append(f"job {job['id']}: stored sizes {have} differ from outputs {want}")
    return errors, stray, tmp


def last_error(log: Path) -> str:
    """The last CRITICAL/ERROR line of a log (why a process exited)."""
    with contextlib.suppress(OSError):
        for line in reversed(log.read_text(errors="replace").splitlines()):
            if "critical" in line.lower() or "Unrecoverable" in line:
                return line.strip()[-200:]
    return "no CRITICAL line in its log"


def interrupted_steps(logs: list[Path]) -> int:
    """Steps a dying pool child took with it (Celery logs each as a WorkerLostError)."""
    total = 0
    for log in logs:
        with contextlib.suppress(OSError):
            total += log.read_text(errors="replace").count("WorkerLostError(")
    return total


def task_errors(logs: list[Path]) -> list[str]:
    """Tasks that raised, other than those a dying pool child took with it."""
    errors = []
    for log in logs:
        with contextlib.suppress(OSError):
            for line in log.read_text(errors="replace").splitlines():
                if "raised unexpected:" in line and "WorkerLostError(" not in line:
                    errors.append(line.split("raised unexpected:", 1)[1].strip()[:160])
    return errors


def worker_redeliveries(logs: list[Path]) -> int:
    """Task ids a worker received more than once (a broker redelivery, not a re-publish)."""
    seen: dict[str, int] = {}
    pattern = re.compile(r"Task mediagen\.jobs\.\w+\[([0-9a-f-]{36})\] received")
    for log in logs:
        with contextlib.suppress(OSError):
            for task_id in pattern.findall(log.read_text(errors="replace")):
                seen[task_id] = seen.get(task_id, 0) + 1
    return sum(n - 1 for n in seen.values() if n > 1)
