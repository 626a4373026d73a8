"""ASGI middleware that refuses request bodies over MAX_BODY_BYTES with 413.

The body is read (up to the limit) before the app sees it, so an oversized chunked upload is
refused as cleanly as one announced by Content-Length; bodies here are small JSON documents.

`streamed` paths are the exception: large bodies (a Cog server's outputs) that their route
authenticates from the path before reading a byte, then reads as a stream with its own cap.
Here they only lose an announced Content-Length over their limit; nothing is buffered.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mediagen.config import Settings

BATCH_MAX_BYTES = 16 * 1024 * 1024


def batch_body_bytes(settings: Settings) -> int:
    """The limit of `POST /api/v1/batches`: MAX_BODY_BYTES for each of its MAX_BATCH job
    requests, at most BATCH_MAX_BYTES in all (the body is read whole before it is checked)."""
    return min(settings.max_body_bytes * settings.max_batch, BATCH_MAX_BYTES)


class BodySizeLimit:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        overrides: dict[str, int] | None = None,
        streamed: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.overrides = overrides or {}  # path prefix -> limit
        self.streamed = streamed or {}  # path prefix -> limit its route enforces while reading

    def _limit(self, path: str) -> int:
        for prefix, limit in self.overrides.items():
            if path.startswith(prefix):
                return limit
        return self.max_bytes

    async def _reject(self, send: Send, limit: int) -> None:
        body = json.dumps(
            {"detail": f"request body exceeds {limit} bytes", "code": "payload_too_large"}
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
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(send, limit)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._reject(send, limit)
                return
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
