"""AsyncClient: the whole client (retries, live events, downloads) on httpx.AsyncClient."""

from __future__ import annotations

import asyncio
import builtins
import mimetypes
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, overload
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
from mediagen.client._logs import LogCallback
from mediagen.client._models import Job, JobFailedError, Model, ProgressCallback
from mediagen.client._wait import Waiter

DEFAULT_URL = "http://127.0.0.1:8000"
CONNECT_TIMEOUT = 5.0  # a server that does not answer is reported within this (retries included)
MAX_RETRY_WAIT = 30.0  # no single wait before a retry is longer, whatever Retry-After says
_RETRY_STATUSES = frozenset({429, 503})
_API = "/api/v1"


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
        output_format, num_outputs, an input file...) and return it as the API then describes
        it. ``priority``: low, normal or high (up to the key's ceiling); ``retention``: seconds
        to keep the outputs.

        An input file is a parameter whose value is a local path (a ``Path``, not a ``str``) or
        an open binary file: it is uploaded first (`upload`) and sent as its
        ``mediagen://files/<id>``, which may also be given as it is.

        An ``Idempotency-Key`` (a new UUID unless given) makes a retried submit return the first
        job instead of creating a second one."""
        body: dict[str, Any] = {"prompt": prompt, "parameters": await self._inputs(parameters)}
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

    async def upload(self, file: str | os.PathLike[str] | IO[bytes]) -> dict[str, Any]:
        """Upload an input file (a path, or an open binary file); its description, whose
        ``uri`` a job's parameter can name (``image="mediagen://files/<id>"``). Read whole
        first, so a retry sends it again."""
        if isinstance(file, str | os.PathLike):
            path = Path(file)
            name, data = path.name, await asyncio.to_thread(path.read_bytes)
        else:
            name = Path(str(getattr(file, "name", "") or "upload")).name
            data = await asyncio.to_thread(file.read)
        return await self._json(
            "POST", f"{_API}/files", files={"file": (name, data)}, idempotent=False
        )

    async def _inputs(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """`parameters` with each local file (a path object, an open file) uploaded and named
        by its URI; strings stay strings."""
        sent = dict(parameters)
        for name, value in parameters.items():
            if isinstance(value, os.PathLike) or callable(getattr(value, "read", None)):
                sent[name] = (await self.upload(value))["uri"]
        return sent

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
        *,
        logs: bool = False,
        on_log: LogCallback | None = None,
    ) -> Job:
        """Follow the job's live events until it is finished (completed, failed, canceled or
        expired); return it.

        ``progress(event, data)`` is called for each event (``status``, ``progress``,
        ``queue``: the position of a pending job when it changed, ``output``: the chunks of
        a model that streams, and ``logs`` when the logs are followed). A dropped stream is
        resumed with ``Last-Event-ID``; if the stream keeps failing (or the server has none) the
        job is polled every second instead. ``timeout`` raises TimeoutError (the job
        goes on); ``raise_on_failure`` raises JobFailedError for a job that is not completed:
        failed, canceled, or expired (it completed, but its outputs are deleted).

        The model's logs: ``on_log(line)`` is called with each line as soon as it is whole (the
        last one when the job ends), in order and once each, from the stream or, when polling,
        from the job's ``logs``; ``logs=True`` without ``on_log`` writes them to stderr."""
        events = f"{_API}/jobs/{job_id}/events"
        waiter = Waiter(
            self._http, self.timeout, self.get, job_id, events, progress, on_log, logs=logs
        )
        job = await asyncio.wait_for(waiter.run(), timeout)
        if raise_on_failure and job.status != "completed":
            raise JobFailedError(job)
        return job

    # -- one call ------------------------------------------------------------------------------

    @overload
    async def run(
        self,
        prompt: str,
        *,
        save_to: None = None,
        model: str | None = None,
        priority: str | None = None,
        retention: int | None = None,
        webhook: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        progress: ProgressCallback | None = None,
        logs: bool = False,
        on_log: LogCallback | None = None,
        **parameters: Any,
    ) -> builtins.list[bytes]: ...

    @overload
    async def run(
        self,
        prompt: str,
        *,
        save_to: str | os.PathLike[str],
        model: str | None = None,
        priority: str | None = None,
        retention: int | None = None,
        webhook: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        progress: ProgressCallback | None = None,
        logs: bool = False,
        on_log: LogCallback | None = None,
        **parameters: Any,
    ) -> builtins.list[Path]: ...

    async def run(
        self,
        prompt: str,
        *,
        save_to: str | os.PathLike[str] | None = None,
        model: str | None = None,
        priority: str | None = None,
        retention: int | None = None,
        webhook: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the same signature as Client.run)
        progress: ProgressCallback | None = None,
        logs: bool = False,
        on_log: LogCallback | None = None,
        **parameters: Any,
    ) -> builtins.list[bytes] | builtins.list[Path]:
        """Submit, wait and fetch in one call: the outputs' bytes, in order, or with
        ``save_to`` (a directory, created if need be) the paths they were saved at
        (``<job_id>-<n>.<ext>``, as `download`).

        The options are `generate`'s (an input file: a ``Path`` or an open file as a
        parameter's value) and `wait`'s (``progress``, ``logs``, ``on_log``). A job that
        ends failed, canceled or expired raises JobFailedError (its ``job`` says why); one not
        finished within ``timeout`` seconds raises TimeoutError naming it, and goes on. A model
        whose output is not files (text, numbers) gives ``[]``: read ``job.output`` after
        `generate` and `wait`."""
        job = await self.generate(
            prompt,
            model=model,
            webhook=webhook,
            idempotency_key=idempotency_key,
            priority=priority,
            retention=retention,
            **parameters,
        )
        try:
            job = await self.wait(
                job.id, progress, timeout, raise_on_failure=True, logs=logs, on_log=on_log
            )
        except TimeoutError:
            if timeout is None:
                raise
            raise TimeoutError(
                f"job {job.id} did not finish within {timeout:g} s; it goes on "
                f"(wait for it, or cancel it, by its id)"
            ) from None
        if save_to is not None:
            return await self.download(job, save_to)
        scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="mediagen-run-"))
        try:
            paths = await self.download(job, scratch)
            return [await asyncio.to_thread(path.read_bytes) for path in paths]
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    # -- downloads -----------------------------------------------------------------------------

    async def download(
        self, job_or_id: Job | str, directory: str | os.PathLike[str]
    ) -> builtins.list[Path]:
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
