"""The chaos suite's detectors must themselves detect: a storage check that passes everything
would make every scenario look clean. Fast, no processes (the audit's test uses the machine's
Postgres)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from tests.chaos.cog import CogFarm, CogServer, check_cog, png_problem
from tests.chaos.measure import AUDIT_SQL, Monitor, Outcome, check_files, table
from tests.chaos.procs import Proc
from tests.conftest import PG_ADMIN


def _job(status: str, outputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "status": status, "outputs": outputs or []}


def _out(job: dict[str, Any], key: str, size: int) -> None:
    job["outputs"].append({"key": key, "content_type": "image/png", "size": size})


def test_check_files_accepts_exactly_the_outputs(tmp_path: Path) -> None:
    one, two = _job("completed"), _job("completed")
    _out(one, f"{one['id']}.png", 3)
    _out(two, f"{two['id']}.png", 3)
    _out(two, f"{two['id']}-1.mp4", 4)
    for name, body in [(f"{one['id']}.png", b"abc"), (f"{two['id']}.png", b"abc")]:
        (tmp_path / name).write_bytes(body)
    (tmp_path / f"{two['id']}-1.mp4").write_bytes(b"abcd")
    (tmp_path / ".health").mkdir()
    (tmp_path / ".health" / "probe").write_bytes(b"ok")
    (tmp_path / f".{one['id']}.png.0123.part").write_bytes(b"half")  # a killed writer's
    assert check_files(tmp_path, [one, two]) == ([], 0, 1)


def test_check_files_reports_every_kind_of_wrong_effect(tmp_path: Path) -> None:
    extra, missing, resized = (_job("completed") for _ in range(3))
    failed = _job("failed")
    for job in (extra, missing, resized):
        _out(job, f"{job['id']}.png", 3)
    (tmp_path / f"{extra['id']}.png").write_bytes(b"abc")
    (tmp_path / f"{extra['id']}-1.png").write_bytes(b"abc")  # a second set of outputs
    (tmp_path / f"{resized['id']}.png").write_bytes(b"abcdef")  # torn or other bytes
    (tmp_path / f"{failed['id']}.png").write_bytes(b"abc")  # stray, not an error
    (tmp_path / f"{uuid.uuid4()}.png").write_bytes(b"abc")  # belongs to no job
    (tmp_path / "something-else.png").write_bytes(b"abc")  # not a job key at all
    errors, stray, tmp = check_files(tmp_path, [extra, missing, resized, failed])
    text = "\n".join(errors)
    assert len(errors) == 5, text
    assert f"{extra['id']}-1.png" in text and f"job {missing['id']}" in text
    assert "differ" in text and "belong to no job" in text and "something-else" in text
    assert (stray, tmp) == (1, 0)


def test_outcome_line_says_pass_or_fail() -> None:
    outcome = Outcome("S1", "kill", accepted=3, terminal=3, bound=42)
    assert outcome.line().endswith("PASS") and "lost=0" in outcome.line()
    outcome.problems.append("1 accepted jobs not terminal")
    assert outcome.line().endswith("FAIL") and not outcome.ok


def _png(width: int, height: int, shade: int) -> bytes:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("RGB", (width, height), (shade, shade, shade)).save(out, "PNG")
    return out.getvalue()


def test_png_check_finds_torn_and_wrong_pictures() -> None:
    good = _png(64, 64, 10)
    assert png_problem(good, 64, 64) is None
    assert "signature" in str(png_problem(b"GIF89a" + good[6:], 64, 64))
    assert "truncated" in str(png_problem(good[:-5], 64, 64))
    assert "CRC" in str(png_problem(good[:40] + bytes([good[40] ^ 1]) + good[41:], 64, 64))
    assert "not 32x64" in str(png_problem(good, 32, 64))
    assert "after IEND" in str(png_problem(good + b"x" * 12, 64, 64))


def pid(job_id: str, attempt: int) -> str:
    """The Cog id of a job's attempt (`mg-<job hex>-<attempt>`, what the provider uses)."""
    return f"mg-{uuid.UUID(job_id).hex}-{attempt}"


def _cog_log(path: Path, *events: tuple[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"fields": {"message": m, "prediction_id": p}}) for m, p in events]
    path.write_text("\n".join(lines) + "\n")


def test_cog_check_reports_every_broken_promise(tmp_path: Path) -> None:
    """A job stored with other bytes, a prediction of an attempt no job counted, a killed
    prediction not retried, a job completed by a prediction no server finished, a staged
    object left: each one reported; a clean run reports nothing."""
    servers = []
    for name in ("cog-a", "cog-b"):
        log = tmp_path / "logs" / f"{name}.log"
        proc = Proc(name, ["true"], {}, tmp_path, log)
        servers.append(CogServer(name, proc, 0))
    farm = CogFarm(tmp_path, servers, servers[0], deadline=6)
    media = tmp_path / "media"
    media.mkdir()
    jobs = [str(uuid.uuid4()) for _ in range(3)]
    farm.references = {i: [_png(64, 64, 10 * i)] for i in range(3)}
    rows = []
    for i, job in enumerate(jobs):
        (media / f"{job}.png").write_bytes(farm.references[i][0])
        rows.append(
            {
                "id": job,
                "status": "completed",
                "attempt": 2 if i == 0 else 1,
                "retry_count": int(i == 0),
                "prediction_id": f"{pid(job, 2 if i == 0 else 1)}.x.1",
                "outputs": [{"key": f"{job}.png", "size": 1}],
            }
        )
    _cog_log(
        servers[0].proc.log,
        ("Starting prediction", pid(jobs[0], 1)),  # killed
        ("Starting prediction", pid(jobs[0], 2)),
        ("Prediction worker completed", pid(jobs[0], 2)),
    )
    _cog_log(
        servers[1].proc.log,
        *[
            e
            for j in jobs[1:]
            for e in (
                ("Starting prediction", pid(j, 1)),
                ("Prediction worker completed", pid(j, 1)),
            )
        ],
    )
    with servers[1].proc.log.open("a") as log:
        log.write(
            json.dumps(
                {
                    "fields": {
                        "message": "Terminal webhook request error, retrying",
                        "error": f"(http://h/api/v1/webhooks/cog/{pid(jobs[1], 1)}/t)",
                    }
                }
            )
            + "\n"
        )
    accepted = {job: i for i, job in enumerate(jobs)}
    extra: dict[str, Any] = {}
    assert check_cog(farm, rows, accepted, media, extra) == []
    assert (extra["killed"], extra["webhooks_resent"], extra["resent_used"]) == (1, 1, 1)

    (media / f"{jobs[1]}.png").write_bytes(farm.references[2][0])  # another job's picture
    rows[0]["attempt"] = 1  # the killed attempt 1 not followed by another; attempt 2 uncounted
    rows[2]["prediction_id"] = f"{pid(jobs[2], 7)}.x.1"  # never ran anywhere
    (media / "cog-staging" / pid(jobs[2], 1)).mkdir(parents=True)
    (media / "cog-staging" / pid(jobs[2], 1) / "0.png").write_bytes(b"x")
    text = "\n".join(check_cog(farm, rows, accepted, media, extra))
    assert f"job {jobs[1]} output 0" in text and "differ" in text
    assert "attempts no job counted" in text and pid(jobs[0], 2) in text
    assert "not followed by a new attempt" in text and pid(jobs[0], 1) in text
    assert "no server completed" in text and pid(jobs[2], 7) in text
    assert "1 staged objects left" in text


async def test_a_job_expiring_is_not_a_second_effect_leaving_a_finish_otherwise_is() -> None:
    """completed -> expired (retention deleting the outputs later) is neither a second terminal
    transition nor a changed outcome; completed -> failed is both. The audit trigger and the
    monitor on a table of their own, in a database of their own."""
    name = f"chaos_measure_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    monitor, stop = Monitor(dsn), asyncio.Event()
    watching = None
    try:
        db = await asyncpg.connect(dsn)
        await db.execute(
            "CREATE TABLE jobs (id uuid PRIMARY KEY, status text NOT NULL, attempt int NOT NULL, "
            "retry_count int NOT NULL DEFAULT 0, completed_at timestamptz, outputs jsonb, "
            "error text, prompt text NOT NULL DEFAULT '', prediction_id text)")
        await db.execute(AUDIT_SQL)
        expired, refinished = str(uuid.uuid4()), str(uuid.uuid4())
        watching = asyncio.ensure_future(monitor.run(stop))
        for job in (expired, refinished):
            await db.execute("INSERT INTO jobs (id, status, attempt) VALUES ($1, 'pending', 0)",
                             uuid.UUID(job))
            await db.execute("UPDATE jobs SET status = 'processing', attempt = 1 WHERE id = $1",
                             uuid.UUID(job))
            await db.execute("UPDATE jobs SET status = 'completed', completed_at = now() "
                             "WHERE id = $1", uuid.UUID(job))
        assert await monitor.wait_terminal({expired, refinished}, time.monotonic() + 10) == set()
        await db.execute("UPDATE jobs SET status = 'expired', outputs = '[]' WHERE id = $1",
                         uuid.UUID(expired))
        await db.execute("UPDATE jobs SET status = 'failed' WHERE id = $1", uuid.UUID(refinished))
        await asyncio.sleep(2.5)  # the monitor polls once a second
        await db.close()
        rows, audit = await table(dsn)
    finally:
        stop.set()
        if watching is not None:
            await watching
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    assert {row["id"]: row["status"] for row in rows} == {expired: "expired", refinished: "failed"}
    assert audit == {expired: (1, 0), refinished: (2, 1)}
    assert monitor.changed == {refinished}
