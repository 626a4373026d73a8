"""schemathesis over the OpenAPI schema, every check, against a live API under uvicorn.

The stack under test (API + worker on a Redis database of their own) generates through the fake
Replicate, whose outputs are tiny, so the hundreds of jobs the fuzzer creates (up to 2048x2048,
four outputs) finish without loading the machine, and health is truthfully 200. `make fuzz`
runs it with a random seed; here the seed is fixed so CI is repeatable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import REDIS, ROOT, start_api, start_worker
from tests.fakes.replicate import FakeReplicate

HERE = Path(__file__).parent
MIN_CASES = 1000
# A guard against a hang, not a speed limit: the run is CPU-bound in the fuzzer itself (3-4 minutes
# alone, twice that beside the rest of the suite on two cores), so the guard leaves it room.
HANG_GUARD = 840


@pytest.fixture(scope="module")
def fuzz_api(database: str) -> Iterator[tuple[str, str]]:
    broker_url = REDIS.fresh()
    broker = redis.Redis.from_url(broker_url)
    with FakeReplicate(latency=0.2) as fake:
        env = {"REDIS_URL": broker_url, "REPLICATE_API_TOKEN": fake.config.token,
               "AUTH_REQUIRED": "true",
               "REPLICATE_BASE_URL": fake.url, "DOWNLOAD_ALLOW_PRIVATE": "true",
               "POLL_INTERVAL": "0.5"}
        worker = start_worker("worker-fuzz", broker, env)
        proc, url = start_api("api-fuzz", env)
        key = subprocess.run([sys.executable, "-m", "mediagen", "keys", "create", "fuzz"],
                             capture_output=True, text=True, check=True).stdout.splitlines()[1]
        try:
            yield url, key
        finally:
            proc.stop()
            worker.stop()
            broker.close()
            # Other tests run in the default mode, where any active key requires one.
            subprocess.run([sys.executable, "-m", "mediagen", "keys", "revoke", key[:11]],
                           capture_output=True, check=True)


def _fuzz(url: str, examples: int, seed: str, *extra: str) -> int:
    """schemathesis against `url` (every check); how many cases it generated."""
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(HERE / "schemathesis.toml"),
         "run", f"{url}/openapi.json", *extra, "--max-examples", str(examples),
         "--workers", "1", "--seed", seed],
        capture_output=True, text=True, timeout=HANG_GUARD,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks"}, cwd=ROOT,
    )
    output = result.stdout + result.stderr
    generated = re.search(r"(\d+) generated", output)
    failures = output[output.find("FAILURES"):output.find("SUMMARY")]
    print(output[-3000:])
    assert result.returncode == 0, (failures or output)[:8000]
    assert generated, output[-2000:]
    return int(generated.group(1))


@pytest.mark.timeout(HANG_GUARD + 60)
def test_fuzz_finds_no_server_error_and_no_schema_violation(fuzz_api: tuple[str, str]) -> None:
    url, key = fuzz_api
    assert _fuzz(url, 250, "20261124", "--header", f"Authorization: Bearer {key}") >= MIN_CASES


@pytest.mark.timeout(HANG_GUARD + 60)
def test_fuzz_as_make_fuzz_runs_it_against_a_fresh_make_run(fresh_database: str) -> None:
    """`make run` with nothing configured: AUTH_REQUIRED=auto and no key yet, so anonymous
    callers are served, as the schema says (its Bearer requirement is optional in auto mode)."""
    broker_url = REDIS.fresh()
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    with FakeReplicate(latency=0.2) as fake:
        env = {"DATABASE_URL": fresh_database, "REDIS_URL": broker_url, "AUTH_REQUIRED": "auto",
               "REPLICATE_API_TOKEN": fake.config.token, "REPLICATE_BASE_URL": fake.url,
               "DOWNLOAD_ALLOW_PRIVATE": "true", "POLL_INTERVAL": "0.5"}
        worker = start_worker("worker-fuzz-auto", broker, env)
        proc, url = start_api("api-fuzz-auto", env)
        try:
            assert _fuzz(url, 40, "20261129") > 100
        finally:
            proc.stop()
            worker.stop()
            broker.close()
