"""Per-key rate and in-flight limits (429 + Retry-After) and CORS, each on an API of its own."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from pydantic import ValidationError

from mediagen.config import Settings
from mediagen.db import pool
from tests.conftest import TEST_ENV
from tests.files.images import png
from tests.stack import app, create_key
from tests.support import in_one_rate_window

MEDIA = Path(TEST_ENV["LOCAL_STORAGE_PATH"])
BODY = {"prompt": "a limited edition", "parameters": {"width": 64, "height": 64}}


async def test_rate_limit_answers_429_with_retry_after(database: str) -> None:
    # A Redis database of its own: the anonymous counter must not include earlier tests' POSTs.
    async with app({"RATE_LIMIT_PER_MINUTE": "3", "MAX_JOBS_IN_FLIGHT": "0"}) as client:
        await in_one_rate_window()
        codes = [(await client.post("/api/v1/generate", json=BODY)).status_code
                 for _ in range(3)]
        limited = await client.post("/api/v1/generate", json=BODY)
    assert codes == [201, 201, 201]
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60


async def test_in_flight_limit_answers_429(database: str) -> None:
    """A key's unfinished jobs are counted with the writes that create and finish them: the
    limit holds exactly, also against concurrent submissions, and a finished job frees a place."""
    # No worker consumes this Redis database: the jobs stay pending, i.e. in flight.
    _, secret = await create_key("in-flight")
    async with app({"MAX_JOBS_IN_FLIGHT": "5", "RATE_LIMIT_PER_MINUTE": "0"}, timeout=30,
                   headers={"Authorization": f"Bearer {secret}"}) as client:
        answers = await asyncio.gather(*(client.post("/api/v1/generate", json=BODY)
                                         for _ in range(20)))
        accepted = [r.json()["job_id"] for r in answers if r.status_code == 201]
        limited = [r for r in answers if r.status_code != 201]
        assert len(accepted) == 5, [r.status_code for r in answers]
        assert {r.status_code for r in limited} == {429}
        assert limited[0].headers["retry-after"] == "5"
        assert "limit 5" in limited[0].json()["detail"]
        # One finishes (here: canceled): exactly one place opens.
        assert (await client.post(f"/api/v1/jobs/{accepted[0]}/cancel")).status_code == 200
        again = [(await client.post("/api/v1/generate", json=BODY)).status_code
                 for _ in range(2)]
        assert again == [201, 429]
        # A refused job keeps none of the files its data: inputs were stored as.
        before = set(MEDIA.glob("files/*"))
        inline = {**BODY, "parameters": {"refused_inline": "data:image/png;base64,"
                                         + base64.b64encode(png((9, 9, 9))).decode()}}
        refused = await client.post("/api/v1/generate", json=inline)
        assert refused.status_code == 429, refused.text
    assert set(MEDIA.glob("files/*")) - before == set()
    db = await pool()
    assert await db.fetchval("SELECT count(*) FROM files WHERE filename = 'refused_inline'") == 0


async def test_cors_allows_only_configured_origins(database: str) -> None:
    async with app({"CORS_ORIGINS": "https://app.example"}) as client:
        allowed = await client.options("/api/v1/generate", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
        denied = await client.options("/api/v1/generate", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in denied.headers


def test_no_wildcard_origin_with_credentials() -> None:
    with pytest.raises(ValidationError, match="cannot be"):
        Settings(_env_file=None, cors_origins="*", cors_allow_credentials=True)  # type: ignore[call-arg]
