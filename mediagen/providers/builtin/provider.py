"""The built-in provider: real images, offline, behind the same non-blocking interface as Replicate.

A prediction's id carries its creation time, so `get` can tell from the clock alone whether the
simulated latency (`BUILTIN_LATENCY`) has passed: no task sleeps, no state is kept in memory.

Fault injection (`BUILTIN_FAULT_INJECTION=true`, for tests and chaos drills only) reads
directives in the prompt: `[fault:transient=N]` fails the first N attempts with a retryable
error, `[fault:permanent]` fails every attempt with a permanent one, and `[fault:crash]`
raises what no provider should (a bug's exception): the step fails unexpectedly, as a bug
would make it, and the job is left to the sweeper (drills of error tracking).

Pillow (the renderer's) is the extra `mediagen[builtin]`: without it this provider still starts,
says so in the log, and fails each job at once with the same message (`mediagen run` and
`mediagen worker` refuse to start instead).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from mediagen import extras
from mediagen.config import get_settings
from mediagen.errors import PermanentProviderError, RetryableProviderError, StorageError
from mediagen.providers.base import (
    Fetched,
    GenerationRequest,
    Output,
    Prediction,
    PredictionStatus,
)

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

_TRANSIENT = re.compile(r"\[fault:transient=(\d+)\]")
_PERMANENT = "[fault:permanent]"
_CRASH = "[fault:crash]"


_IMAGE_INPUTS = ("image", "init_image", "input_image")


async def _init_image(
    request: GenerationRequest, size: tuple[int, int], max_pixels: int
) -> tuple[Image.Image | None, float]:
    """The input image the job names (`image`, `init_image`, `input_image`, else any image
    input), read from storage and decoded once, fitted to `size`, and how much of the drawing
    covers it: `prompt_strength` (0: the input as it is, 1: the drawing alone; 0.5 by
    default). One over `max_pixels` fails the job before it is decoded."""
    images = {n: r for n, r in request.inputs.items() if r.content_type.startswith("image/")}
    name = next((n for n in _IMAGE_INPUTS if n in images), next(iter(images), None))
    if name is None:
        return None, 1.0
    try:
        strength = float(request.parameters.get("prompt_strength", 0.5))
    except (TypeError, ValueError):
        raise PermanentProviderError("prompt_strength must be a number from 0 to 1") from None
    if not 0.0 <= strength <= 1.0:
        raise PermanentProviderError("prompt_strength must be a number from 0 to 1")
    from mediagen.providers.builtin.render import TooManyPixels, prepare

    try:
        data = await images[name].data()
    except StorageError as exc:
        raise RetryableProviderError(f"input {name!r}: {exc.message}") from exc
    try:
        return await asyncio.to_thread(prepare, data, size, max_pixels), strength
    except (TooManyPixels, ValueError) as exc:
        raise PermanentProviderError(f"input {name!r}: {exc}") from None


def _first_line(request: GenerationRequest) -> str:
    """The log's first line: what the prediction renders."""
    params = request.parameters
    seed = params.get("seed")
    return (
        f"rendering {int(params.get('num_outputs', 1))} {params.get('output_format', 'png')} "
        f"{int(params.get('width', 1024))}x{int(params.get('height', 1024))}, "
        f"seed {'random' if seed is None else seed}, "
        f"{int(params.get('num_inference_steps', 50))} steps\n"
    )


class BuiltinProvider:
    name = "builtin"

    def __init__(
        self,
        latency: float = 0.0,
        fault_injection: bool = False,
        max_input_pixels: int | None = None,
    ) -> None:
        """`max_input_pixels`: the largest input image; by default the process's settings'
        (`Settings.max_input_pixels`)."""
        self.latency = latency
        self.fault_injection = fault_injection
        self.max_input_pixels = max_input_pixels or get_settings().max_input_pixels
        self.unavailable = ""
        try:
            extras.require(
                "builtin",
                "the built-in generator (REPLICATE_API_TOKEN is unset)",
                alternative="set REPLICATE_API_TOKEN",
            )
        except extras.MissingExtraError as exc:
            self.unavailable = str(exc)
            log.error("%s; its jobs fail until then", exc)
        else:  # imported now, not by the first job on the event loop
            import mediagen.providers.builtin.render  # noqa: F401

    def _inject_faults(self, request: GenerationRequest) -> None:
        if not self.fault_injection:
            return
        if _CRASH in request.prompt:
            raise RuntimeError("injected crash: an unexpected error in the built-in generator")
        if _PERMANENT in request.prompt:
            raise PermanentProviderError("injected permanent fault: the model rejected the input")
        match = _TRANSIENT.search(request.prompt)
        if match and request.attempt <= int(match.group(1)):
            raise RetryableProviderError(
                f"injected transient fault on attempt {request.attempt} of {match.group(1)}"
            )

    async def create(self, request: GenerationRequest) -> Prediction:
        if self.unavailable:
            raise PermanentProviderError(self.unavailable)
        self._inject_faults(request)
        prediction_id = f"builtin-{request.job_id}-{request.attempt}-{time.time_ns() // 1_000_000}"
        # What it renders is logged from the start, as a model logs while it runs: a follower
        # of the job's logs sees them grow (this line now, the outputs' lines at the end).
        return Prediction(
            prediction_id,
            PredictionStatus.PROCESSING,
            logs=_first_line(request),
            poll_after=self.latency,
        )

    async def get(self, prediction_id: str, request: GenerationRequest) -> Prediction:
        try:
            created_ms = int(prediction_id.rsplit("-", 1)[1])
        except (IndexError, ValueError) as exc:
            raise PermanentProviderError(f"unknown prediction {prediction_id!r}") from exc
        remaining = created_ms / 1000 + self.latency - time.time()
        params = request.parameters
        fmt = str(params.get("output_format", "png"))
        count = int(params.get("num_outputs", 1))
        seed = params.get("seed")
        width, height = int(params.get("width", 1024)), int(params.get("height", 1024))
        steps = int(params.get("num_inference_steps", 50))
        # Its logs, like a model's: what it renders, then each output and how long it took.
        logs = _first_line(request)
        if remaining > 0:
            return Prediction(
                prediction_id, PredictionStatus.PROCESSING, logs=logs, poll_after=remaining
            )
        if self.unavailable:
            raise PermanentProviderError(self.unavailable)
        from mediagen.providers.builtin.render import CONTENT_TYPES, render

        # Image-to-image: the input, decoded once for every output, shows through the drawing.
        base, strength = await _init_image(request, (width, height), self.max_input_pixels)
        outputs = []
        took = 0.0
        for index in range(count):
            began = time.perf_counter()
            data = await asyncio.to_thread(
                render,
                request.prompt,
                width,
                height,
                None if seed is None else int(seed) + index,
                steps,
                fmt,
                base,
                strength,
            )
            seconds = time.perf_counter() - began
            took += seconds
            logs += f"rendered output {index} ({CONTENT_TYPES[fmt]}, {len(data)} bytes) "
            logs += f"in {seconds * 1000:.0f} ms\n"
            outputs.append(Output(data=data, content_type=CONTENT_TYPES[fmt]))
        return Prediction(
            prediction_id,
            PredictionStatus.SUCCEEDED,
            outputs=outputs,
            logs=logs,
            predict_time=round(took, 6),
        )

    async def cancel(self, prediction_id: str) -> None:
        return None

    async def reported(self, prediction_id: str) -> bool:
        return False

    @asynccontextmanager
    async def fetch(self, output: Output) -> AsyncIterator[Fetched]:
        """The rendered image, already in memory: its body is plain bytes."""
        if output.data is None or output.content_type is None:
            raise PermanentProviderError("built-in output has no data")
        ext = output.content_type.split("/", 1)[1].replace("jpeg", "jpg")
        yield Fetched(body=output.data, content_type=output.content_type, ext=ext)

    async def close(self) -> None:
        return None
