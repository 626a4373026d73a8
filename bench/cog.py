"""Benchmark: the handoff of one Cog slot from one job to the next.

    make bench-cog                   # or: python bench/cog.py --jobs 100
    python bench/cog.py --versus-tree ../other-checkout   # the same, at another checkout too

Starts, on loopback: an embedded Postgres and Redis (fresh, in .bench/), the example Cog model
(examples/cog-model) under Cog's own HTTP server (`cog` + `coglet` from
tests/cog-requirements.txt, in a virtualenv made once in .bench/cog-venv) with ONE slot, and
mediagen's API and one worker with the sweeper (`mediagen worker --beat`), default settings.
Submits the jobs at once through the HTTP API and counts the predictions started once all are
in (the queue is never empty then), in two rounds: a prediction of about 200 ms
(four steps of 50 ms) and a near-instant one (one step, no wait).

What it measures comes from the Cog server's side: its log's "Starting prediction" and
"Prediction worker completed" lines, timestamped to the microsecond. Utilization is the time
the slot spent predicting over the wall time from the first start to the last completion;
a handoff is the gap between one prediction's completion and the next one's start (p50, p99,
max). Its last line, for the 200 ms round (max over both rounds):
`cog handoff: p50_ms=X p99_ms=Y max_ms=Z utilization=U`.

Where a handoff's time goes, from the three logs (the 200 ms round, each code; p50): from
the completion to the terminal webhook's arrival at the API (Cog's share: its access line's
time less its duration), from that arrival to the next job's claim (the worker's "job
started": mediagen's release, start message, turn and claim), and from the claim to the
server's "Starting prediction" (the PUT: the server's own time, but for the request's making).
`handoff parts (CODE): cog_webhook_ms=X to_claim_ms=Y claim_to_start_ms=Z`, a line per code.

Each round also runs the same Cog server with no mediagen at all ("Cog alone"): this script
PUTs a prediction, and the next one the moment the server's terminal webhook reaches it (a
409 sent again as mediagen sends it). That is the floor of any scheduler in front of the
server: the server's own time from a PUT to its "Starting prediction", and from its completion
to its webhook. The line before the last:
`cog floor: p50_ms=X utilization=U` (the 200 ms round).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Procs, clean_env, free_port, servers, wait_http
from mediagen.providers.cog.provider import BUSY_WAITS

WORK = ROOT / ".bench" / "cog"
VENV = ROOT / ".bench" / "cog-venv"
MODEL_DIR = ROOT / "examples" / "cog-model"
REQUIREMENTS = ROOT / "tests" / "cog-requirements.txt"
MODEL = "bench/example"
SECRET = "bench-cog-webhook-secret"
# The two rounds: the model's inputs (besides the prompt).
ROUNDS = {
    "200 ms": {"width": 64, "height": 64, "num_inference_steps": 4, "step_seconds": 0.05},
    "near-instant": {"width": 64, "height": 64, "num_inference_steps": 1, "step_seconds": 0.0},
}


@dataclass(frozen=True)
class Figures:
    jobs: int
    completed: int
    utilization: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    over_100ms: int
    jobs_per_s: float
    possible_per_s: float  # 1 / the mean prediction time

    def row(self, label: str) -> str:
        return (f"{label:34} {self.completed:>4}/{self.jobs:<4} {self.utilization:6.1%} "
                f"{self.jobs_per_s:5.1f}/{self.possible_per_s:<5.1f} {self.p50_ms:7.1f} "
                f"{self.p99_ms:7.1f} {self.max_ms:8.1f} {self.over_100ms:5}")


HEADER = (f"{'round, code':34} {'done':>9} {'util':>6} {'jobs/s':>11} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'max ms':>8} {'>100':>5}")


def cog_venv() -> Path:
    """A virtualenv with the pinned Cog server and Pillow (made once, with the project's uv)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        print("bench: making the Cog virtualenv in .bench/cog-venv", flush=True)
        uv = Path(sys.executable).parent / "uv"
        subprocess.run([str(uv), "venv", "-q", "--python", sys.executable, str(VENV)], check=True)
        subprocess.run([str(uv), "pip", "install", "-q", "--python", str(python), "-r",
                        str(REQUIREMENTS)], check=True)
    return VENV


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def cog_times(log: Path, since: float) -> list[tuple[float, float]]:
    """(start, completion) of each prediction the Cog server's log shows after `since`
    (epoch seconds), in order of start."""
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    for line in log.read_bytes().splitlines():
        if not line.startswith(b"{"):
            continue
        try:
            entry: dict[str, Any] = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        fields = entry.get("fields") or {}
        message, prediction = fields.get("message"), fields.get("prediction_id")
        if not prediction or "timestamp" not in entry:
            continue
        at = _stamp(entry["timestamp"])
        if at < since:
            continue
        if message == "Starting prediction":
            starts.setdefault(prediction, at)
        elif message == "Prediction worker completed":
            ends[prediction] = at
    return sorted((starts[p], ends[p]) for p in starts if p in ends)


def _json_lines(log: Path) -> list[dict[str, Any]]:
    entries = []
    for line in log.read_bytes().splitlines():
        if line.startswith(b"{"):
            try:
                entries.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    return entries


def handoff_parts(logs: Path, since: float) -> dict[str, float]:
    """The p50 of each part of the handoffs (ms): Cog's completion to its terminal webhook's
    arrival at the API, that arrival to the next job's claim, the claim to the next start.
    Predictions by their Cog id before its token (`mg-<job>-<attempt>`)."""
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    for entry in _json_lines(logs / "cog.log"):
        fields = entry.get("fields") or {}
        prediction = str(fields.get("prediction_id") or "").split(".")[0]
        if not prediction or "timestamp" not in entry or _stamp(entry["timestamp"]) < since:
            continue
        if fields.get("message") == "Starting prediction":
            starts.setdefault(prediction, _stamp(entry["timestamp"]))
        elif fields.get("message") == "Prediction worker completed":
            ends[prediction] = _stamp(entry["timestamp"])
    terminal: dict[str, str] = {}  # request id -> prediction
    arrived: dict[str, float] = {}  # request id -> when its request came in
    for entry in _json_lines(logs / "api.log"):
        event, request = str(entry.get("event", "")), entry.get("request_id")
        words = event.split()
        if event.startswith("cog webhook for ") and "(processing):" not in words:
            terminal[request] = words[3]
        elif entry.get("logger") == "mediagen.access" and "/webhooks/cog/" in str(
                entry.get("route")):
            arrived[request] = _stamp(entry["timestamp"]) - entry["duration_ms"] / 1000
    webhook = {terminal[r]: at for r, at in arrived.items() if r in terminal}
    claimed: dict[str, float] = {}
    for entry in _json_lines(logs / "worker.log"):
        if entry.get("event") == "job started":
            job = str(entry["job_id"]).replace("-", "")
            claimed[f"mg-{job}-{entry['attempt']}"] = _stamp(entry["timestamp"])
    parts: dict[str, list[float]] = {"cog_webhook": [], "to_claim": [], "claim_to_start": []}
    order = sorted(starts, key=starts.__getitem__)
    for done, following in itertools.pairwise(order):
        if done in ends and done in webhook and following in claimed:
            parts["cog_webhook"].append((webhook[done] - ends[done]) * 1000)
            parts["to_claim"].append((claimed[following] - webhook[done]) * 1000)
            parts["claim_to_start"].append((starts[following] - claimed[following]) * 1000)
    return {name: _percentile(values, 0.5) for name, values in parts.items()}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def figures(jobs: int, completed: int, times: list[tuple[float, float]]) -> Figures:
    busy = sum(end - start for start, end in times)
    wall = times[-1][1] - times[0][0] if times else 0.0
    gaps = [(times[i + 1][0] - times[i][1]) * 1000 for i in range(len(times) - 1)]
    mean = busy / len(times) if times else 0.0
    return Figures(
        jobs=jobs,
        completed=completed,
        utilization=busy / wall if wall else 0.0,
        p50_ms=_percentile(gaps, 0.5),
        p99_ms=_percentile(gaps, 0.99),
        max_ms=max(gaps, default=0.0),
        over_100ms=sum(gap > 100 for gap in gaps),
        jobs_per_s=len(times) / wall if wall else 0.0,
        possible_per_s=1 / mean if mean else 0.0,
    )


async def run(args: argparse.Namespace) -> dict[str, Figures]:
    """Every round at this tree (and at --versus-tree): the figures by "round, code"."""
    venv = cog_venv()
    trees = [("this tree", ROOT)]
    if args.versus_tree:
        other = Path(args.versus_tree).resolve()
        trees.append((other.name, other))
    results: dict[str, Figures] = {}
    parts: dict[str, dict[str, float]] = {}  # the 200 ms round's, by code
    for name, inputs in ROUNDS.items():
        if args.round and name != args.round:
            continue
        work = WORK / f"alone-{name.replace(' ', '-')}"
        procs = Procs(work / "logs")
        try:
            got = await _measure_alone(args.jobs, procs, work, venv, inputs)
        finally:
            procs.stop()
        results[f"{name}, Cog alone"] = got
        print(got.row(f"{name}, Cog alone"), flush=True)
    for label, tree in trees:
        for name, inputs in ROUNDS.items():
            if args.round and name != args.round:
                continue
            work = WORK / f"{label.replace(' ', '-')}-{name.replace(' ', '-')}"
            work.mkdir(parents=True, exist_ok=True)
            procs = Procs(work / "logs")
            with servers(work, None, None) as (database_url, redis_url):
                try:
                    got, since = await _measure(args, procs, work, tree, venv, inputs,
                                                database_url, redis_url)
                finally:
                    procs.stop()
            results[f"{name}, {label}"] = got
            print(got.row(f"{name}, {label}"), flush=True)
            if name == "200 ms":
                parts[label] = handoff_parts(work / "logs", since)
    print()
    print(HEADER)
    for key, got in results.items():
        print(got.row(key))
    for label, got_parts in parts.items():
        print(f"handoff parts ({label}): " + " ".join(
            f"{part}_ms={value:.1f}" for part, value in got_parts.items()))
    if args.round:
        return results
    main_200, main_instant = results["200 ms, this tree"], results["near-instant, this tree"]
    print(f"near-instant: {main_instant.over_100ms} of {max(main_instant.completed - 1, 0)} "
          f"handoffs over 100 ms, longest {main_instant.max_ms:.0f} ms")
    floor = results["200 ms, Cog alone"]
    print(f"cog floor: p50_ms={floor.p50_ms:.1f} utilization={floor.utilization:.3f}")
    print(f"cog handoff: p50_ms={main_200.p50_ms:.1f} p99_ms={main_200.p99_ms:.1f} "
          f"max_ms={max(main_200.max_ms, main_instant.max_ms):.1f} "
          f"utilization={main_200.utilization:.3f}")
    return results


async def _measure(args: argparse.Namespace, procs: Procs, work: Path, tree: Path, venv: Path,
                   inputs: dict[str, Any], database_url: str,
                   redis_url: str) -> tuple[Figures, float]:
    """The round's figures, and when its handoffs began (epoch seconds)."""
    cog_port, api_port = free_port(), free_port()
    models = work / "models.toml"
    models.write_text(f'[models."{MODEL}"]\nprovider = "cog"\ndeadline = 120\n'
                      f'[[models."{MODEL}".endpoints]]\nurl = "http://127.0.0.1:{cog_port}"\n'
                      "slots = 1\n")
    env = clean_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        MODELS_FILE=str(models),
        PUBLIC_BASE_URL=f"http://127.0.0.1:{api_port}",
        COG_WEBHOOK_SECRET=SECRET,
        LOCAL_STORAGE_PATH=str(work / "media"),
        EMBEDDED_DATA_DIR=str(work / "data"),
        API_PORT=str(api_port),
        LOG_LEVEL="INFO",
        PYTHONPATH=str(tree),
    )
    subprocess.run([sys.executable, "-m", "mediagen", "migrate"], env=env, cwd=tree,
                   check=True, capture_output=True)
    _spawn_cog(procs, venv, cog_port)
    procs.spawn([sys.executable, "-m", "mediagen", "api"], env, "api.log", cwd=tree)
    procs.spawn([sys.executable, "-m", "mediagen", "worker", "--beat"], env, "worker.log",
                cwd=tree)
    await _cog_ready(f"http://127.0.0.1:{cog_port}")
    await wait_http(f"http://127.0.0.1:{api_port}/api/v1/health")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=60) as client:
        while (await client.get("/api/v1/health")).status_code != 200:  # the worker reported in
            await asyncio.sleep(0.2)
        body = {"model": MODEL, "parameters": {**inputs, "output_format": "png"}}
        created = await asyncio.gather(*(
            client.post("/api/v1/generate", json={**body, "prompt": f"a lighthouse, number {n}"})
            for n in range(args.jobs)))
        for reply in created:
            reply.raise_for_status()
        ids = [str(reply.json()["job_id"]) for reply in created]
        since = time.time()  # handoffs from here on: every job is in the queue
        # Jobs start in order of submission: statuses are read from the oldest unfinished on,
        # up to the first one still running, twice a second (the API's CPU goes to handoffs).
        done: dict[str, str] = {}
        deadline = time.monotonic() + args.timeout
        while len(done) < len(ids) and time.monotonic() < deadline:
            for job_id in [job_id for job_id in ids if job_id not in done]:
                status = (await client.get(f"/api/v1/jobs/{job_id}")).json()["status"]
                if status not in ("completed", "failed", "canceled"):
                    break
                done[job_id] = status
            await asyncio.sleep(0.5)
    completed = sum(status == "completed" for status in done.values())
    return figures(args.jobs, completed, cog_times(work / "logs" / "cog.log", since)), since


def _cog_env(venv: Path, port: int) -> dict[str, str]:
    env = {**clean_env(), "PATH": f"{venv / 'bin'}:{clean_env().get('PATH', '')}",
           "PORT": str(port), "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
           "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    return env


def _spawn_cog(procs: Procs, venv: Path, port: int) -> None:
    procs.spawn([str(venv / "bin" / "python"), "-m", "cog.server.http", "--host", "127.0.0.1"],
                _cog_env(venv, port), "cog.log", cwd=MODEL_DIR)


async def _measure_alone(jobs: int, procs: Procs, work: Path, venv: Path,
                         inputs: dict[str, Any]) -> Figures:
    """The Cog server driven by this script alone: each PUT is sent the moment the terminal
    webhook of the prediction before it arrives (a receiver on loopback)."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Queue[str] = asyncio.Queue()

    class Receiver(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            body = orjson.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            if body.get("status") in ("succeeded", "failed", "canceled"):
                loop.call_soon_threadsafe(ended.put_nowait, str(body.get("status")))

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/done"
    cog_port = free_port()
    _spawn_cog(procs, venv, cog_port)
    try:
        await _cog_ready(f"http://127.0.0.1:{cog_port}")
        since = time.time()
        completed = 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cog_port}", timeout=60) as cog:
            for n in range(jobs):
                body = {"input": {**inputs, "output_format": "png",
                                  "prompt": f"a lighthouse, number {n}"},
                        "webhook": hook, "webhook_events_filter": ["completed"]}
                url = f"/predictions/alone-{n}-{time.time_ns()}"
                # The server sends its terminal webhook a few milliseconds before its slot
                # takes work: a 409 started nothing, so the same PUT is sent again, after the
                # waits mediagen's Cog provider uses.
                for wait in (*BUSY_WAITS, None):
                    reply = await cog.put(url, json=body, headers={"Prefer": "respond-async"})
                    if reply.status_code != 409 or wait is None:
                        break
                    await asyncio.sleep(wait)
                reply.raise_for_status()
                completed += await asyncio.wait_for(ended.get(), 60) == "succeeded"
    finally:
        receiver.shutdown()
        receiver.server_close()
    return figures(jobs, completed, cog_times(work / "logs" / "cog.log", since))


async def _cog_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(f"{url}/health-check", timeout=2)).json().get(
                        "status") == "READY":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"Cog server {url} not READY")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--round", choices=list(ROUNDS), help="only this round (no last line)")
    parser.add_argument("--versus-tree", metavar="DIR",
                        help="also run every round at another checkout of mediagen")
    return parser


def main() -> int:
    results = asyncio.run(run(parser().parse_args()))
    return 0 if all(f.completed == f.jobs for f in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
