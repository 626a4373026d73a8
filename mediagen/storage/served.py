"""`/media`: local outputs served to whoever holds a URL the service signed, and to nobody else."""

from __future__ import annotations

from fastapi.staticfiles import StaticFiles
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from mediagen.storage.local import LocalStorage


class SignedFiles(StaticFiles):
    """StaticFiles (content types, ranges, HEAD, caching headers, nothing outside the root) that
    first checks the URL's signature (`mediagen.storage.signing`): 403 when it is missing,
    altered or expired."""

    def __init__(self, storage: LocalStorage) -> None:
        super().__init__(directory=storage.root)
        self.storage = storage

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
        return await super().get_response(path, scope)
