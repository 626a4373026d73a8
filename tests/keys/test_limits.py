"""Per-key rate and in-flight limits (429 + Retry-After) and CORS, each on an API of its own."""

from __future__ import annotations

import httpx
import pytest
import redis
from pydantic import ValidationError

from mediagen.config import Settings
from tests.conftest import REDIS_URL, start_api

BODY = {"prompt": "a limited edition", "parameters": {"width": 64, "height": 64}}


async def test_rate_limit_answers_429_with_retry_after(database: str) -> None:
    # A Redis database of its own: the anonymous counter must not include earlier tests' POSTs.
    own = REDIS_URL.rsplit("/", 1)[0] + "/7"
    redis.Redis.from_url(own).flushdb()
    proc, url = start_api("api-rate", {"RATE_LIMIT_PER_MINUTE": "3", "MAX_JOBS_IN_FLIGHT": "0",
                                       "REDIS_URL": own})
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            codes = [(await client.post("/api/v1/generate", json=BODY)).status_code
                     for _ in range(3)]
            limited = await client.post("/api/v1/generate", json=BODY)
    finally:
        proc.stop()
    assert codes == [201, 201, 201]
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60


async def test_in_flight_limit_answers_429(database: str) -> None:
    # No worker consumes this Redis database: the jobs stay pending, i.e. in flight.
    idle = REDIS_URL.rsplit("/", 1)[0] + "/8"
    proc, url = start_api("api-inflight", {"MAX_JOBS_IN_FLIGHT": "2", "REDIS_URL": idle,
                                           "RATE_LIMIT_PER_MINUTE": "0"})
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            from mediagen.jobs.models import Job
            from mediagen.jobs.states import UNFINISHED

            await Job.filter(api_key_id=None, status__in=list(UNFINISHED)).update(
                status="canceled")  # start from no anonymous job in flight
            first = [(await client.post("/api/v1/generate", json=BODY)).status_code
                     for _ in range(2)]
            limited = await client.post("/api/v1/generate", json=BODY)
    finally:
        proc.stop()
    assert first == [201, 201]
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "5"
    assert "limit 2" in limited.json()["detail"]


async def test_cors_allows_only_configured_origins(database: str) -> None:
    proc, url = start_api("api-cors", {"CORS_ORIGINS": "https://app.example"})
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            allowed = await client.options("/api/v1/generate", headers={
                "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
            denied = await client.options("/api/v1/generate", headers={
                "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    finally:
        proc.stop()
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in denied.headers


def test_no_wildcard_origin_with_credentials() -> None:
    with pytest.raises(ValidationError, match="cannot be"):
        Settings(_env_file=None, cors_origins="*", cors_allow_credentials=True)  # type: ignore[call-arg]
