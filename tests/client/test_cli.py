"""The user's CLI (`mediagen generate`, `mediagen jobs ...`) run as the real command against the
running stack: the files it writes, its exit codes, its --json, its progress bar on a terminal,
Ctrl-C while waiting."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import redis

from mediagen.client import APIConnectionError, Client
from mediagen.jobs.retention import EXPIRED_NOTE
from tests.conftest import REDIS, ROOT, start_api
from tests.support import Proc, expire, free_port

SIZE = ["--width", "64", "--height", "64"]


def _env(url: str) -> dict[str, str]:
    return {**os.environ, "MEDIAGEN_URL": url, "MEDIAGEN_API_KEY": ""}


def mediagen(
    url: str, *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mediagen", *args],
        capture_output=True,
        text=True,
        env=_env(url),
        cwd=cwd or ROOT,
        timeout=timeout,
    )


def _detail(api: str, job_id: str) -> dict[str, object]:
    response = httpx.get(f"{api}/api/v1/jobs/{job_id}", timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def _media(api: str, url: str) -> bytes:
    response = httpx.get(f"{api}{url}" if url.startswith("/") else url, timeout=10)
    assert response.status_code == 200, response.text
    return response.content


@pytest.fixture
def stack(api: str, worker: Proc) -> str:
    return api


@pytest.fixture(scope="module")
def idle_api(database: str) -> Iterator[str]:
    """An API whose queue no worker consumes: its jobs stay pending."""
    url = REDIS.fresh()
    redis.Redis.from_url(url).flushdb()
    proc, api = start_api("cli-api-idle", {"REDIS_URL": url})
    yield api
    proc.stop()


def test_generate_writes_the_output_file(stack: str, tmp_path: Path) -> None:
    done = mediagen(
        stack, "generate", "a cli red fox", *SIZE, "--seed", "7", "-o", "fox.png", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    target = tmp_path / "fox.png"
    assert done.stdout.strip() == "fox.png"
    assert not done.stderr.count("\x1b[")  # no terminal here: plain status lines
    assert "completed" in done.stderr
    job_id = done.stderr.split("job ", 1)[1].split(":", 1)[0]
    detail = _detail(stack, job_id)
    assert detail["status"] == "completed"
    assert detail["parameters"]["seed"] == 7  # type: ignore[index]
    assert target.read_bytes() == _media(stack, str(detail["result_url"]))
    assert [p.name for p in tmp_path.iterdir()] == ["fox.png"]  # no scratch left


def test_generate_json_with_several_outputs(stack: str, tmp_path: Path) -> None:
    done = mediagen(
        stack,
        "generate",
        "two cli foxes",
        *SIZE,
        "--num-outputs",
        "2",
        "--format",
        "webp",
        "-o",
        str(tmp_path / "fox.webp"),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # --json: nothing on stderr
    result = json.loads(done.stdout)
    assert result["status"] == "completed" and result["error"] is None
    assert result["files"] == [str(tmp_path / "fox-0.webp"), str(tmp_path / "fox-1.webp")]
    detail = _detail(stack, result["job_id"])
    outputs = detail["outputs"]
    assert isinstance(outputs, list) and len(outputs) == 2
    for path, output in zip(result["files"], outputs, strict=True):
        assert Path(path).read_bytes() == _media(stack, output["url"])


def test_generate_default_names_and_params(stack: str, tmp_path: Path) -> None:
    done = mediagen(
        stack,
        "generate",
        "a cli owl",
        *SIZE,
        "--param",
        "guidance_scale=5.5",
        "--output-dir",
        str(tmp_path / "out"),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["files"] == [str(tmp_path / "out" / f"{result['job_id']}-0.png")]
    detail = _detail(stack, result["job_id"])
    assert detail["parameters"]["guidance_scale"] == 5.5  # type: ignore[index]
    assert Path(result["files"][0]).read_bytes() == _media(stack, str(detail["result_url"]))


def test_a_failed_job_exits_1_with_its_error(stack: str, tmp_path: Path) -> None:
    done = mediagen(
        stack, "generate", "[fault:permanent] a cli doomed kite", *SIZE, "--json", cwd=tmp_path
    )
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "failed" and result["files"] == [] and result["error"]
    assert result["error"] in done.stderr and "failed" in done.stderr
    assert list(tmp_path.iterdir()) == []
    wait = mediagen(stack, "jobs", "wait", result["job_id"])
    assert wait.returncode == 1 and "failed" in wait.stderr


def test_no_wait_then_jobs_commands(stack: str, tmp_path: Path) -> None:
    done = mediagen(stack, "generate", "a cli heron, later", *SIZE, "--no-wait")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert str(uuid.UUID(job_id)) == job_id

    wait = mediagen(stack, "jobs", "wait", job_id, "--json")
    assert wait.returncode == 0, wait.stderr
    assert json.loads(wait.stdout)["status"] == "completed"

    show = mediagen(stack, "jobs", "show", job_id, "--json")
    assert show.returncode == 0 and json.loads(show.stdout)["job_id"] == job_id
    human = mediagen(stack, "jobs", "show", job_id)
    assert human.returncode == 0 and "completed" in human.stdout and "a cli heron" in human.stdout

    listed = mediagen(stack, "jobs", "list", "--limit", "3", "--json")
    assert listed.returncode == 0, listed.stderr
    jobs = json.loads(listed.stdout)
    assert isinstance(jobs, list) and 1 <= len(jobs) <= 3
    assert job_id in [job["job_id"] for job in jobs]
    plain = mediagen(stack, "jobs", "list", "--status", "completed", "--limit", "50")
    assert plain.returncode == 0 and job_id in plain.stdout

    download = mediagen(stack, "jobs", "download", job_id, "-o", str(tmp_path))
    assert download.returncode == 0, download.stderr
    path = Path(download.stdout.strip())
    assert path == tmp_path / f"{job_id}-0.png"
    assert path.read_bytes() == _media(stack, str(_detail(stack, job_id)["result_url"]))

    finished = mediagen(stack, "jobs", "cancel", job_id)
    assert finished.returncode == 3 and "409" in finished.stderr

    no_wait_json = mediagen(stack, "generate", "a cli json heron", *SIZE, "--no-wait", "--json")
    assert json.loads(no_wait_json.stdout)["job_id"]


async def test_jobs_wait_on_an_expired_job_exits_1_and_says_why(stack: str) -> None:
    """An expired job completed, but retention deleted its outputs: `jobs wait` ends at once
    with exit code 1 (nothing to download, as for a failed or canceled job), and `jobs list
    --status expired` finds it."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return mediagen(stack, *args, timeout=30)

    made = await asyncio.to_thread(
        run, "generate", "a cli fox kept a minute", *SIZE, "--retention", "60", "--no-wait"
    )
    assert made.returncode == 0, made.stderr
    job_id = made.stdout.strip()
    assert (await asyncio.to_thread(run, "jobs", "wait", job_id)).returncode == 0
    await expire(job_id)

    wait = await asyncio.to_thread(run, "jobs", "wait", job_id)
    assert wait.returncode == 1, wait.stderr
    assert f"mediagen: job {job_id} expired: {EXPIRED_NOTE}" in wait.stderr
    as_json = await asyncio.to_thread(run, "jobs", "wait", job_id, "--json")
    assert as_json.returncode == 1, as_json.stderr
    assert json.loads(as_json.stdout) == {
        "job_id": job_id, "status": "expired", "files": [], "output": None, "error": EXPIRED_NOTE
    }
    listed = await asyncio.to_thread(
        run, "jobs", "list", "--status", "expired", "--limit", "100", "--json"
    )
    assert listed.returncode == 0, listed.stderr
    assert job_id in [job["job_id"] for job in json.loads(listed.stdout)]


def test_image_priority_retention_and_delete(stack: str, tmp_path: Path) -> None:
    """`--image` uploads the file and the job uses it; `--retention` and `--priority` reach the
    job; `jobs delete` deletes the job and its output (404/410), not the uploaded input."""
    from PIL import Image

    def make(color: str) -> Path:
        path = tmp_path / f"{color}.png"
        Image.new("RGB", (64, 64), color).save(path)
        return path

    outputs = {}
    for color in ("red", "blue"):
        done = mediagen(stack, "generate", "a cli fox from a picture", *SIZE, "--seed", "7",
                        "--image", str(make(color)), "--retention", "600", "--priority", "low",
                        "--param", "prompt_strength=0.2", "--json", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["status"] == "completed"
        detail = _detail(stack, summary["job_id"])
        assert str(detail["parameters"]["image"]).startswith("mediagen://files/")  # type: ignore[index]
        assert detail["priority"] == "low"
        expires = datetime.fromisoformat(str(detail["expires_at"]))
        completed = datetime.fromisoformat(str(detail["completed_at"]))
        assert abs((expires - completed).total_seconds() - 600) < 1
        outputs[color] = (summary["job_id"], (tmp_path / summary["files"][0]).read_bytes(), detail)
    assert outputs["red"][1] != outputs["blue"][1]  # the input image shaped the output

    job_id, _, detail = outputs["red"]
    file_url = f"{stack}/api/v1/files/" + str(detail["parameters"]["image"]).rsplit("/", 1)[1]  # type: ignore[index]
    assert httpx.get(file_url, timeout=10).status_code == 200
    deleted = mediagen(stack, "jobs", "delete", job_id)
    assert deleted.returncode == 0 and "deleted" in deleted.stdout, deleted.stderr
    assert httpx.get(f"{stack}/api/v1/jobs/{job_id}", timeout=10).status_code == 404
    # The uploaded input is the caller's file, which other jobs may name: it stays (FILE_TTL).
    assert httpx.get(file_url, timeout=10).status_code == 200
    gone = httpx.get(f"{stack}{detail['result_url']}", timeout=10)
    assert gone.status_code == 410
    again = mediagen(stack, "jobs", "delete", job_id)
    assert again.returncode == 3 and "404" in again.stderr


def test_param_at_file_uploads_the_file_as_that_parameter(stack: str, tmp_path: Path) -> None:
    """`--param image=@FILE` uploads any local file and gives its URI as the parameter, as
    `--image` does; a missing file is one line naming it, exit 2, before anything is sent."""
    from PIL import Image

    Image.new("RGB", (64, 64), "green").save(tmp_path / "green.png")
    done = mediagen(stack, "generate", "a cli fox from an @file", *SIZE, "--param",
                    "image=@green.png", "--param", "prompt_strength=0.3", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "completed"
    uri = str(_detail(stack, summary["job_id"])["parameters"]["image"])  # type: ignore[index]
    assert uri.startswith("mediagen://files/")
    info = httpx.get(f"{stack}/api/v1/files/{uri.rsplit('/', 1)[1]}", timeout=10).json()
    assert info["filename"] == "green.png" and info["content_type"] == "image/png"
    assert _media(stack, info["url"]) == (tmp_path / "green.png").read_bytes()

    newest = httpx.get(f"{stack}/api/v1/jobs", params={"limit": 1}, timeout=10).json()["data"]
    for args in (["--param", "mask=@missing.png"], ["--image", "missing.png"]):
        missing = mediagen(stack, "generate", "never sent", *args, cwd=tmp_path)
        assert missing.returncode == 2
        assert missing.stdout == "" and missing.stderr.count("\n") == 1, missing.stderr
        assert "missing.png" in missing.stderr and "no such file" in missing.stderr
    after = httpx.get(f"{stack}/api/v1/jobs", params={"limit": 1}, timeout=10).json()["data"]
    assert [job["job_id"] for job in after] == [job["job_id"] for job in newest]  # none sent
    empty = mediagen(stack, "generate", "x", "--param", "image=@")
    assert empty.returncode == 2 and "KEY=@FILE" in empty.stderr
    quoted = mediagen(stack, "generate", "a handle", *SIZE, "--param", 'handle="@fox"',
                      "--no-wait", "--json")
    assert quoted.returncode == 0, quoted.stderr
    job_id = json.loads(quoted.stdout)["job_id"]
    assert _detail(stack, job_id)["parameters"]["handle"] == "@fox"  # type: ignore[index]


def test_generate_logs_prints_the_model_log_lines(stack: str, tmp_path: Path) -> None:
    done = mediagen(stack, "generate", "a cli logged fox", *SIZE, "--seed", "9",
                    "--num-outputs", "2", "--logs", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # stdout: the JSON alone
    logs = str(_detail(stack, summary["job_id"])["logs"])
    assert done.stderr.splitlines() == logs.splitlines()  # --json: only the log lines
    assert logs.startswith("rendering 2 png 64x64, seed 9, 50 steps\n")
    assert logs.count("rendered output") == 2
    plain = mediagen(stack, "jobs", "wait", summary["job_id"], "--logs")
    assert plain.returncode == 0, plain.stderr
    lines = plain.stderr.splitlines()
    assert [line for line in lines if not line.startswith("job ")] == logs.splitlines()


def test_models_lists_what_the_service_runs(stack: str, tmp_path: Path) -> None:
    listed = httpx.get(f"{stack}/api/v1/models").json()["data"]
    assert listed, "the service runs at least its default model"
    done = mediagen(stack, "models", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [m["name"] for m in listed]
    assert [line.endswith("(default)") for line in lines] == [m["default"] for m in listed]
    as_json = mediagen(stack, "models", "--json", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == listed


def test_api_and_usage_errors(stack: str) -> None:
    missing = mediagen(stack, "jobs", "show", str(uuid.uuid4()))
    assert missing.returncode == 3
    assert "404" in missing.stderr and "not_found" in missing.stderr
    invalid = mediagen(stack, "generate", "too wide", "--width", "100000", "--no-wait")
    assert invalid.returncode == 3 and "422" in invalid.stderr
    usage = mediagen(stack, "generate", "x", "--param", "novalue")
    assert usage.returncode == 2 and "KEY=VALUE" in usage.stderr
    assert mediagen(stack, "jobs").returncode == 2


def test_unreachable_service_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In process, without the client's backoff between its connection retries (seconds)."""
    from mediagen.client import _async, cli

    monkeypatch.setattr(_async, "_backoff", lambda attempt: 0.0)
    closed = free_port()
    assert cli.main(["jobs", "list", "--url", f"http://127.0.0.1:{closed}"]) == 3
    assert capsys.readouterr().err == (
        f"mediagen: connection_error: cannot reach the mediagen server at http://127.0.0.1:{closed} "
        "(connection refused): is it running? check MEDIAGEN_URL (or --url)\n")


def test_an_unreachable_service_is_reported_within_the_connect_timeout() -> None:
    """Connection retries (a server restarting) stop when the connect timeout is spent."""
    closed = free_port()
    with Client(url=f"http://127.0.0.1:{closed}", connect_timeout=1.0, max_retries=10) as client:
        started = time.monotonic()
        with pytest.raises(APIConnectionError, match=f"at http://127.0.0.1:{closed} "):
            client.get("some-job")
        assert time.monotonic() - started < 1.0


def test_version() -> None:
    done = subprocess.run([sys.executable, "-m", "mediagen", "--version"], capture_output=True,
                          text=True, timeout=30, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (
        0, f"mediagen {importlib.metadata.version('mediagen')}\n", "")


@pytest.mark.parametrize(
    "command",
    [
        ["generate"],
        ["jobs"],
        *[["jobs", c] for c in ("list", "show", "cancel", "delete", "wait", "download")],
        ["models"],
    ],
)
def test_every_command_has_examples(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from mediagen.client import cli

    with pytest.raises(SystemExit) as done:
        cli.main([*command, "--help"])
    assert done.value.code == 0
    assert "examples:\n  mediagen " in capsys.readouterr().out


def _run_in_pty(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 30
) -> tuple[int, str]:
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(
        args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, close_fds=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child's side is closed
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal(stack: str, tmp_path: Path) -> None:
    env = {**_env(stack), "TERM": "xterm", "COLUMNS": "100", "LINES": "30"}
    env.pop("NO_COLOR", None)
    code, screen = _run_in_pty(
        [
            sys.executable,
            "-m",
            "mediagen",
            "generate",
            "a cli fox on a tty",
            *SIZE,
            "-o",
            "tty.png",
        ],
        env,
        tmp_path,
    )
    assert code == 0, screen
    assert "\x1b[" in screen  # rich drew on the terminal
    assert "completed" in screen
    assert "━" in screen and "100%" in screen, screen
    assert "tty.png" in screen
    assert (tmp_path / "tty.png").stat().st_size > 0


def test_logs_on_a_terminal_print_beside_the_bar(stack: str, tmp_path: Path) -> None:
    env = {**_env(stack), "TERM": "xterm", "COLUMNS": "100", "LINES": "30"}
    env.pop("NO_COLOR", None)
    command = [sys.executable, "-m", "mediagen", "generate", "a cli fox logged on a tty", *SIZE,
               "--seed", "3", "--logs", "-o", "tty.png"]
    code, screen = _run_in_pty(command, env, tmp_path)
    assert code == 0, screen
    assert "\x1b[" in screen and "100%" in screen, screen  # the bar, drawn
    assert screen.count("rendering 1 png 64x64, seed 3, 50 steps") == 1, screen
    assert screen.count("rendered output 0 (image/png") == 1, screen
    assert (tmp_path / "tty.png").stat().st_size > 0


# `python -m mediagen` as a terminal starts it: Ctrl-C raises KeyboardInterrupt. A process started
# in the background inherits SIGINT ignored, and Python then leaves it so; so may this suite.
IN_A_TERMINAL = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "runpy.run_module('mediagen', run_name='__main__', alter_sys=True)")


def test_ctrl_c_leaves_the_job_running(idle_api: str, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", IN_A_TERMINAL, "generate", "a cli patient heron", *SIZE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_env(idle_api), "PYTHONFAULTHANDLER": "1"},
        cwd=tmp_path,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()  # the first status line: it is waiting
    assert "pending" in line, line
    job_id = line.split("job ", 1)[1].split(":", 1)[0]
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler: every thread's stack
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"still running 15 s after Ctrl-C:\n{err}")
    assert proc.returncode == 130, err
    assert f"interrupted; the job goes on: mediagen jobs wait {job_id}" in err
    assert "Traceback" not in err
    assert _detail(idle_api, job_id)["status"] == "pending"  # still there
    canceled = mediagen(idle_api, "jobs", "cancel", job_id)
    assert canceled.returncode == 0 and "canceled" in canceled.stdout


def test_a_job_already_completed_when_first_read_shows_a_full_bar() -> None:
    """A fast job can be completed by the time `generate` first reads it: no event follows, so
    the bar must be full from the start, not 0% (it was, now and then, on a loaded machine)."""
    import io

    from rich.console import Console

    from mediagen.client import Job
    from mediagen.client._display import Display

    display = Display(Job(id="1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed", status="completed"), False)
    screen = io.StringIO()
    display.console = Console(file=screen, force_terminal=True, width=100)
    display.fancy = True
    with display:
        pass
    assert "completed" in screen.getvalue() and "100%" in screen.getvalue(), screen.getvalue()


def test_the_wait_shows_the_queue_position_as_it_changes(idle_api: str) -> None:
    """While the job is pending its status line says how many jobs are ahead, and says it
    again when that changed (the stream's `queue` events)."""
    ids = []
    for n in range(3):
        response = httpx.post(f"{idle_api}/api/v1/generate", timeout=10, json={
            "prompt": f"a cli queued owl {n}", "parameters": {"width": 64, "height": 64}})
        assert response.status_code == 201, response.text
        ids.append(response.json()["job_id"])
    deadline = time.monotonic() + 10
    while _detail(idle_api, ids[2])["queue_position"] != 2:  # indexed right after its 201
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mediagen", "jobs", "wait", ids[2]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(idle_api),
    )
    assert proc.stderr is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x.strip()) for x in proc.stderr], daemon=True).start()
    try:
        assert lines.get(timeout=15) == f"job {ids[2]}: pending (2 ahead in the queue)"
        assert mediagen(idle_api, "jobs", "cancel", ids[0]).returncode == 0
        assert lines.get(timeout=15) == f"job {ids[2]}: pending (1 ahead in the queue)"
        assert mediagen(idle_api, "jobs", "cancel", ids[2]).returncode == 0
        assert lines.get(timeout=15) == f"job {ids[2]}: canceled"
        assert proc.wait(timeout=15) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
        mediagen(idle_api, "jobs", "cancel", ids[1])
