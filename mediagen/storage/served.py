"""`/media`: local outputs served to whoever holds a URL the service signed, and to nobody else."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from mediagen.storage.local import LocalStorage

_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class SignedFiles(StaticFiles):
    """StaticFiles (content types, ranges, HEAD, caching headers, nothing outside the root) that
    first checks the URL's signature (`mediagen.storage.signing`): 403 when it is missing,
    altered or expired. `job_gone(job_id)` says whether a signed URL that names no file names
    one of a job that is gone (expired or deleted: 410), as only the jobs domain knows."""

    def __init__(
        self, storage: LocalStorage, job_gone: Callable[[uuid.UUID], Awaitable[bool]]
    ) -> None:
        super().__init__(directory=storage.root)
        self.storage = storage
        self.job_gone = job_gone

    async def get_response(self, path: str, scope: Scope) -> Response:
        signer = self.storage.signer
        if signer is None or not signer.verify(path, scope.get("query_string", b"")):
            return JSONResponse(
                {
                    "detail": "this URL is not signed, or its signature expired: "
                    "read the job again for a fresh result_url",
                    "code": "forbidden",
                },
                status_code=403,
            )
        try:
            return await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404 or not await self._job_gone(path):
                raise
        return JSONResponse(
            {
                "detail": "this output was deleted: its job's retention ended, "
                "or the job was deleted",
                "code": "gone",
            },
            status_code=410,
        )

    async def _job_gone(self, key: str) -> bool:
        """A signed key that names no file: 410 if its job (every key holds its job's id:
        `Storage.key_for`) is expired or deleted, else it stays a 404."""
        found = _JOB_ID.search(key)
        return found is not None and await self.job_gone(uuid.UUID(found.group()))
