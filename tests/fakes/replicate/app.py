"""The fake Replicate's HTTP surface: predictions API, output files and an admin API (Starlette).

`/v1/...` needs `Authorization: Bearer <token>`; `/files/...` does not, like replicate.delivery
(`stats.downloads_with_token` counts clients leaking the token there); `/_admin/...` configures
a subprocess server and reads its counters.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.fakes.replicate.hooks import WebhookDispatcher
from tests.fakes.replicate.state import (
    TERMINAL,
    FakeConfig,
    FakePrediction,
    Stats,
    media_bytes,
    parse_tags,
    stream_bytes,
    version_of,
)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
Handler = Callable[[Request], Awaitable[Response]]


class FakeState:
    """Everything the app serves from; one per server, shared with the thread that started it."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.predictions: dict[str, FakePrediction] = {}
        self.hits: Counter[tuple[str, str]] = Counter()
        self.hooks = WebhookDispatcher(self)
        # The input files each prediction received, by prompt: parameter -> the bytes, decoded
        # from a data: URI or downloaded from the URL given (what a real model would read).
        self.received: dict[str, dict[str, bytes]] = {}
        self.received_as: dict[str, dict[str, str]] = {}  # parameter -> "url" or "data"

    def reset(self) -> None:
        self.stats = Stats()
        self.predictions.clear()
        self.hits.clear()
        self.received.clear()
        self.received_as.clear()

    def options(self, prompt: str) -> tuple[dict[str, str], dict[str, str]]:
        """(merged options, the prompt's own) for a new prediction."""
        own = parse_tags(prompt)
        return {**parse_tags(f"[fake:{self.config.faults}]"), **own}, own

    async def fault(
        self, request: Request, options: dict[str, str], phase: str, scope: str
    ) -> Response | None:
        """The response a create/get fault gives instead of the real one, counting `times`."""
        if options.get("on", "create") != phase:
            return None
        for name in ("hang", "429", "500", "garbage", "422"):
            if name not in options:
                continue
            self.hits[(name, scope)] += 1
            times = int(options.get("times") or 0)
            if times and self.hits[(name, scope)] > times:
                return None
            if name == "hang":  # until the client gives up (or hang_seconds)
                deadline = time.monotonic() + self.config.hang_seconds
                while time.monotonic() < deadline and not await request.is_disconnected():
                    await asyncio.sleep(0.05)
                return _problem(504, "Gateway timeout", "fake hang ended")
            if name == "429":
                retry = options.get("retry_after") or str(self.config.retry_after)
                return _problem(
                    429,
                    "Too many requests",
                    "Request was throttled.",
                    headers={"Retry-After": retry},
                )
            if name == "500":
                return _problem(500, "Internal server error", "fake upstream failure")
            if name == "garbage":
                return Response(
                    b'{"id": "oops", "status": <html>502</html>', 201, media_type="application/json"
                )
            return _problem(
                422,
                "Input validation failed",
                "- input.prompt: fake validation error: prompt rejected",
            )
        return None


async def _input_files(given: dict[str, object]) -> dict[str, bytes] | None:
    """The bytes of every file-like input (data: URI or URL), as a model would fetch them."""
    found: dict[str, bytes] = {}
    for name, value in given.items():
        if not isinstance(value, str) or name == "prompt":
            continue
        if value.startswith("data:") and ";base64," in value:
            found[name] = base64.b64decode(value.split(",", 1)[1])
        elif value.startswith(("http://", "https://")):  # a client only then: they cost
            async with httpx.AsyncClient(timeout=5) as client:
                reply = await client.get(value)
            found[name] = reply.content if reply.status_code == 200 else b""
    return found or None


def _problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"title": title, "detail": detail, "status": status}, status, headers)


class TruncatedResponse(Response):
    """Declares a Content-Length twice the body, sends the body, then drops the connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", self.media_type.encode() if self.media_type else b""),
                    (b"content-length", str(len(self.body) * 2).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        raise ConnectionAbortedError("fake truncated download")


class GeneratedResponse(Response):
    """`size` bytes of `stream_bytes(seed)`, sent as they are made; `drip` seconds before each
    chunk, `stall` seconds once half-way. `length` is the Content-Length to declare (None:
    chunked); `cut` drops the connection after the last chunk instead of ending the body."""

    def __init__(
        self,
        seed: str,
        size: int,
        media_type: str,
        *,
        length: int | None,
        drip: float = 0.0,
        stall: float = 0.0,
        cut: bool = False,
    ) -> None:
        super().__init__(media_type=media_type)
        self.seed, self.size, self.length, self.cut = seed, size, length, cut
        self.drip, self.stall = drip, stall

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", (self.media_type or "").encode())]
        if self.length is not None:
            headers.append((b"content-length", str(self.length).encode()))
        gone = asyncio.Event()  # the client hung up: stop making bytes nobody will read

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            sent = 0
            for chunk in stream_bytes(self.seed, self.size):
                if self.drip:
                    await asyncio.sleep(self.drip)
                if self.stall and sent < self.size // 2 <= sent + len(chunk):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(gone.wait(), self.stall)
                if gone.is_set():
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
            if self.cut:
                raise ConnectionAbortedError("fake truncated download")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()


def create_app(state: FakeState) -> Starlette:
    def route(path: str, method: str, handler: Handler, auth: bool = True) -> Route:
        key = f"{method} {path}"

        async def endpoint(request: Request) -> Response:
            state.stats.requests[key] += 1
            if auth and request.headers.get("authorization") != f"Bearer {state.config.token}":
                return _problem(
                    401, "Unauthenticated", "You did not pass a valid authentication token"
                )
            return await handler(request)

        return Route(path, endpoint, methods=[method])

    async def create(request: Request) -> Response:
        state.stats.create_attempts += 1
        try:
            body = await request.json()
        except ValueError:
            return _problem(400, "Bad request", "body is not JSON")
        params = request.path_params
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return _problem(422, "Input validation failed", "- input: input is required")
        if "owner" in params:
            model = f"{params['owner']}/{params['name']}"
            version = version_of(model)
        else:
            model, _, version = str(body.get("version") or "").rpartition(":")
            model = model or "fake/model"
            if not _HEX64.match(version):
                return _problem(
                    422,
                    "Invalid version or not permitted",
                    "The specified version does not exist (or perhaps you don't "
                    "have permission to use it?)",
                )
        prompt = str(body["input"].get("prompt", ""))
        if (received := await _input_files(body["input"])) is not None:
            state.received[prompt] = received
            state.received_as[prompt] = {
                name: "data" if str(body["input"][name]).startswith("data:") else "url"
                for name in received
            }
        options, own = state.options(prompt)
        scope = prompt if any(k in own for k in ("hang", "429", "500", "garbage", "422")) else "*"
        if (faulted := await state.fault(request, options, "create", scope)) is not None:
            return faulted
        events = body.get("webhook_events_filter")
        prediction = FakePrediction(
            id=secrets.token_hex(13),
            model=model,
            version=version,
            input=body["input"],
            options=options,
            base_url=str(request.base_url),
            latency=float(options.get("latency") or state.config.latency),
            outputs=(options.get("outputs") or "").split(",")
            if options.get("outputs")
            else list(state.config.outputs),
            webhook=body.get("webhook"),
            events=frozenset([*(events or ["output"]), "completed"]),
        )
        state.predictions[prediction.id] = prediction
        state.stats.created += 1
        state.hooks.schedule(prediction, time.time())
        return JSONResponse(prediction.to_json(state.config), 201)

    async def get(request: Request) -> Response:
        prediction = state.predictions.get(request.path_params["id"])
        if prediction is None:
            return _problem(404, "Not found", "Not found.")
        if (
            faulted := await state.fault(request, prediction.options, "get", prediction.id)
        ) is not None:
            return faulted
        return JSONResponse(prediction.to_json(state.config))

    async def cancel(request: Request) -> Response:
        state.stats.cancels += 1
        prediction = state.predictions.get(request.path_params["id"])
        if prediction is None:
            return _problem(404, "Not found", "Not found.")
        if (
            faulted := await state.fault(request, prediction.options, "cancel", prediction.id)
        ) is not None:
            return faulted
        now = time.time()
        if prediction.status(now) not in TERMINAL:
            prediction.canceled_at = now
            state.hooks.schedule(prediction, now)
        return JSONResponse(prediction.to_json(state.config, now))

    async def files(request: Request) -> Response:
        state.stats.downloads += 1
        state.stats.downloads_with_token += "authorization" in request.headers
        state.stats.downloads_of[request.path_params["id"]] += 1
        prediction = state.predictions.get(request.path_params["id"])
        index = int(request.path_params["n"])
        if (
            prediction is None
            or prediction.status(time.time()) != "succeeded"
            or index >= len(prediction.outputs)
            or "file404" in prediction.options
        ):
            return Response(b"Not found", 404, media_type="text/plain")
        options = prediction.options
        kind = prediction.outputs[index]
        hops = int(request.query_params.get("hops") or 0)
        if hops > 0:
            return RedirectResponse(request.url.include_query_params(hops=hops - 1), 302)
        if "oversized" in options:
            size, chunk = state.config.oversize_bytes, b"\0" * 65536
            if "nolength" in options:

                async def chunks() -> AsyncIterator[bytes]:
                    for _ in range(0, size, len(chunk)):
                        yield chunk

                return StreamingResponse(chunks(), media_type=kind)
            return Response(b"\0" * size, media_type=kind)
        if "bytes" in options:
            size, cut = int(options["bytes"]), "truncated" in options
            return GeneratedResponse(
                f"{prediction.id}/{index}",
                size,
                kind,
                length=None if "nolength" in options else size * 2 if cut else size,
                drip=float(options.get("drip") or 0),
                stall=float(options.get("stall") or 0),
                cut=cut,
            )
        body = media_bytes(kind, f"{prediction.id}/{index}", state.config.image_size)
        if "truncated" in options:
            return TruncatedResponse(body, media_type=kind)
        return Response(body, media_type=kind)

    async def admin_config(request: Request) -> Response:
        if request.method == "POST":
            try:
                state.config.update(await request.json())
            except (KeyError, ValueError, TypeError) as exc:
                return _problem(422, "Bad config", str(exc))
        return JSONResponse(state.config.as_dict())

    async def admin_stats(request: Request) -> Response:
        in_flight = sum(p.status(time.time()) not in TERMINAL for p in state.predictions.values())
        return JSONResponse({**state.stats.as_dict(), "in_flight": in_flight})

    async def admin_reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with state.hooks.running():
            yield

    routes = [
        route("/v1/predictions", "POST", create),
        route("/v1/models/{owner}/{name}/predictions", "POST", create),
        route("/v1/predictions/{id}", "GET", get),
        route("/v1/predictions/{id}/cancel", "POST", cancel),
        route("/files/{id}/{n:int}.{ext:str}", "GET", files, auth=False),
        route("/_admin/config", "GET", admin_config, auth=False),
        route("/_admin/config", "POST", admin_config, auth=False),
        route("/_admin/stats", "GET", admin_stats, auth=False),
        route("/_admin/reset", "POST", admin_reset, auth=False),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
