"""ASGI middleware that refuses request bodies over MAX_BODY_BYTES with 413.

The body is read (up to the limit) before the app sees it, so an oversized chunked upload is
refused as cleanly as one announced by Content-Length; bodies here are small JSON documents.

`keyed` paths (`POST /api/v1/batches`) allow a larger body, but only to a caller with a valid
API key (`mediagen.keys.auth.identify`, answered from the process's key cache), checked before
more than MAX_BODY_BYTES is read: a caller without one gets 413 (401 where a key is required, or
for a refused key) and costs no more than any other request.

`streamed` paths are the exception: large bodies (a Cog server's outputs) that their route
authenticates from the path before reading a byte, then reads as a stream with its own cap.
Here they only lose an announced Content-Length over their limit; nothing is buffered.
"""

from __future__ import annotations

import json

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mediagen.config import Settings
from mediagen.errors_http import error_response
from mediagen.keys.auth import identify

BATCH_MAX_BYTES = 16 * 1024 * 1024


def batch_body_bytes(settings: Settings) -> int:
    """The limit of `POST /api/v1/batches` for a caller with a key: MAX_BODY_BYTES for each of
    its MAX_BATCH job requests, at most BATCH_MAX_BYTES in all (the body is read whole before
    it is checked)."""
    return min(settings.max_body_bytes * settings.max_batch, BATCH_MAX_BYTES)


class BodySizeLimit:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        overrides: dict[str, int] | None = None,
        streamed: dict[str, int] | None = None,
        keyed: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.overrides = overrides or {}  # path prefix -> limit
        self.streamed = streamed or {}  # path prefix -> limit its route enforces while reading
        self.keyed = keyed or {}  # path prefix -> limit for a caller with a valid key

    def _limit(self, path: str) -> int:
        for prefix, limit in self.overrides.items():
            if path.startswith(prefix):
                return limit
        return self.max_bytes

    def _keyed_limit(self, path: str) -> int | None:
        for prefix, limit in self.keyed.items():
            if path.startswith(prefix):
                return limit
        return None

    async def _refuse_keyless(self, scope: Scope, receive: Receive, send: Send, limit: int) -> bool:
        """Whether a body over MAX_BODY_BYTES (up to `limit`) was refused: it is not when the
        request carries a valid API key; 401 for a refused one or where a key is required,
        413 for an anonymous caller."""
        authorization = Headers(scope=scope).get("authorization")
        try:
            key = await identify(scope["app"].state, authorization)
        except Exception as exc:
            response = error_response(exc)  # 401, or 503 with the database down
            if response is None:
                raise
            response.headers["connection"] = "close"  # the body is left unread
            await response(scope, receive, send)
            return True
        if key is None:
            detail = f"request body exceeds {self.max_bytes} bytes (up to {limit} with an API key)"
            await self._reject(send, self.max_bytes, detail)
            return True
        return False

    async def _reject(self, send: Send, limit: int, detail: str | None = None) -> None:
        body = json.dumps(
            {"detail": detail or f"request body exceeds {limit} bytes", "code": "payload_too_large"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope["path"])
        declared = dict(scope.get("headers", ())).get(b"content-length")
        for prefix, cap in self.streamed.items():
            if scope["path"].startswith(prefix):
                if declared is not None and declared.isdigit() and int(declared) > cap:
                    await self._reject(send, cap)
                    return
                await self.app(scope, receive, send)
                return
        # A keyed path allows up to `keyed` once the caller showed a valid key (`limit` until then).
        keyed = self._keyed_limit(scope["path"])
        keyed = keyed if keyed is not None and keyed > limit else None
        most = keyed or limit
        if declared is not None and declared.isdigit():
            if int(declared) > most:
                await self._reject(send, most)
                return
            if keyed is not None and int(declared) > limit:
                if await self._refuse_keyless(scope, receive, send, keyed):
                    return
                limit, keyed = keyed, None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                if keyed is None or size > keyed:
                    await self._reject(send, most)
                    return
                if await self._refuse_keyless(scope, receive, send, keyed):
                    return
                limit, keyed = keyed, None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
