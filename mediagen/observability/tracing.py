"""OpenTelemetry traces: one trace from `POST /api/v1/generate` through every worker step to the
stored output. Off unless an OTLP/HTTP endpoint is set with the standard variables
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, and `OTEL_SDK_DISABLED`
not true); off, nothing is instrumented and every helper here is a shared no-op, so tracing
costs nothing unless it is asked for.

On, `configure(role)` installs a tracer provider (service `mediagen-api` / `mediagen-worker`
unless `OTEL_SERVICE_NAME` says otherwise) exporting in batches over OTLP/HTTP, and instruments
asyncpg, Redis, httpx (the `Outbound` client's transport: `instrument_client`) and, in a worker,
Celery. The API instruments its app with `instrument_app`, outside every middleware, so the
server span covers the requests `FastPaths` answers itself.

The trace context crosses the broker in each task message's headers (`traceparent`,
`tracestate`), written by a header source registered with `context.register_header_source`;
Celery puts those headers on `task.request`, where the Celery instrumentation reads them, and
the span it opens reaches the step's coroutine on the process's event loop (contextvars follow
`asyncio.run_coroutine_threadsafe`). A step the sweeper re-dispatched comes without one
(`unlinked`): its span (`step`) is parented to the trace its job was submitted in, which the job
row keeps (`Job.traceparent`, written at submit), and linked to the sweep's.

What a trace holds and where it goes (`observability.redaction`): a server span's URL
attributes lose the secrets of the request's path and query as the span starts (before any
routing, so a 404 or a 413 is redacted too); a client span records the URL without its query;
and the trace context goes out only with a request whose `Policy.trace_context` says so (our own
Cog servers, with COG_TRACE_CONTEXT): `strip_context` takes it off every other.

Calls to Postgres and Redis that belong to no request and no task (heartbeats, the outbox's
batched sends, the key-change subscription) start no trace of their own: they would only bury
the jobs' traces.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import trace

from mediagen import __version__
from mediagen.observability import context
from mediagen.observability.http import route_of
from mediagen.observability.redaction import bare, redact, secrets_of

if TYPE_CHECKING:
    from fastapi import FastAPI
    from httpx import AsyncClient
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.util.types import AttributeValue
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

Role = Literal["api", "worker"]
JOB_ID = "mediagen.job_id"
# Not traced, unless OTEL_PYTHON_FASTAPI_EXCLUDED_URLS (or ..._EXCLUDED_URLS) says otherwise:
# probes and scrapes would make a trace every few seconds.
EXCLUDED_URLS = "/livez,/readyz,/metrics"

_provider: TracerProvider | None = None
_configured_in: int | None = None  # the pid that ran configure (a forked child runs it again)
_tracer: trace.Tracer = trace.NoOpTracer()
# False while the sweeper re-dispatches: its messages carry no trace context of the sweep's.
_carry: ContextVar[bool] = ContextVar("mediagen_trace_carry", default=True)
_OFF: contextlib.nullcontext[trace.Span] = contextlib.nullcontext(trace.INVALID_SPAN)
# The headers that carry a trace's context to another service; on, with what the configured
# propagators write (`strip_context`).
CONTEXT_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})
_context_headers: frozenset[str] = frozenset()


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard OpenTelemetry variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure(role: Role) -> bool:
    """Set tracing up in this process, if the environment asks for it; True when on.

    Once per process: a worker calls it in each forked child and in the main process."""
    global _provider, _configured_in, _tracer, _context_headers
    if _configured_in == os.getpid():
        return _provider is not None
    _configured_in = os.getpid()
    if _provider is not None:  # forked from a configured process: its set-up is ours (the
        return True  # span processor restarts its export thread in the child by itself)
    if not wanted():
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service = os.environ.get("OTEL_SERVICE_NAME") or f"mediagen-{role}"
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "service.version": __version__}),
        # An operator's OTEL_TRACES_SAMPLER wins over dropping the background's root spans.
        sampler=None if os.environ.get("OTEL_TRACES_SAMPLER") else _sampler(),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("mediagen", __version__)
    _instrument(role)
    context.register_header_source(_inject)
    from opentelemetry.propagate import get_global_textmap

    _context_headers = frozenset(
        {*CONTEXT_HEADERS, *(name.lower() for name in get_global_textmap().fields)}
    )
    return True


def _instrument(role: Role) -> None:
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    # Instrumentors are singletons that refuse a second `instrument()` (a forked child's
    # patches are its parent's, already in place); each looks the provider up per span.
    # Statements only, never their parameters (prompts).
    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    RedisInstrumentor().instrument()
    HTTPXClientInstrumentor().instrument()  # httpx's own transports; Outbound's: instrument_client
    if role == "worker":
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]


def _sampler() -> Any:
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_ON,
        Decision,
        ParentBased,
        Sampler,
        SamplingResult,
    )

    class NoBackgroundRoots(Sampler):
        """Every trace, except one a client call would start (no request or task around it)."""

        def should_sample(
            self,
            parent_context: Context | None,
            trace_id: int,
            name: str,
            kind: trace.SpanKind | None = None,
            attributes: Any = None,
            links: Sequence[trace.Link] | None = None,
            trace_state: trace.TraceState | None = None,
        ) -> SamplingResult:
            if kind is trace.SpanKind.CLIENT:
                return SamplingResult(Decision.DROP)
            return ALWAYS_ON.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return "NoBackgroundRoots"

    return ParentBased(root=NoBackgroundRoots())


def shutdown() -> None:
    """Export what is still buffered (at process exit: API shutdown, worker process shutdown)."""
    global _provider, _tracer
    if _provider is not None and _configured_in == os.getpid():
        provider, _provider, _tracer = _provider, None, trace.NoOpTracer()
        provider.shutdown()


# --- the API -------------------------------------------------------------------------------------
def instrument_app(app: FastAPI) -> None:
    """Server spans for every request, from the outermost ASGI layer: around the request id and
    access log layer, Starlette's error handling and `FastPaths`, which answers the two hottest
    requests without routing. (`FastAPIInstrumentor.instrument_app` insists that the stack
    Starlette built begins with its error middleware, which `observability.http` wraps.) Each
    span is named after the route template that answered (`POST /api/v1/generate`), never the
    raw path. The OpenTelemetry middleware outermost also turns FastAPI's own telemetry off."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    build = app.build_middleware_stack
    excluded = os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS") or os.environ.get(
        "OTEL_PYTHON_EXCLUDED_URLS", EXCLUDED_URLS
    )

    def build_traced() -> ASGIApp:
        return OpenTelemetryMiddleware(
            _NamedByRoute(build()),
            excluded_urls=excluded,
            default_span_details=_span_details,
            server_request_hook=_redact_request,  # as the span starts, before any routing
            exclude_spans=["receive", "send"],  # a span per ASGI message: noise, and a cost
        )

    app.build_middleware_stack = build_traced  # type: ignore[method-assign]


def _span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """A request's span is named by its method until the route that answers is known."""
    method = str(scope.get("method", "")).upper()
    return (method if method in _METHODS else "HTTP"), {}


_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


class _NamedByRoute:
    """Names the current server span `METHOD /route/{template}` as the answer starts (the span
    ends with its last byte), by the FastAPI route or FastPaths that answered
    (`observability.http.route_of`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        span = trace.get_current_span()

        async def naming(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = route_of(scope)
                if route != "other":
                    span.update_name(f"{_span_details(scope)[0]} {route}")
                    span.set_attribute("http.route", route)
            await send(message)

        await self.app(scope, receive, naming)


# A capability in a URL is no business of a trace (`observability.redaction`): the
# instrumentation redacts `sig` from `http.url` only, neither `url.query` nor any path segment.
_URL_ATTRIBUTES = ("http.target", "http.url", "url.path", "url.query", "url.full")
_CLIENT_URL_ATTRIBUTES = ("http.url", "url.full")


def _redact_request(span: trace.Span, scope: Scope) -> None:
    """The server span's URL attributes without the secrets of the request's path and query
    (`redaction.secrets_of`), set as the span starts: whatever answers, a route, FastPaths or
    a refusal before any routing (404, 413), the span never holds them."""
    raw = scope.get("raw_path")  # as sent (`secrets_of` also looks at it decoded)
    path = raw.decode("latin-1") if isinstance(raw, bytes) else str(scope.get("path", ""))
    query = scope.get("query_string", b"")
    secrets = secrets_of(path, query.decode("latin-1") if isinstance(query, bytes) else "")
    if not secrets:
        return
    attributes: Mapping[str, Any] = getattr(span, "attributes", None) or {}
    for name in _URL_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str):
            span.set_attribute(name, redact(value, secrets))


async def _bare_url(span: trace.Span, request: Any) -> None:
    """A client span's URL without its query (`redaction.bare`), as the span starts."""
    attributes: Mapping[str, Any] = getattr(span, "attributes", None) or {}
    for name in _CLIENT_URL_ATTRIBUTES:
        if name in attributes:
            span.set_attribute(name, bare(str(request.url)))


# --- the broker ----------------------------------------------------------------------------------
def _inject(headers: dict[str, str]) -> None:
    """The header source: the current trace context onto an outgoing task message."""
    if _carry.get():
        from opentelemetry.propagate import inject

        inject(headers)


@contextlib.contextmanager
def unlinked() -> Iterator[None]:
    """Messages published meanwhile carry no trace context (the sweeper's re-dispatches: each
    step rejoins its own job's trace, see `step`, not the sweep's)."""
    token = _carry.set(False)
    try:
        yield
    finally:
        _carry.reset(token)


# --- the worker ----------------------------------------------------------------------------------
def step(
    name: str, job_id: str, origin: Callable[[], str | None]
) -> contextlib.AbstractContextManager[trace.Span]:
    """The span of one pipeline step (`job.start`, `job.poll`) of `job_id`, around the task's
    work. When the message brought no trace context, the trace the job was submitted in
    (`origin()`: the `traceparent` its row keeps) is its parent, and the task's span a link."""
    if _provider is None:
        return _OFF
    return _step(name, job_id, origin)


@contextlib.contextmanager
def _step(name: str, job_id: str, origin: Callable[[], str | None]) -> Iterator[trace.Span]:
    parent: Context | None = None
    links: list[trace.Link] = []
    task_span = trace.get_current_span()
    if getattr(task_span, "parent", None) is None:  # a root: the message carried no context
        traceparent = origin()
        if traceparent:
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )

            parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
            if task_span.get_span_context().is_valid:
                links.append(trace.Link(task_span.get_span_context()))
    with _tracer.start_as_current_span(
        name, context=parent, links=links, attributes={JOB_ID: job_id}
    ) as span:
        yield span


def span(
    name: str, attributes: Mapping[str, AttributeValue] | None = None
) -> contextlib.AbstractContextManager[trace.Span]:
    """A span of our own where no instrumentation sees the work (`storage.put`); a shared
    no-op when tracing is off. The span is given back to add attributes to."""
    if _provider is None:
        return _OFF
    return _tracer.start_as_current_span(name, attributes=attributes)


def instrument_client(client: AsyncClient) -> None:
    """Client spans (their URLs without the query) for `client`'s requests, whatever its
    transport (the Outbound client runs on aiohttp's, which `instrument()` does not patch).
    The instrumentation puts the trace context on every request; `strip_context` takes it off
    again where it must not go."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(client, request_hook=_bare_url)


def strip_context(headers: MutableMapping[str, str]) -> None:
    """Remove the trace context (`traceparent`, `tracestate`, `baggage`, or whatever
    OTEL_PROPAGATORS writes) from an outgoing request's headers: nothing to do when off."""
    for name in _context_headers:
        if name in headers:
            del headers[name]
