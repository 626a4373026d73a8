"""Following one job until it is finished: its live events (a dropped stream resumed with
``Last-Event-ID``), else, when the stream keeps failing or the server has none, a look every
second; the model's logs line by line when they are followed. `AsyncClient.wait` says what a
caller sees."""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from mediagen.client._errors import RateLimitedError, ServiceUnavailableError, error_from_response
from mediagen.client._logs import LogCallback, LogFollower, split_stored
from mediagen.client._models import Job, ProgressCallback
from mediagen.client._sse import SSEParser
from mediagen.client._states import TERMINAL

POLL_SECONDS = 1.0
STREAM_FAILURES = 3  # consecutive failed stream attempts before falling back to polling
STREAM_READ_TIMEOUT = 60.0  # the server pings every 15 s


class _NoStream(Exception):
    """The events endpoint cannot serve this wait (absent, capped, not an event stream)."""


class Waiter:
    """One wait for one job: the client's connection and its `get`, the job and the path of its
    event stream, the caller's callbacks, and what was reported so far (so nothing is reported
    twice across resumes and the polling fallback)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        timeout: float,
        get: Callable[[str], Awaitable[Job]],
        job_id: str,
        events: str,
        progress: ProgressCallback | None = None,
        on_log: LogCallback | None = None,
        *,
        logs: bool = False,
    ) -> None:
        self.http = http
        self.timeout = timeout
        self.get = get
        self.job_id = job_id
        self.events_path = events
        self.progress = progress
        if logs and on_log is None:
            on_log = _print_log
        self.on_log = on_log
        self.parser = SSEParser()
        # the logs, when followed: how much of them was delivered, and to whom
        self.logs = LogFollower() if on_log is not None else None
        self.last_status: str | None = None
        # polling: the queue position (and whether its model is paused) last reported
        self.last_position: tuple[int | None, bool | None] | None = None
        self.events = 0

    async def run(self) -> Job:
        """The job once it is finished."""
        failures, finished = 0, False
        while failures < STREAM_FAILURES:
            seen = self.events
            try:
                if await self._follow():
                    finished = True
                    break
                # Closed before the end: resume; only a connection that brought nothing counts.
                failures = 0 if self.events > seen else failures + 1
            except _NoStream:
                break  # no stream to be had here: poll
            except (httpx.TransportError, RateLimitedError, ServiceUnavailableError):
                failures += 1
            if failures:
                await asyncio.sleep(min(0.5 * failures, 2.0))
        job = await self.get(self.job_id) if finished else None
        if job is None or not job.done:
            job = await self._poll()
        # What the stream may not have said of the log (the finished job has it all), and of
        # the status: a resume answered 204 ends without it (the job's events had not reached
        # its stream yet); then the line the log ended without a newline.
        await self._logged(*split_stored(job.logs))
        await self._reported(job)
        if self.logs is not None:
            for line in self.logs.rest():
                await _call(self.on_log, line)
        return job

    async def _follow(self) -> bool:
        """One connection to the events endpoint; True once the job has finished."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.parser.last_id:
            headers["Last-Event-ID"] = self.parser.last_id
        timeout = httpx.Timeout(self.timeout, read=STREAM_READ_TIMEOUT)
        params = {"logs": "true"} if self.logs is not None else None
        async with self.http.stream(
            "GET", self.events_path, params=params, headers=headers, timeout=timeout
        ) as response:
            if response.status_code == 204:
                return True  # resumed at the end of a finished job
            if response.status_code in (404, 405):
                await response.aread()
                await self.get(self.job_id)  # raises NotFoundError if the job is not ours
                raise _NoStream("no events endpoint")
            if not response.is_success:
                await response.aread()
                raise error_from_response(response)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise _NoStream("not an event stream")
            async for line in response.aiter_lines():
                event = self.parser.feed(line.rstrip("\r\n"))
                if event is None:
                    continue
                try:
                    data = json.loads(event.data)
                except ValueError:
                    data = {"data": event.data}
                if not isinstance(data, dict):
                    data = {"data": data}
                self.events += 1
                if event.event == "logs":
                    text, offset = data.get("logs"), data.get("offset")
                    if isinstance(text, str) and isinstance(offset, int):
                        await self._logged(text, offset)
                    continue
                await _call(self.progress, event.event, data)
                if event.event == "status":
                    self.last_status = str(data.get("status"))
                    if self.last_status in TERMINAL:
                        return True
        return False

    async def _poll(self) -> Job:
        while True:
            job = await self.get(self.job_id)
            await self._logged(*split_stored(job.logs))
            await self._reported(job)
            place = (job.queue_position, job.paused)
            if job.status == "pending" and place != self.last_position:
                self.last_position = place
                await _call(
                    self.progress,
                    "queue",
                    {"job_id": job.id, "queue_position": job.queue_position, "paused": job.paused},
                )
            if job.done:
                return job
            await asyncio.sleep(POLL_SECONDS)

    async def _logged(self, text: str, offset: int) -> None:
        """Text of the job's log (at byte `offset`), if it is followed: what is new of it goes
        to `progress` as a `logs` event and, line by line, to `on_log`."""
        if self.logs is None:
            return
        part = self.logs.feed(text, offset)
        if part is None:
            return
        await _call(
            self.progress, "logs", {"job_id": self.job_id, "logs": part[0], "offset": part[1]}
        )
        for line in self.logs.lines(part[0]):
            await _call(self.on_log, line)

    async def _reported(self, job: Job) -> None:
        """A `status` event for the job as read, unless the last one said the same."""
        if job.status != self.last_status:
            self.last_status = job.status
            await _call(self.progress, "status", _status_data(job))


def _status_data(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "status": job.status,
        "retry_count": job.retry_count,
        "error": job.error,
        "attempts": job.attempts,
        "result_url": job.result_url,
        "output": job.output,
    }


async def _call(callback: Callable[..., object] | None, *args: Any) -> None:
    """A user's callback (progress, on_log), awaited if it returns an awaitable."""
    if callback is None:
        return
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


def _print_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
