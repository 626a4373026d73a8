"""The storage interface every backend implements, and the one key scheme they share.

Keys derive only from the job id and the output's index, so a task that runs twice overwrites its
own outputs instead of leaving a second set behind.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

from mediagen.errors import StorageError
from mediagen.observability import metrics
from mediagen.storage.signing import MediaSigner

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, int]])

Body = bytes | AsyncIterator[bytes]


@runtime_checkable
class Storage(Protocol):
    """Where finished outputs live. All methods are async and never block the event loop."""

    name: str
    # The deployment's URL signer, once loaded (`signing.load_signer`): it signs local outputs'
    # URLs and other capability URLs (a prediction's stream); None until then.
    signer: MediaSigner | None

    def key_for(self, job_id: str, index: int, ext: str) -> str:
        """The deterministic key of a job's `index`-th output (derived from nothing else)."""
        ...

    async def save(self, key: str, body: Body, content_type: str) -> int:
        """Store `body` under `key` (replacing any previous object); return the bytes written."""
        ...

    async def read(self, key: str) -> bytes:
        """The stored bytes of `key`; `StorageError` if absent."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None: ...

    async def listing(self, prefix: str, limit: int) -> list[tuple[str, float]]:
        """Up to `limit` keys under `prefix` (a folder: it ends with `/`), each with when it was
        written (epoch seconds), in no particular order: for sweeps of objects that no row
        names (staged Cog outputs)."""
        ...

    async def url_for(self, key: str) -> str:
        """The URL a client fetches the object from (path, presigned or CDN URL)."""
        ...

    async def check(self) -> None:
        """Prove the store is reachable and writable; raise `StorageError` saying why not."""
        ...

    async def close(self) -> None: ...


def measured_save(backend: str) -> Callable[[F], F]:
    """Count a backend's `save` in `mediagen_storage_writes_total` (a `StorageError` is the
    storage's failure; any other error came from the body, i.e. the download)."""

    def wrap(save: F) -> F:
        @functools.wraps(save)
        async def measured(self: Any, key: str, body: Body, content_type: str) -> int:
            try:
                size: int = await save(self, key, body, content_type)
            except StorageError:
                metrics.storage_write(backend, "error")
                raise
            metrics.storage_write(backend, "ok", size)
            return size

        return cast(F, measured)

    return wrap
