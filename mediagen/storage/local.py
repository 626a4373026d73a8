"""Local filesystem storage, served by the API under `/media/{key}` with signed, expiring URLs
(`mediagen.storage.signing`).

File I/O runs in a worker thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from pathlib import Path
from urllib.parse import quote

from mediagen.errors import StorageError
from mediagen.storage.base import Body, measured_save
from mediagen.storage.signing import MediaSigner


class LocalStorage:
    name = "local"

    def __init__(
        self, root: Path, url_prefix: str = "/media", signer: MediaSigner | None = None
    ) -> None:
        self.root = root.resolve()
        self.url_prefix = url_prefix.rstrip("/")
        # Set once the deployment's key is loaded (`load_signer`); without one URLs are bare.
        self.signer = signer

    def key_for(self, job_id: str, index: int, ext: str) -> str:
        """`{job_id}.{ext}` for the first output (the spec's `/media/{job_id}.{ext}`), then
        `{job_id}-{index}.{ext}`."""
        suffix = "" if index == 0 else f"-{index}"
        return f"{job_id}{suffix}.{ext.lstrip('.').lower()}"

    def path_for(self, key: str) -> Path:
        """The file of `key`, refusing anything that would land outside the root."""
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise StorageError(f"key escapes the storage root: {key!r}")
        return path

    @measured_save("local")
    async def save(self, key: str, body: Body, content_type: str) -> int:
        return await self._save(key, body)

    async def _save(self, key: str, body: Body) -> int:
        """`save`, not counted in the metrics (the health probe writes with it too)."""
        path = self.path_for(key)
        # Write to a temporary name then rename: readers never see a half-written file.
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        written = 0
        try:
            # A folder that cannot be made is the store refusing the write too (StorageError).
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
            fh = await asyncio.to_thread(open, tmp, "wb")
            try:
                if isinstance(body, bytes):
                    written = await asyncio.to_thread(fh.write, body)
                else:
                    async for chunk in body:
                        written += await asyncio.to_thread(fh.write, chunk)
            finally:
                await asyncio.to_thread(fh.close)
            await asyncio.to_thread(os.replace, tmp, path)
        except OSError as exc:
            await _discard(tmp)
            raise StorageError(f"cannot write {key}: {exc}") from exc
        except BaseException:
            # The body's own failure (a provider error from a stream cut short or over its size
            # limit) or a cancellation: keep nothing, and let it propagate as it is.
            await _discard(tmp)
            raise
        return written

    async def read(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self.path_for(key).read_bytes)
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc}") from exc

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path_for(key).is_file)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path_for(key).unlink, missing_ok=True)

    async def listing(self, prefix: str, limit: int) -> list[tuple[str, float]]:
        return await asyncio.to_thread(self._listing, prefix, limit)

    def _listing(self, prefix: str, limit: int) -> list[tuple[str, float]]:
        found: list[tuple[str, float]] = []
        folder = self.path_for(prefix.rstrip("/"))
        for where, _, names in os.walk(folder):
            for name in names:
                path = Path(where) / name
                try:
                    written = path.stat().st_mtime
                except FileNotFoundError:  # deleted meanwhile
                    continue
                found.append((path.relative_to(self.root).as_posix(), written))
                if len(found) >= limit:
                    return found
        return found

    async def url_for(self, key: str) -> str:
        url = f"{self.url_prefix}/{quote(key)}"
        return f"{url}?{self.signer.query(key)}" if self.signer else url

    async def check(self) -> None:
        probe = f".health/{uuid.uuid4().hex}"
        await self._save(probe, b"ok")
        await self.delete(probe)

    async def close(self) -> None:
        return None


async def _discard(tmp: Path) -> None:
    """Remove a write's temporary file, if there is one: a folder that is not there (or not a
    folder) has none, and the write's own error is the one to tell."""
    with contextlib.suppress(OSError):
        await asyncio.to_thread(tmp.unlink, missing_ok=True)
