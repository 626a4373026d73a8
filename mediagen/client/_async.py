"""AsyncClient: the whole client (retries, live events, downloads) on httpx.AsyncClient."""

from __future__ import annotations

import asyncio
import builtins
import inspect
import json
import mimetypes
import os
import random
import time
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from mediagen.client._errors import (
    APIConnectionError,
    ConflictError,
    MediagenError,
    RateLimitedError,
    ServiceUnavailableError,
    error_from_response,
    unreachable,
)
from mediagen.client._models import Job, JobFailedError, Model, ProgressCallback
from mediagen.client._sse import SSEParser
from mediagen.client._states import TERMINAL

DEFAULT_URL = "http://127.0.0.1:8000"
CONNECT_TIMEOUT = 5.0  # a server that does not answer is reported within this (retries included)
MAX_RETRY_WAIT = 30.0  # no single wait before a retry is longer, whatever Retry-After says
POLL_SECONDS = 1.0
STREAM_FAILURES = 3  # consecutive failed stream attempts before falling back to polling
STREAM_READ_TIMEOUT = 60.0  # the server pings every 15 s
_RETRY_STATUSES = frozenset({429, 503})
_API = "/api/v1"


class _NoStream(Exception):
    """The events endpoint cannot serve this wait (absent, capped, not an event stream)."""


class _WaitState:
    def __init__(self) -> None:
        self.parser = SSEParser()
        self.last_status: str | None = None
        # polling: the queue position (and whether its model is paused) last reported
        self.last_position: tuple[int | None, bool | None] | None = None
        self.events = 0


def _backoff(attempt: int) -> float:
    return float(min(MAX_RETRY_WAIT, 0.5 * 2**attempt * (0.8 + 0.4 * random.random())))


class AsyncClient:
    """mediagen's API from asyncio.

    ``url`` defaults to ``$MEDIAGEN_URL`` (else http://127.0.0.1:8000) and ``api_key`` to
    ``$MEDIAGEN_API_KEY`` (sent as ``Authorization: Bearer``; none when empty). 429 and 503 are
    retried up to ``max_retries`` times, waiting what ``Retry-After`` says (at most 30 s each),
    else an exponential backoff; so are connection errors on reads and on submits (made safe by
    their Idempotency-Key); a server that cannot be reached at all is reported within
    ``connect_timeout`` seconds, naming its URL. Errors are
    :class:`~mediagen.client.MediagenError` subclasses.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30,
        max_retries: int = 4,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = (url or os.environ.get("MEDIAGEN_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("MEDIAGEN_API_KEY", "")
        self.timeout = float(timeout)
        self.connect_timeout = min(float(connect_timeout), self.timeout)
        self.max_retries = max(0, int(max_retries))
        headers = {"User-Agent": "mediagen-client"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
            transport=transport,
        )
        # Outputs elsewhere (S3 presigned URLs) are fetched without our key.
        self._foreign = httpx.AsyncClient(timeout=self.timeout, follow_redirects=True)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._foreign.aclose()

    # -- requests ------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool = True,
        retry_conflict: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """One API call with the retry rules; the answer if 2xx, else the error raised."""
        attempt = 0
        give_up_connecting = time.monotonic() + self.connect_timeout
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing reached the server: any request may be tried again, while the
                # connect timeout lasts (a restart is brief; a server that is not there is
                # said so at once).
                delay = _backoff(attempt)
                if attempt >= self.max_retries or time.monotonic() + delay > give_up_connecting:
                    raise unreachable(self.url, exc, self.connect_timeout) from None
            except httpx.TransportError as exc:
                if not idempotent or attempt >= self.max_retries:
                    raise APIConnectionError(
                        str(exc) or type(exc).__name__, code="connection_error"
                    ) from exc
                delay = _backoff(attempt)
            else:
                if response.is_success:
                    return response
                error = error_from_response(response)
                retryable = response.status_code in _RETRY_STATUSES or (
                    retry_conflict and isinstance(error, ConflictError)
                )
                if not retryable or attempt >= self.max_retries:
                    raise error
                delay = error.retry_after if error.retry_after is not None else _backoff(attempt)
            await asyncio.sleep(min(delay, MAX_RETRY_WAIT))
            attempt += 1

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._request(method, path, **kwargs)
        body = response.json()
        if not isinstance(body, dict):
            raise MediagenError(
                f"unexpected answer from {path}", code="bad_response", status=response.status_code
            )
        return body

    # -- jobs ----------------------------------------------------------------------------------

    async def generate(
        self,
        prompt: str,
        *,
        model: str | None = None,
        webhook: str | None = None,
        idempotency_key: str | None = None,
        priority: str | None = None,
        retention: int | None = None,
        **parameters: Any,
    ) -> Job:
        """Submit a job (``parameters``: width, height, num_inference_steps, seed,
        output_format, num_outputs, an input file's ``mediagen://files/<id>`` from `upload`...)
        and return it as the API then describes it. ``priority``: low, normal or high (up to
        the key's ceiling); ``retention``: seconds to keep the outputs.

        An ``Idempotency-Key`` (a new UUID unless given) makes a retried submit return the first
        job instead of creating a second one."""
        body: dict[str, Any] = {"prompt": prompt, "parameters": parameters}
        optional = {"model": model, "webhook": webhook, "priority": priority}
        body.update({name: value for name, value in optional.items() if value is not None})
        if retention is not None:
            body["retention"] = retention
        created = await self._json(
            "POST",
            f"{_API}/generate",
            json=body,
            headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())},
            idempotent=True,  # thanks to the Idempotency-Key
            retry_conflict=True,  # 409: the same key still being processed
        )
        return await self.get(str(created["job_id"]))

    async def get(self, job_id: str) -> Job:
        return Job.from_json(await self._json("GET", f"{_API}/jobs/{job_id}"))

    async def list(
        self, status: str | None = None, model: str | None = None, limit: int = 50
    ) -> AsyncGenerator[Job, None]:
        """Every job of yours (newest first), ``limit`` per page, following ``next``. The jobs
        are summaries: ``get`` one for its outputs."""
        params: dict[str, str] = {"limit": str(limit)}
        if status is not None:
            params["status"] = status
        if model is not None:
            params["model"] = model
        while True:
            page = await self._json("GET", f"{_API}/jobs", params=params)
            for item in page.get("data") or []:
                yield Job.from_json(item)
            following = page.get("next")
            if not following:
                return
            # Only the query of `next`: the server may not know the address we reach it at.
            params = dict(parse_qsl(urlsplit(str(following)).query))

    async def models(self) -> builtins.list[Model]:
        """The models the service runs for you, the default first."""
        page = await self._json("GET", f"{_API}/models")
        return [Model.from_json(item) for item in page.get("data") or []]

    async def upload(self, path: str | Path) -> dict[str, Any]:
        """Upload an input file; its description, whose ``uri`` a job's parameter can name
        (``image="mediagen://files/<id>"``). Read whole first, so a retry sends it again."""
        path = Path(path)
        data = await asyncio.to_thread(path.read_bytes)
        return await self._json(
            "POST", f"{_API}/files", files={"file": (path.name, data)}, idempotent=False
        )

    async def delete(self, job_id: str) -> None:
        """Delete a job and all of it (outputs, input files, record), canceling it if it runs."""
        await self._request("DELETE", f"{_API}/jobs/{job_id}")

    async def cancel(self, job_id: str) -> Job:
        """Cancel an unfinished job (a finished one raises ConflictError, ``body["status"]``)."""
        await self._request("POST", f"{_API}/jobs/{job_id}/cancel", idempotent=False)
        return await self.get(job_id)

    # -- waiting -------------------------------------------------------------------------------

    async def wait(
        self,
        job_id: str,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the same signature as Client.wait)
        raise_on_failure: bool = False,
    ) -> Job:
        """Follow the job's live events until it is finished (completed, failed, canceled or
        expired); return it.

        ``progress(event, data)`` is called for each event (``status``, ``progress``,
        ``queue``: the position of a pending job when it changed, and ``output``: the chunks of
        a model that streams). A dropped stream is resumed with
        ``Last-Event-ID``; if the stream keeps failing (or the server has none) the job is
        polled every second instead. ``timeout`` raises TimeoutError (the job
        goes on); ``raise_on_failure`` raises JobFailedError for a job that is not completed:
        failed, canceled, or expired (it completed, but its outputs are deleted)."""
        job = await asyncio.wait_for(self._wait(job_id, progress), timeout)
        if raise_on_failure and job.status != "completed":
            raise JobFailedError(job)
        return job

    async def _wait(self, job_id: str, progress: ProgressCallback | None) -> Job:
        state = _WaitState()
        failures, finished = 0, False
        while failures < STREAM_FAILURES:
            seen = state.events
            try:
                if await self._follow(job_id, state, progress):
                    finished = True
                    break
                # Closed before the end: resume; only a connection that brought nothing counts.
                failures = 0 if state.events > seen else failures + 1
            except _NoStream:
                break  # no stream to be had here: poll
            except (httpx.TransportError, RateLimitedError, ServiceUnavailableError):
                failures += 1
            if failures:
                await asyncio.sleep(min(0.5 * failures, 2.0))
        if finished:
            job = await self.get(job_id)
            if job.done:
                return job
        return await self._poll(job_id, state, progress)

    async def _follow(
        self, job_id: str, state: _WaitState, progress: ProgressCallback | None
    ) -> bool:
        """One connection to the events endpoint; True once the job has finished."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if state.parser.last_id:
            headers["Last-Event-ID"] = state.parser.last_id
        timeout = httpx.Timeout(self.timeout, read=STREAM_READ_TIMEOUT)
        path = f"{_API}/jobs/{job_id}/events"
        async with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
            if response.status_code == 204:
                return True  # resumed at the end of a finished job
            if response.status_code in (404, 405):
                await response.aread()
                await self.get(job_id)  # raises NotFoundError if the job is not ours
                raise _NoStream("no events endpoint")
            if not response.is_success:
                await response.aread()
                raise error_from_response(response)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise _NoStream("not an event stream")
            async for line in response.aiter_lines():
                event = state.parser.feed(line.rstrip("\r\n"))
                if event is None:
                    continue
                try:
                    data = json.loads(event.data)
                except ValueError:
                    data = {"data": event.data}
                if not isinstance(data, dict):
                    data = {"data": data}
                state.events += 1
                await _call(progress, event.event, data)
                if event.event == "status":
                    state.last_status = str(data.get("status"))
                    if state.last_status in TERMINAL:
                        return True
        return False

    async def _poll(self, job_id: str, state: _WaitState, progress: ProgressCallback | None) -> Job:
        while True:
            job = await self.get(job_id)
            if job.status != state.last_status:
                state.last_status = job.status
                await _call(progress, "status", _status_data(job))
            place = (job.queue_position, job.paused)
            if job.status == "pending" and place != state.last_position:
                state.last_position = place
                await _call(
                    progress,
                    "queue",
                    {"job_id": job.id, "queue_position": job.queue_position, "paused": job.paused},
                )
            if job.done:
                return job
            await asyncio.sleep(POLL_SECONDS)

    # -- downloads -----------------------------------------------------------------------------

    async def download(self, job_or_id: Job | str, directory: str | Path) -> builtins.list[Path]:
        """Every output of a completed job, streamed into ``directory`` (created if need be) as
        ``<job_id>-<n>.<ext>`` (n from 0); returns the paths. The job is read again first, so
        its signed URLs are fresh."""
        job_id = job_or_id.id if isinstance(job_or_id, Job) else str(job_or_id)
        job = await self.get(job_id)
        if job.status != "completed":
            raise MediagenError(
                f"job {job.id} is {job.status}, not completed", code="job_not_completed"
            )
        urls = [(o.url, o.content_type) for o in job.outputs]
        if not urls and job.result_url:
            urls = [(job.result_url, None)]
        target = Path(directory)
        await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
        paths = []
        for n, (url, content_type) in enumerate(urls):
            ext = Path(urlsplit(url).path).suffix or (
                mimetypes.guess_extension(content_type or "") or ".bin"
            )
            path = target / f"{job.id}-{n}{ext}"
            await self._download_one(url, path)
            paths.append(path)
        return paths

    async def _download_one(self, url: str, path: Path) -> None:
        foreign = urlsplit(url).scheme in ("http", "https") and not url.startswith(self.url + "/")
        http = self._foreign if foreign else self._http
        partial = path.with_name(path.name + ".part")
        attempt = 0
        while True:
            try:
                async with http.stream("GET", url) as response:
                    if not response.is_success:
                        await response.aread()
                        raise error_from_response(response)
                    handle = await asyncio.to_thread(partial.open, "wb")
                    try:
                        async for chunk in response.aiter_bytes(1 << 16):
                            await asyncio.to_thread(handle.write, chunk)
                    finally:
                        await asyncio.to_thread(handle.close)
                await asyncio.to_thread(partial.replace, path)
                return
            except (httpx.TransportError, RateLimitedError, ServiceUnavailableError) as exc:
                if attempt >= self.max_retries:
                    if isinstance(exc, MediagenError):
                        raise
                    raise APIConnectionError(
                        str(exc) or type(exc).__name__, code="connection_error"
                    ) from exc
                retry_after = exc.retry_after if isinstance(exc, MediagenError) else None
                await asyncio.sleep(min(retry_after or _backoff(attempt), MAX_RETRY_WAIT))
                attempt += 1


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


async def _call(progress: ProgressCallback | None, event: str, data: dict[str, Any]) -> None:
    if progress is None:
        return
    result = progress(event, data)
    if inspect.isawaitable(result):
        await result
