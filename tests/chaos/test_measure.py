"""The chaos suite's detectors must themselves detect: a storage check that passes everything
would make every scenario look clean. Fast, no processes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tests.chaos.measure import Outcome, check_files


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
