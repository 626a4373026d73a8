"""Client: the same API, blocking.

It runs an :class:`AsyncClient` on an event loop of its own in a daemon thread and waits for
each call. Why a wrapper rather than a second implementation on httpx.Client: retries, the
event stream with its resume and polling fallback, and downloads exist once, so the two
clients cannot drift apart; and unlike ``asyncio.run`` per call it also works where an event
loop is already running (Jupyter, an async framework's thread) and keeps one connection pool.
The cost is one thread per Client; ``progress`` and ``on_log`` callbacks run on that thread.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import signal
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar, cast, overload

from mediagen.client._async import CONNECT_TIMEOUT, AsyncClient
from mediagen.client._logs import LogCallback
from mediagen.client._models import Job, Model, ProgressCallback

T = TypeVar("T")
_WAKE_EVERY = 0.2  # seconds a blocking call sleeps at most before it looks at signals


class Client:
    """mediagen's API, blocking; the arguments and methods of :class:`AsyncClient`. The jobs
    it returns are bound to it: ``job.wait()``, ``job.download(dir)``, ``job.cancel()``."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30,
        max_retries: int = 4,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="mediagen-client", daemon=True)
        self._thread.start()
        self._closed = False
        self._async = AsyncClient(
            url, api_key, timeout, max_retries, connect_timeout=connect_timeout
        )
        self.url = self._async.url

    def _serve(self) -> None:
        # The kernel gives a process's signal to any thread that does not block it: blocked
        # here, Ctrl-C goes to the caller's thread, the one that must raise KeyboardInterrupt.
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        self._loop.run_forever()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("this Client is closed")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            while True:
                # In short waits: Python runs a signal's handler (Ctrl-C) between them, and a
                # signal that lands just before an endless wait begins would leave it asleep.
                with contextlib.suppress(FutureTimeout):
                    return future.result(timeout=_WAKE_EVERY)
        except BaseException:
            future.cancel()  # Ctrl-C: stop the call on the loop too
            raise

    def _bind(self, job: Job) -> Job:
        job._client = self
        return job

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._run(self._async.aclose())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def generate(
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
        return self._bind(
            self._run(
                self._async.generate(
                    prompt,
                    model=model,
                    webhook=webhook,
                    idempotency_key=idempotency_key,
                    priority=priority,
                    retention=retention,
                    **parameters,
                )
            )
        )

    def get(self, job_id: str) -> Job:
        return self._bind(self._run(self._async.get(job_id)))

    def models(self) -> builtins.list[Model]:
        """The models the service runs for you, the default first."""
        return self._run(self._async.models())

    def list(
        self, status: str | None = None, model: str | None = None, limit: int = 50
    ) -> Iterator[Job]:
        pages = self._async.list(status=status, model=model, limit=limit)
        try:
            while True:
                job = self._run(_next(pages))
                if job is None:
                    return
                yield self._bind(job)
        finally:
            if not self._closed:
                self._run(pages.aclose())

    def upload(self, file: str | os.PathLike[str] | IO[bytes]) -> dict[str, Any]:
        return self._run(self._async.upload(file))

    def delete(self, job_id: str) -> None:
        self._run(self._async.delete(job_id))

    def cancel(self, job_id: str) -> Job:
        return self._bind(self._run(self._async.cancel(job_id)))

    def wait(
        self,
        job_id: str,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
        raise_on_failure: bool = False,
        *,
        logs: bool = False,
        on_log: LogCallback | None = None,
    ) -> Job:
        return self._bind(
            self._run(
                self._async.wait(
                    job_id, progress, timeout, raise_on_failure, logs=logs, on_log=on_log
                )
            )
        )

    def download(
        self, job_or_id: Job | str, directory: str | os.PathLike[str]
    ) -> builtins.list[Path]:
        return self._run(self._async.download(job_or_id, directory))

    @overload
    def run(
        self,
        prompt: str,
        *,
        save_to: None = None,
        model: str | None = None,
        priority: str | None = None,
        retention: int | None = None,
        webhook: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
        logs: bool = False,
        on_log: LogCallback | None = None,
        **parameters: Any,
    ) -> builtins.list[bytes]: ...

    @overload
    def run(
        self,
        prompt: str,
        *,
        save_to: str | os.PathLike[str],
        model: str | None = None,
        priority: str | None = None,
        retention: int | None = None,
        webhook: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
        logs: bool = False,
        on_log: LogCallback | None = None,
        **parameters: Any,
    ) -> builtins.list[Path]: ...

    def run(
        self,
        prompt: str,
        *,
        save_to: str | os.PathLike[str] | None = None,
        model: str | None = None,
        priority: str | None = None,
        retention: int | None = None,
        webhook: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
        logs: bool = False,
        on_log: LogCallback | None = None,
        **parameters: Any,
    ) -> builtins.list[bytes] | builtins.list[Path]:
        """Submit, wait and fetch in one call (:meth:`AsyncClient.run`): the outputs' bytes,
        or with ``save_to`` the paths they were saved at."""
        outputs = self._async.run(
            prompt,
            save_to=save_to,
            model=model,
            priority=priority,
            retention=retention,
            webhook=webhook,
            idempotency_key=idempotency_key,
            timeout=timeout,
            progress=progress,
            logs=logs,
            on_log=on_log,
            **parameters,
        )
        # The overloads' two results, one type to `_run` (which would join them to `object`).
        return self._run(
            cast("Coroutine[Any, Any, builtins.list[bytes] | builtins.list[Path]]", outputs)
        )


async def _next(pages: AsyncGenerator[Job, None]) -> Job | None:
    try:
        return await anext(pages)
    except StopAsyncIteration:
        return None
