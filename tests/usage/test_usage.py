"""`GET /api/v1/usage` and `mediagen usage` add up exactly what a key's jobs did, in-process (the
application and its worker's steps in the test's process, real Postgres and Redis); the
command as a process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
from tests.stack import create_key
from tests.support import sibling, wait_terminal

SMALL = {"width": 64, "height": 64}


def mediagen_cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "mediagen", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def new_key(name: str) -> tuple[str, str]:
    """A key's secret and its listed prefix."""
    _, secret = await create_key(name)
    return secret, secret[:11]


@pytest.fixture(scope="module")
async def meter(database: str) -> tuple[str, str]:
    return await new_key("usage-meter")


@pytest.fixture
async def metered(client: httpx.AsyncClient,
                  meter: tuple[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with sibling(client, headers={"Authorization": f"Bearer {meter[0]}"}) as keyed:
        yield keyed


async def _run(client: httpx.AsyncClient, prompt: str, **parameters: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/generate",
                                 json={"prompt": prompt, "parameters": {**SMALL, **parameters}})
    assert response.status_code == 201, response.text
    return await wait_terminal(client, response.json()["job_id"])


def _seconds(detail: dict[str, Any]) -> float:
    if not (detail["started_at"] and detail["completed_at"]):
        return 0.0
    ended = datetime.fromisoformat(detail["completed_at"])
    return (ended - datetime.fromisoformat(detail["started_at"])).total_seconds()


async def test_usage_adds_up_what_the_key_did(metered: httpx.AsyncClient,
                                              meter: tuple[str, str]) -> None:
    completed = [await _run(metered, f"metered {n}", num_outputs=n + 1) for n in range(3)]
    failed = [await _run(metered, f"[fault:permanent] metered {n}") for n in range(2)]
    assert {d["status"] for d in completed} == {"completed"}
    assert {d["status"] for d in failed} == {"failed"}
    details = completed + failed
    stored = sum(o["size"] for d in details for o in d["outputs"])
    assert stored > 0
    ran = sum(_seconds(d) for d in details)

    response = await metered.get("/api/v1/usage")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["group_by"] == "day"
    end = datetime.fromisoformat(report["to"])
    assert end - datetime.fromisoformat(report["from"]) == timedelta(days=30)
    total = report["total"]
    assert total["group"] is None
    assert total["jobs"] == 5
    assert total["by_status"]["completed"] == 3 and total["by_status"]["failed"] == 2
    assert sum(total["by_status"].values()) == 5
    assert total["bytes_stored"] == stored
    assert total["run_seconds"] == pytest.approx(ran, abs=0.01)
    # The days (UTC) the jobs were created on, adding up to the total.
    days = report["groups"]
    assert [g["group"] for g in days] == sorted(
        {datetime.fromisoformat(d["created_at"]).astimezone(UTC).date().isoformat()
         for d in details})
    assert sum(g["jobs"] for g in days) == 5
    assert sum(g["bytes_stored"] for g in days) == stored

    by_model = (await metered.get("/api/v1/usage", params={"group_by": "model"})).json()
    assert [g["group"] for g in by_model["groups"]] == sorted({d["model"] for d in details})
    assert by_model["total"] == total

    # A range that ends before the jobs: nothing; another key: none of these jobs.
    created = min(datetime.fromisoformat(d["created_at"]) for d in details)
    before = (await metered.get("/api/v1/usage", params={
        "from": (created - timedelta(days=2)).isoformat(),
        "to": created.isoformat()})).json()
    assert before["groups"] == [] and before["total"]["jobs"] == 0
    assert before["total"]["by_status"]["completed"] == 0
    only_to = (await metered.get("/api/v1/usage", params={"to": "2020-01-01"})).json()
    assert only_to["from"].startswith("2019-12-02") and only_to["total"]["jobs"] == 0
    year_one = await metered.get("/api/v1/usage", params={"to": "0001-01-02T00:00:00Z"})
    assert year_one.status_code == 200, year_one.text  # 30 days before would be out of range
    assert year_one.json()["from"].startswith("0001-01-01")
    other, _ = await new_key("usage-other")
    async with sibling(metered, headers={"Authorization": f"Bearer {other}"}) as client:
        assert (await client.get("/api/v1/usage")).json()["total"]["jobs"] == 0

    # Operators: every key, grouped by key, from the database.
    out = mediagen_cli("usage", "--group-by", "key",
                       "--from", (created - timedelta(minutes=1)).isoformat())
    line = next(row for row in out.splitlines() if meter[1] in row)
    assert "usage-meter" in line
    cells = [c.strip() for c in line.split("│") if c.strip()]
    assert cells[:5] == [f"{meter[1]}...", "usage-meter", "5", "3", "2"]  # jobs, completed, failed
    assert cells[-1] == str(stored)


@pytest.mark.parametrize("params", [
    {"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"},  # from after to
    {"from": "2024-01-01T00:00:00Z", "to": "2025-01-03T00:00:00Z"},  # over 366 days
    {"group_by": "week"},
    {"from": "yesterday"},
    {"bogus": "1"},
])
async def test_bad_queries_are_422(metered: httpx.AsyncClient, params: dict[str, str]) -> None:
    response = await metered.get("/api/v1/usage", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


def test_cli_refuses_a_bad_range() -> None:
    result = subprocess.run([sys.executable, "-m", "mediagen", "usage", "--from", "2026-03-02",
                             "--to", "2026-03-01"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "`from` must not be after `to`" in result.stderr
