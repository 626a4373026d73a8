"""S10's self-hosted models: real Cog servers (Cog's HTTP server from PyPI, `cog` + `coglet`
pinned in tests/cog-requirements.txt, no Docker) running examples/cog-model, as
tests/cog_servers.py starts them, but as `procs.Proc`s (stopped by `stop_all` however a run
ends).

- two **endpoints** (`cog-a`, `cog-b`, one slot each) that a models file routes `MODEL` to,
  with a short `deadline`;
- a **reference** server the service does not know: what the predictor makes for a job's inputs
  (a synchronous `POST /predictions`), the bytes each stored output must equal, and the body of
  the duplicated webhooks S10 sends;
- what the servers' logs say (one JSON line per event): which predictions each started and
  completed, and which terminal webhooks they had to send again.

The servers' virtualenv is made once per run with the project's `uv` (its cache makes this a
copy), in the run's scratch directory.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.chaos.procs import Proc, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "examples" / "cog-model"
REQUIREMENTS = ROOT / "tests" / "cog-requirements.txt"
MODEL = "chaos/cog-fox"
SECRET = "chaos-cog-webhook-secret"  # COG_WEBHOOK_SECRET: S10 signs its duplicates with it
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_STEP = re.compile(r"^ *([0-9]{1,3})%\|")  # the predictor's progress lines
_WEBHOOK_URL = re.compile(r"/webhooks/cog/(mg-[0-9a-f]{32}-[0-9]+)/")


def cog_venv(root: Path) -> Path:
    """The Cog servers' virtualenv (made the first time a run needs it)."""
    venv = root / "cog-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        uv = Path(sys.executable).parent / "uv"
        subprocess.run(
            [str(uv), "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=300
        )
        subprocess.run(
            [str(uv), "pip", "install", "-q", "--python", str(python), "-r", str(REQUIREMENTS)],
            check=True,
            timeout=600,
        )
    return venv


@dataclass(frozen=True)
class CogSpec:
    """What a Cog scenario's jobs ask the model for, and how soon a lost prediction is retried
    (the models file's `deadline`)."""

    deadline: float
    size: int = 64
    steps: int = 5
    step_seconds: float = 0.2  # a prediction takes about steps x step_seconds

    def parameters(self, index: int) -> dict[str, Any]:
        """Job `index`'s parameters; odd jobs give a seed, even ones let the prompt pick it."""
        given: dict[str, Any] = {
            "width": self.size,
            "height": self.size,
            "output_format": "png",
            "num_inference_steps": self.steps,
            "step_seconds": self.step_seconds,
        }
        if index % 2:
            given["seed"] = 1000 + index
        return given

    def reference_inputs(self, prompt: str, index: int) -> dict[str, Any]:
        """The same inputs for the reference prediction, without the pacing (`step_seconds` only
        sleeps between steps: the picture depends on prompt, size and seed)."""
        return {"prompt": prompt, **self.parameters(index), "step_seconds": 0}

    def bound(self, poll_interval: float, retry_max_delay: float, jobs: int) -> float:
        """T for a Cog scenario: a prediction lost at the last fault is given up `deadline`
        after its creation (seen at the next poll), retried after at most RETRY_MAX_DELAY, and
        may then wait for a slot behind every job still queued (two one-slot endpoints), plus
        its own prediction, a poll and 5 s for the webhook and the copy into storage."""
        prediction = self.steps * self.step_seconds + 0.5
        queue = jobs * prediction / 2
        return self.deadline + 2 * poll_interval + retry_max_delay + queue + prediction + 5


@dataclass
class CogServer:
    """One Cog server on a loopback port: started, killed (server and its worker, one process
    group) and started again on the same port."""

    name: str
    proc: Proc
    port: int

    @classmethod
    def make(cls, name: str, venv: Path, base_env: dict[str, str], logs: Path) -> CogServer:
        port = free_port()
        bin_dir = venv / "bin"
        env = {
            **base_env,
            "PATH": f"{bin_dir}:{base_env.get('PATH', '')}",
            "PORT": str(port),
            "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
            "VIRTUAL_ENV": str(venv),
        }
        env.pop("PYTHONPATH", None)
        cmd = [str(bin_dir / "python"), "-m", "cog.server.http", "--host", "127.0.0.1"]
        return cls(name, Proc(name, cmd, env, MODEL_DIR, logs / f"{name}.log"), port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> str | None:
        try:
            return str(httpx.get(f"{self.url}/health-check", timeout=2).json()["status"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    def start(self, timeout: float = 60) -> None:
        """Start and wait until READY (blocking)."""
        self.proc.start()
        wait_until(lambda: self.health() == "READY", timeout, f"{self.name} READY", self.proc)

    def kill(self) -> None:
        """kill -9 the server and its worker (they share the process group)."""
        self.proc.kill_group(signal.SIGKILL)
        self.proc.wait(10)

    def events(self) -> list[dict[str, Any]]:
        """The `fields` of every JSON line of its log (all its lives: the log is appended)."""
        out = []
        with contextlib.suppress(OSError):
            for line in self.proc.log.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError, AttributeError):
                    fields = json.loads(line).get("fields")
                    if isinstance(fields, dict):
                        out.append(fields)
        return out


@dataclass
class Predictions:
    """What the endpoints' logs say about the predictions mediagen made on them."""

    started: dict[str, str] = field(default_factory=dict)  # cog id -> server
    completed: set[str] = field(default_factory=set)
    progress: dict[str, tuple[str, int]] = field(default_factory=dict)  # -> (server, percent)
    webhook_retried: set[str] = field(default_factory=set)  # terminal webhook sent again

    @property
    def unfinished(self) -> set[str]:
        """Started and never completed: killed with their server."""
        return set(self.started) - self.completed


@dataclass
class CogFarm:
    """S10's servers and models file."""

    dir: Path
    endpoints: list[CogServer]
    reference: CogServer
    deadline: float
    references: dict[int, list[bytes]] = field(default_factory=dict)  # job index -> outputs

    @classmethod
    async def start(
        cls, root: Path, workdir: Path, base_env: dict[str, str], deadline: float
    ) -> CogFarm:
        venv = await asyncio.to_thread(cog_venv, root)
        workdir.mkdir(parents=True, exist_ok=True)
        logs = workdir / "logs"
        servers = [CogServer.make(n, venv, base_env, logs) for n in ("cog-a", "cog-b", "cog-ref")]
        farm = cls(workdir, servers[:2], servers[2], deadline)
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in servers))
        lines = [f'[models."{MODEL}"]', 'provider = "cog"', f"deadline = {deadline:g}"]
        for server in farm.endpoints:
            lines += [f'[[models."{MODEL}".endpoints]]', f'url = "{server.url}"', "slots = 1"]
        farm.models_file.write_text("\n".join(lines) + "\n")
        return farm

    @property
    def models_file(self) -> Path:
        return self.dir / "models.toml"

    def env(self) -> dict[str, str]:
        return {"MODELS_FILE": str(self.models_file), "COG_WEBHOOK_SECRET": SECRET}

    def stop(self) -> None:
        for server in [*self.endpoints, self.reference]:
            server.proc.stop(10)

    async def make_references(self, inputs: dict[int, dict[str, Any]]) -> None:
        """What the predictor makes for each job's inputs, from the reference server."""
        async with httpx.AsyncClient(base_url=self.reference.url, timeout=60) as client:
            for index, given in inputs.items():
                for _ in range(100):  # 409: its slot is freed a moment after it answered
                    reply = await client.post("/predictions", json={"input": given})
                    if reply.status_code != 409:
                        break
                    await asyncio.sleep(0.05)
                reply.raise_for_status()
                body = reply.json()
                if body.get("status") != "succeeded":
                    raise RuntimeError(f"reference prediction {index}: {body.get('error')}")
                self.references[index] = [decode(uri) for uri in body["output"]]

    def predictions(self) -> Predictions:
        seen = Predictions()
        for server in self.endpoints:
            for fields in server.events():
                message, pid = fields.get("message"), fields.get("prediction_id")
                if isinstance(pid, str):  # the id the server was given: its Cog id and token
                    pid = pid.partition(".")[0]
                if message == "Starting prediction" and isinstance(pid, str):
                    seen.started.setdefault(pid, server.name)
                elif message == "Prediction worker completed" and isinstance(pid, str):
                    seen.completed.add(pid)
                elif (step := _STEP.match(str(message))) and isinstance(pid, str):
                    seen.progress[pid] = (server.name, int(step.group(1)))
                elif str(message).startswith("Terminal webhook request error") and (
                    match := _WEBHOOK_URL.search(str(fields.get("error", "")))
                ):
                    seen.webhook_retried.add(match.group(1))
        return seen


def decode(uri: str) -> bytes:
    return base64.b64decode(uri.split(",", 1)[1])


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def png_problem(data: bytes, width: int, height: int) -> str | None:
    """Why `data` is not a complete, valid `width`x`height` PNG (None if it is): signature,
    IHDR first, every chunk's CRC, IEND last and nothing after it, the image data inflating to
    exactly the rows the header announces."""
    if not data.startswith(PNG_SIGNATURE):
        return "no PNG signature"
    pos, chunks, idat = len(PNG_SIGNATURE), [], b""
    header: tuple[int, ...] = ()
    while pos < len(data):
        if pos + 12 > len(data):
            return "truncated chunk"
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if len(body) != length or pos + 12 + length > len(data):
            return f"truncated {kind!r} chunk"
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(kind + body) != crc:
            return f"bad CRC in {kind!r}"
        chunks.append(kind)
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
        if kind == b"IEND":
            break
    if not chunks or chunks[0] != b"IHDR" or chunks[-1] != b"IEND" or pos != len(data):
        return f"bad chunk order {chunks[:3]}...{chunks[-1:]} or bytes after IEND"
    w, h, depth, colour = header[:4]
    if (w, h) != (width, height):
        return f"{w}x{h}, not {width}x{height}"
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour)
    if channels is None or header[6] != 0:
        return f"unexpected colour type {colour} / interlace {header[6]}"
    try:
        raw = zlib.decompress(idat)
    except zlib.error as exc:
        return f"image data does not inflate: {exc}"
    if len(raw) != h * (1 + (w * channels * depth + 7) // 8):
        return f"image data has {len(raw)} bytes, not the rows of {w}x{h}"
    return None


def wait_busy(server: CogServer, timeout: float) -> bool:
    """Until the server says BUSY (a prediction is running on its only slot)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.health() == "BUSY":
            return True
        time.sleep(0.05)
    return False


def check_cog(
    farm: CogFarm,
    rows: list[dict[str, Any]],
    accepted: dict[str, int],
    media: Path,
    extra: dict[str, Any],
) -> list[str]:
    """S10's own promises, from the table, the stored files and the Cog servers' logs:

    - every accepted job completed, each output a valid PNG of the asked size, byte-identical
      to what the predictor makes for the job's inputs (the reference server's);
    - every prediction a server started belongs to an attempt its job counted (`mg-<job>-<k>`
      with k <= the job's attempt), a prediction killed with its server was followed by a new
      attempt, and the job's final prediction is one a server really ran;
    - nothing left in staging (`cog-staging/`).
    """
    problems: list[str] = []
    seen = farm.predictions()
    by_id = {row["id"]: row for row in rows}
    by_hex = {row["id"].replace("-", ""): row for row in rows}
    not_done, bad_files = [], []
    for job_id, index in accepted.items():
        row = by_id.get(job_id)
        if row is None or row["status"] != "completed":
            not_done.append((job_id, row["status"] if row else "missing", (row or {}).get("error")))
            continue
        want = farm.references.get(index, [])
        outputs = row["outputs"]
        if len(outputs) != len(want):
            bad_files.append(f"job {job_id}: {len(outputs)} outputs, the model makes {len(want)}")
            continue
        for n, (output, made) in enumerate(zip(outputs, want, strict=True)):
            try:
                data = (media / output["key"]).read_bytes()
            except OSError as exc:
                bad_files.append(f"job {job_id} output {n}: {exc}")
                continue
            size = struct.unpack(">II", made[16:24]) if len(made) >= 24 else (0, 0)
            if why := png_problem(data, *size):
                bad_files.append(f"job {job_id} output {n} is not a valid PNG: {why}")
            elif data != made:
                bad_files.append(
                    f"job {job_id} output {n}: {len(data)} bytes differ from the "
                    f"{len(made)} the predictor makes for its inputs"
                )
    if not_done:
        problems.append(f"{len(not_done)} Cog jobs did not complete: {not_done[:3]}")
    problems.extend(bad_files[:10])
    uncounted, unretried, unreal = [], [], []
    for prediction in seen.started:
        _, job_hex, attempt = prediction.split("-")
        row = by_hex.get(job_hex)
        if row is None or int(attempt) > int(row["attempt"]):
            uncounted.append(prediction)
        elif prediction in seen.unfinished and int(row["attempt"]) <= int(attempt):
            unretried.append(prediction)
    for row in rows:
        final = str(row.get("prediction_id") or "").split(".")[0]
        if row["status"] == "completed" and final not in seen.completed:
            unreal.append((row["id"], final))
    if uncounted:
        problems.append(f"{len(uncounted)} predictions of attempts no job counted: {uncounted[:3]}")
    if unretried:
        problems.append(
            f"{len(unretried)} killed predictions not followed by a new attempt: {unretried[:3]}"
        )
    if unreal:
        problems.append(
            f"{len(unreal)} jobs completed by a prediction no server completed: {unreal[:3]}"
        )
    staged = sorted(
        p.relative_to(media).as_posix() for p in (media / "cog-staging").rglob("*") if p.is_file()
    )
    if staged:
        problems.append(f"{len(staged)} staged objects left in cog-staging/: {staged[:3]}")
    if not seen.unfinished:
        problems.append("no prediction was cut off by the kill (the fault missed its target)")
    if not seen.webhook_retried:
        problems.append("no terminal webhook failed while the API was down (fault missed)")
    extra["killed"] = len(seen.unfinished)
    extra["webhooks_resent"] = len(seen.webhook_retried)
    finals = {str(row.get("prediction_id") or "").split(".")[0] for row in rows}
    extra["resent_used"] = len(seen.webhook_retried & finals)  # landed once the API was back
    extra["retried"] = sum(int(row["retry_count"]) > 0 for row in rows)
    extra["max_attempt"] = max((int(row["attempt"]) for row in rows), default=0)
    extra["staging"] = len(staged)
    return problems
