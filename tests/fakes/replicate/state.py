"""The fake Replicate's state: configuration, counters, and predictions computed from the clock.

Nothing sleeps per prediction: a prediction is its creation time plus its options, and every
read derives status, logs and outputs from the elapsed time, so 1000 in flight cost 1000 dicts.

Options and faults come from the global `FakeConfig.faults` and, per prediction, from tags in
the prompt (so concurrent tests don't interfere): `[fake:429 times=2 retry_after=5]`. A tag is
space-separated `name` or `name=value` tokens; several tags merge, the prompt wins over global.

    create/get faults   429 500 hang garbage 422  (+ times=K: only the first K hits,
                        on=get / on=cancel: hit GET or cancel of the prediction instead of
                        create, retry_after=N)
    outcome             failed (error=text_with_underscores) stuck (processing forever)
                        single (output is one URL string, not a list)
                        text (a text model: its output is the prompt's words as streamed
                        chunks, the ones so far while it runs; no file)
    files               file404 truncated oversized (+ nolength: chunked, no Content-Length)
                        redirect=N (each output URL answers N redirects first)
                        bytes=N (N pseudo-random bytes from `stream_bytes`, generated as sent;
                        + nolength, truncated, drip=S: sleep S seconds before each 64 KiB,
                        stall=S: sleep S seconds once half-way)
    options             latency=S outputs=image/png,video/mp4,audio/wav
                        loglines=N (N more lines in `logs`: a long log)
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import random
import re
import secrets
import struct
import time
import wave
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from PIL import Image, ImageDraw

_TAG = re.compile(r"\[fake:([^\]]*)\]")
EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "video/mp4": "mp4",
    "audio/wav": "wav",
    "application/octet-stream": "bin",
}
TERMINAL = ("succeeded", "failed", "canceled")


def parse_tags(text: str) -> dict[str, str]:
    """`[fake:429 times=2]` -> {"429": "", "times": "2"}; tags elsewhere in the text merge."""
    found: dict[str, str] = {}
    for tag in _TAG.findall(text):
        for token in tag.split():
            key, _, value = token.partition("=")
            found[key] = value
    return found


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass
class FakeConfig:
    """Runtime behaviour: set attributes, call `FakeReplicate.configure` or the admin API."""

    token: str = "test-token"
    latency: float = 0.3  # seconds from creation to the terminal state
    steps: int = 20  # total of the tqdm progress lines in `logs`
    logs: bool = True
    outputs: list[str] = field(default_factory=lambda: ["image/png"])
    faults: str = ""  # global tag, same syntax as inside `[fake:...]`
    retry_after: int = 1
    hang_seconds: float = 30.0
    oversize_bytes: int = 2 * 1024 * 1024
    image_size: int = 64
    webhook_secret: str = field(default_factory=new_secret)
    webhook_throttle: float = 0.5  # min seconds between `logs` webhooks of one prediction
    webhook_retries: int = 3

    def update(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if key not in self.__dataclass_fields__:
                raise KeyError(f"unknown config key {key!r}")
            setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Stats:
    """Counters the tests read (plain ints: safe to read from another thread)."""

    created: int = 0
    create_attempts: int = 0  # including those a fault answered
    cancels: int = 0
    downloads: int = 0
    downloads_with_token: int = 0  # file requests that carried an Authorization header (a leak)
    downloads_of: Counter[str] = field(default_factory=Counter)  # prediction id -> downloads
    webhooks_delivered: int = 0
    webhooks_failed: int = 0  # failed delivery attempts (each retry counts)
    requests: Counter[str] = field(default_factory=Counter)  # "GET /v1/predictions/{id}": n

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "requests": dict(self.requests),
                "downloads_of": dict(self.downloads_of)}


@dataclass
class FakePrediction:
    id: str
    model: str
    version: str
    input: dict[str, Any]
    options: dict[str, str]
    base_url: str
    latency: float
    outputs: list[str]
    created: float = field(default_factory=time.time)
    webhook: str | None = None
    events: frozenset[str] = frozenset({"output", "completed"})
    canceled_at: float | None = None
    # webhook bookkeeping (touched only by the server loop)
    sent_start: bool = False
    sent_logs: str | None = None
    last_sent: float = 0.0
    hook_done: bool = False

    @property
    def ends_at(self) -> float | None:
        """When the prediction turns terminal (None: not foreseeable, stuck and not canceled)."""
        if self.canceled_at is not None:
            return self.canceled_at
        return None if "stuck" in self.options else self.created + self.latency

    def status(self, now: float) -> str:
        ends = self.ends_at
        if ends is not None and now >= ends:
            if self.canceled_at is not None:
                return "canceled"
            return "failed" if "failed" in self.options else "succeeded"
        return "starting" if now < self.created + self.latency * 0.1 else "processing"

    def output_urls(self) -> list[str]:
        hops = self.options.get("redirect")
        query = f"?hops={int(hops)}" if hops else ""
        return [
            f"{self.base_url}files/{self.id}/{n}.{EXTENSIONS.get(kind, 'bin')}{query}"
            for n, kind in enumerate(self.outputs)
        ]

    def to_json(self, config: FakeConfig, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        status = self.status(now)
        started = self.created + self.latency * 0.1
        completed = min(now, self.ends_at or now) if status in TERMINAL else None
        output: Any = None
        if "text" in self.options and status in ("processing", "succeeded"):
            words = _TAG.sub("", str(self.input.get("prompt", ""))).split()
            chunks = [words[0], *(f" {word}" for word in words[1:])] if words else []
            share = 1.0
            if status == "processing":
                share = (now - started) / max(self.latency * 0.9, 1e-6)
            output = chunks[: int(len(chunks) * min(share, 1.0))]
        elif status == "succeeded":
            urls = self.output_urls()
            output = urls[0] if "single" in self.options else urls
        error = None
        if status == "failed":
            error = self.options.get("error", "").replace("_", " ") or "fake model crashed: OOM"
        logs = None
        if config.logs and status != "starting":
            progress = 0.4 if "stuck" in self.options else 1.0
            if status == "processing" and "stuck" not in self.options:
                progress = (now - started) / max(self.latency * 0.9, 1e-6)
            logs = progress_logs(min(progress, 1.0), config.steps, self.latency,
                                 int(self.options.get("loglines") or 0))
        api = f"{self.base_url}v1/predictions/{self.id}"
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "input": self.input,
            "logs": logs,
            "output": output,
            "data_removed": False,
            "error": error,
            "status": status,
            "source": "api",
            "created_at": _iso(self.created),
            "started_at": _iso(started) if now >= started else None,
            "completed_at": _iso(completed) if completed is not None else None,
            "urls": {"get": api, "cancel": f"{api}/cancel"},
            "metrics": {"predict_time": round(completed - started, 3)} if completed else {},
        }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def progress_logs(fraction: float, total: int, latency: float, extra: int = 0) -> str:
    """tqdm-like lines up to `fraction` of `total` steps, one per tenth of the way and one at
    the end. Like Replicate's, the text only grows: a later read starts with an earlier one.
    `extra` (tag `loglines=N`): N lines of model loading first, for a long log."""
    done = math.floor(fraction * total)
    rate = total / max(latency, 1e-6)
    lines = ["Using seed: 42"]
    lines += [f"loading weights: shard {n:05d} of {extra:05d} ok" for n in range(1, extra + 1)]
    lines.append("Running predict()...")
    stride = max(1, total // 10)
    steps = range(0, done + 1, stride)
    for step in [*steps, *([done] if done == total and done not in steps else [])]:
        pct = step * 100 // total
        left = (total - step) / rate
        lines.append(
            f"{pct:3d}%|{'#' * (pct // 10):<10}| {step}/{total} "
            f"[00:{int(step / rate):02d}<00:{int(left):02d}, {rate:.2f}it/s]"
        )
    return "\n".join(lines) + "\n"


def version_of(model: str) -> str:
    return hashlib.sha256(model.encode()).hexdigest()


def media_bytes(kind: str, seed: str, size: int = 64) -> bytes:
    """Small but correctly typed files: real PNG/JPEG/WebP/WAV, an MP4 that starts with `ftyp`."""
    digest = hashlib.sha256(seed.encode()).digest()
    if kind.startswith("image/"):
        image = Image.new("RGB", (size, size), tuple(digest[:3]))
        ImageDraw.Draw(image).ellipse(
            (size // 4, size // 4, size * 3 // 4, size * 3 // 4), fill=tuple(digest[3:6])
        )
        buffer = io.BytesIO()
        image.save(buffer, format={"image/jpeg": "JPEG", "image/webp": "WEBP"}.get(kind, "PNG"))
        return buffer.getvalue()
    if kind == "audio/wav":
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(8000)
            out.writeframes(
                b"".join(
                    struct.pack("<h", int(8000 * math.sin(i * digest[0] / 200))) for i in range(800)
                )
            )
        return buffer.getvalue()
    if kind == "video/mp4":
        ftyp = struct.pack(">I4s4sI", 32, b"ftyp", b"isom", 512) + b"isomiso2avc1mp41"
        payload = digest * 32
        return ftyp + struct.pack(">I4s", 8 + len(payload), b"mdat") + payload
    return digest * 16


def stream_bytes(seed: str, size: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """`size` pseudo-random bytes, the same for the same seed, made `chunk` at a time (a large
    output is never whole in memory, here or in the test that checks it)."""
    rng = random.Random(seed)
    for start in range(0, size, chunk):
        yield rng.randbytes(min(chunk, size - start))
