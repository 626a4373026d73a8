"""Every server command, given a database, Redis or storage that is missing or does not answer
(or a bad setting), prints one line that says what and where (never a password), and exits 1
(2 for a bad configuration): no traceback. The real commands, run as processes, against a port
nothing listens on."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from mediagen.config import Settings
from tests.conftest import DATABASES
from tests.support import free_port

SETTINGS = {name.upper() for name in Settings.model_fields}
PASSWORD = "pg-pass-4d1e"
CLOSED = free_port()
DEAD_DB = f"postgres://mediagen:{PASSWORD}@127.0.0.1:{CLOSED}/x"
DEAD_REDIS = f"redis://:{PASSWORD}@127.0.0.1:{CLOSED}/0"
NO_DB = (f"mediagen: cannot reach the database at postgres://mediagen@127.0.0.1:{CLOSED}/x "
         "(connection refused): is Postgres running? set DATABASE_URL")
NO_REDIS = (f"mediagen: cannot reach Redis at redis://127.0.0.1:{CLOSED}/0 (connection refused): "
            "is Redis running? set REDIS_URL")


def run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`mediagen COMMAND` with `env` as its only settings (none of the test run's, no `.env`)."""
    outside = {k: v for k, v in os.environ.items()
               if k.upper() not in SETTINGS and not k.upper().endswith("_FILE")}
    return subprocess.run([sys.executable, "-m", "mediagen", *command], cwd=cwd, env={
        **outside, "EMBEDDED_DATA_DIR": str(cwd / "embedded"),
        "LOCAL_STORAGE_PATH": str(cwd / "media"), "WORKER_METRICS_PORT": "0", **env},
        capture_output=True, text=True, timeout=60, check=False)


def one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    everything = done.stdout + done.stderr
    assert done.returncode == code, everything
    assert "Traceback" not in everything and PASSWORD not in everything, everything
    assert done.stdout == "" and done.stderr.count("\n") == 1, everything
    return done.stderr.strip()


@pytest.mark.parametrize("command", [["migrate"], ["api"], ["worker"], ["keys", "list"],
                                     ["usage"], ["run"]])
def test_a_database_that_does_not_answer(tmp_path: Path, command: list[str]) -> None:
    done = run(command, {"DATABASE_URL": DEAD_DB, "REDIS_URL": DEAD_REDIS}, tmp_path)
    assert one_line(done, 1) == NO_DB


@pytest.mark.parametrize("command", [["migrate"], ["api"], ["keys", "create", "me"]])
def test_no_database_url(tmp_path: Path, command: list[str]) -> None:
    line = one_line(run(command, {}, tmp_path), 2)
    assert line.startswith("mediagen: DATABASE_URL is not set: set it to your Postgres"), line


@pytest.mark.parametrize("command", [["api"], ["worker"], ["beat"], ["flower"]])
def test_redis_that_does_not_answer(tmp_path: Path, database: str, command: list[str]) -> None:
    done = run(command, {"DATABASE_URL": database, "REDIS_URL": DEAD_REDIS}, tmp_path)
    assert one_line(done, 1) == NO_REDIS


def test_worker_check_without_redis(tmp_path: Path) -> None:
    line = one_line(run(["worker-check"], {"REDIS_URL": DEAD_REDIS}, tmp_path), 1)
    assert line == ("mediagen worker-check: not ready: the broker does not answer (Error 111 "
                    f"connecting to 127.0.0.1:{CLOSED}. Connection refused.): is Redis running? "
                    "set REDIS_URL")


@pytest.mark.parametrize("command", ["api", "worker"])
def test_storage_that_cannot_be_written(tmp_path: Path, database: str, command: str) -> None:
    (tmp_path / "a-file").write_text("")
    where = tmp_path / "a-file" / "media"
    env = {"DATABASE_URL": database, "REDIS_URL": os.environ["REDIS_URL"],
           "LOCAL_STORAGE_PATH": str(where)}
    line = one_line(run([command], env, tmp_path), 1)
    assert line == (f"mediagen: cannot store outputs in the directory {where} (Not a directory): "
                    "check LOCAL_STORAGE_PATH (it must be a directory this user can write)")


@pytest.mark.parametrize(("env", "expected"), [
    ({"DB_POOL_MAX": "0"},
     "mediagen: bad configuration: DB_POOL_MAX: Input should be greater than or equal to 1"),
    ({"DATABASE_URL": f"mysql://root:{PASSWORD}@127.0.0.1/x"},
     "mediagen: DATABASE_URL=mysql://root@127.0.0.1/x is not a Postgres URL: "
     "postgres://USER:PASSWORD@HOST:5432/DATABASE"),
    ({"DATABASE_URL": DEAD_DB, "REPLICATE_API_TOKEN_FILE": "/nonexistent/replicate"},
     "mediagen: REPLICATE_API_TOKEN_FILE: cannot read the secret file /nonexistent/replicate "
     "(No such file or directory)"),
    ({"DATABASE_URL": DEAD_DB, "REDIS_URL": f"rediss://:{PASSWORD}@h/0",
      "REDIS_TLS_CERT_FILE": "/x.pem"},
     "mediagen: bad configuration: REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together"),
])
def test_a_bad_configuration(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    assert one_line(run(["migrate"], env, tmp_path), 2) == expected


@pytest.fixture
async def empty_database(database: str) -> str:
    """A database with nothing in it: `mediagen migrate` was never run there."""
    name = f"{DATABASES.prefix}_empty_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(DATABASES.postgres.admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    DATABASES.made.append(name)  # dropped at the end of the session
    return DATABASES.postgres.url(name)


def test_a_database_never_migrated_says_so_until_it_is(tmp_path: Path, empty_database: str) -> None:
    env = {"DATABASE_URL": empty_database, "REDIS_URL": os.environ["REDIS_URL"]}
    masked = str(Settings(_env_file=None, database_url=empty_database).database_url)  # type: ignore[call-arg]
    assert one_line(run(["api"], env, tmp_path), 1) == (
        f"mediagen: the database at {masked} has no mediagen tables: run `mediagen migrate` first")
    migrated = run(["migrate"], env, tmp_path)
    assert (migrated.returncode, migrated.stdout) == (0, "mediagen: migrations applied\n")
    listed = run(["keys", "list"], env, tmp_path)
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, "", "")
