"""Counting what the worker asks of the outside world, without touching the pipeline: a provider
that times its calls and counts its downloads (storage backends count their own writes:
`mediagen.storage.base.measured_save`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from mediagen.errors import StorageError
from mediagen.observability import metrics
from mediagen.providers.base import Fetched, GenerationRequest, Output, Prediction, Provider

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, int]])


class MeasuredProvider:
    """`provider`, with each call counted in `mediagen_provider_*` and each output fetched in
    `mediagen_downloads_total` / `mediagen_download_bytes_total`."""

    def __init__(self, provider: Provider) -> None:
        self.inner = provider
        self.name = provider.name

    async def create(self, request: GenerationRequest) -> Prediction:
        async with metrics.provider_call(self.name, "create"):
            return await self.inner.create(request)

    async def get(self, prediction_id: str, request: GenerationRequest) -> Prediction:
        async with metrics.provider_call(self.name, "get"):
            return await self.inner.get(prediction_id, request)

    async def cancel(self, prediction_id: str) -> None:
        async with metrics.provider_call(self.name, "cancel"):
            await self.inner.cancel(prediction_id)

    async def reported(self, prediction_id: str) -> bool:
        return await self.inner.reported(prediction_id)

    @asynccontextmanager
    async def fetch(self, output: Output) -> AsyncIterator[Fetched]:
        """A download counts as failed if opening it or reading its body failed (not if the
        storage it went to did: that is `mediagen_storage_writes_total`)."""
        counter = _Counted()
        try:
            opened = self.inner.fetch(output)
            fetched = await opened.__aenter__()
        except BaseException:
            metrics.download("error")
            raise
        try:
            yield Fetched(counter.wrap(fetched.body), fetched.content_type, fetched.ext)
        except BaseException as exc:
            if not await opened.__aexit__(type(exc), exc, exc.__traceback__):
                if counter.failed or not isinstance(exc, StorageError):
                    metrics.download("error")
                raise
        else:
            await opened.__aexit__(None, None, None)
            metrics.download("ok", counter.size)

    async def close(self) -> None:
        await self.inner.close()


class _Counted:
    def __init__(self) -> None:
        self.size = 0
        self.failed = False

    def wrap(self, body: bytes | AsyncIterator[bytes]) -> bytes | AsyncIterator[bytes]:
        if isinstance(body, bytes):
            self.size = len(body)
            return body
        return self._stream(body)

    async def _stream(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in body:
                self.size += len(chunk)
                yield chunk
        except BaseException:
            self.failed = True
            raise
