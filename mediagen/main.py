"""The FastAPI application: `uvicorn mediagen.main:app` (or `mediagen api`)."""

from __future__ import annotations

import asyncio
import gc
import logging
import mimetypes
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from mediagen import __version__, errors_http, health, proxy, redis_clients
from mediagen.batches.router import router as batches_router
from mediagen.broker import Outbox
from mediagen.catalog import load_catalog
from mediagen.catalog.listing import InputSchemas
from mediagen.catalog.router import router as models_router
from mediagen.catalog.watch import CatalogWatcher
from mediagen.config import Settings, get_settings
from mediagen.db import close_db, init_db
from mediagen.errors import StorageError
from mediagen.files import router as files_router
from mediagen.files import service as files_service
from mediagen.jobs import admission
from mediagen.jobs.fastpath import FastPaths
from mediagen.jobs.live import router as live_router
from mediagen.jobs.parameters import GenerationParameters
from mediagen.jobs.retention import served_job_gone
from mediagen.jobs.router import router as jobs_router
from mediagen.keys.cache import PING_EVERY, KeyCache
from mediagen.limits.body import BodySizeLimit, batch_body_bytes
from mediagen.limits.rates import RateLimiter
from mediagen.notify.router import router as notify_router
from mediagen.observability import http as observed
from mediagen.observability import logs, metrics, sentry, tracing
from mediagen.observability.router import router as metrics_router
from mediagen.outbound import Outbound
from mediagen.providers.cog import webhooks as cog_webhooks
from mediagen.providers.cog.capacity import CogCapacity
from mediagen.providers.replicate.webhooks import router as webhooks_router
from mediagen.replicate_api import router as replicate_api
from mediagen.storage import create_storage
from mediagen.storage.local import LocalStorage
from mediagen.storage.served import SignedFiles
from mediagen.storage.signing import load_signer
from mediagen.usage.router import router as usage_router
from mediagen.web import router as web

API_PREFIX = "/api/v1"
WEBHOOK_MAX_BYTES = 4 * 1024 * 1024
log = logging.getLogger(__name__)

DESCRIPTION = """
Submit a prompt with `POST /api/v1/generate`, get a job id at once, then follow the job with
`GET /api/v1/status/{job_id}` until it is `completed` (or `failed`) and fetch `result_url`.

Job states: `pending` -> `processing` -> `completed`; `processing` -> `retrying` -> `processing`
on transient errors (exponential backoff, at most `MAX_RETRIES`); any unfinished state ->
`failed`. Errors are JSON: `{"detail": "...", "code": "...", "errors": [...]}`.
"""


# /media answers with the same content types the outputs were stored with (the platform's
# tables differ, e.g. audio/x-wav).
for _type, _ext in (
    ("audio/wav", ".wav"),
    ("image/webp", ".webp"),
    ("video/mp4", ".mp4"),
    ("video/webm", ".webm"),
    ("audio/mpeg", ".mp3"),
    ("audio/flac", ".flac"),
    ("audio/ogg", ".ogg"),
):
    mimetypes.add_type(_type, _ext)


_AUTH_NOTE = {
    "true": " Required on every operation that names it.",
    "false": " Not used: this server serves every caller (AUTH_REQUIRED=false).",
    "auto": " Optional until the first key is made on this server, then required "
    "(AUTH_REQUIRED=auto).",
}


def _state_auth_mode(app: FastAPI, mode: str) -> None:
    """Make the OpenAPI schema say what this server does about keys: required (`true`), not
    used (`false`), or optional until the first key is made (`auto`: an empty requirement
    beside the Bearer one)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                if "security" not in operation:
                    continue
                if mode == "false":
                    del operation["security"]
                elif mode == "auto":
                    operation["security"] = [*operation["security"], {}]
        scheme = schema.get("components", {}).get("securitySchemes", {}).get("HTTPBearer")
        if scheme is not None:
            scheme["description"] = scheme.get("description", "") + _AUTH_NOTE[mode]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logs.configure(settings, "api")
    sentry.configure(settings, "api")  # before the app: it patches Starlette's error handling
    catalog = load_catalog(settings)  # a bad MODELS_FILE stops the API here (CatalogError)
    storage = create_storage(settings)
    outbound = Outbound()  # Cog servers' input schemas (GET /api/v1/models)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.metrics_enabled:
            metrics.warn_if_open(settings.api_host, settings.metrics_token, "/metrics (API_HOST)")
        await init_db(settings, "mediagen-api")
        storage.signer = await load_signer(
            settings.media_signing_key.get_secret_value(), settings.media_url_ttl
        )
        try:
            await storage.check()
        except StorageError as exc:  # keep serving: health answers 503 and says why
            log.error("storage is not usable: %s", exc)

        def client(name: str, timeout: float = 2) -> aioredis.Redis:
            return redis_clients.async_client(settings, name, timeout=timeout)

        # Named connections of their own for the request path, the rate counters, the outbox's
        # batches and the key-change subscription: none waits behind another, and each shows
        # under its name in `CLIENT LIST`.
        app.state.redis = client("mediagen-api")
        limits = client("mediagen-limits")
        app.state.rate_limiter = RateLimiter(limits, settings.rate_limit_per_minute)
        app.state.read_limiter = RateLimiter(limits, settings.rate_limit_reads_per_minute, "reads")
        app.state.outbox = Outbox(client("mediagen-outbox", timeout=5))
        # Cog slots, freed by the terminal webhook (`mediagen.providers.cog.webhooks`).
        app.state.cog_capacity = (
            CogCapacity(settings, catalog, app.state.outbox, outbound, storage)
            if "cog" in catalog.providers()
            else None
        )
        # The models file, read again when it changes or on SIGHUP (uvicorn keeps INT and TERM;
        # under `--workers` each process checks the file itself).
        watcher = CatalogWatcher(catalog, settings)
        await watcher.start()
        watcher.on_sighup()
        subscriber = client("mediagen-keys", timeout=PING_EVERY * 3)
        following = asyncio.create_task(app.state.keys.follow(subscriber), name="key-changes")
        # Everything made so far (the app, its routes and models, the imported libraries) lives
        # as long as the process: out of the garbage collector's sight, each collection that
        # the requests' short-lived objects trigger has less to walk.
        gc.freeze()
        try:
            yield
        finally:
            following.cancel()
            await watcher.stop()
            await app.state.rate_limiter.close()
            await app.state.read_limiter.close()
            await app.state.outbox.close()
            await admission.settle()  # background work of submissions (dispatch resets)
            for redis_client in (app.state.outbox.client, subscriber, limits, app.state.redis):
                await redis_client.aclose()
            await storage.close()
            await outbound.close()
            await close_db()
            tracing.shutdown()  # export the spans still buffered

    app = FastAPIOffline(
        # The documentation pages are the web package's (`mediagen.web`: with security
        # headers); the assets they load are served from here (`/static-offline-docs`).
        docs_url=None,
        redoc_url=None,
        title="mediagen",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        debug=settings.debug,
        # Traces come from mediagen.observability.tracing (the OpenTelemetry ASGI middleware,
        # outermost, so the fast paths are covered); FastAPI's own telemetry would look up the
        # OpenTelemetry providers on every request to find out it has nothing to do.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.catalog = catalog
    app.state.input_schemas = InputSchemas(outbound, GenerationParameters.model_json_schema())
    app.state.keys = KeyCache(settings.key_cache_seconds)
    app.state.storage = storage
    app.state.storage_probe = health.StorageProbe(storage)
    app.include_router(jobs_router, prefix=API_PREFIX)
    app.include_router(models_router, prefix=API_PREFIX)  # the models a key may use
    app.include_router(live_router, prefix=API_PREFIX)  # job events (SSE)
    app.include_router(health.router)  # /livez, /readyz, /api/v1/health
    app.include_router(webhooks_router, prefix=API_PREFIX)
    app.include_router(cog_webhooks.router, prefix=API_PREFIX)  # Cog servers' webhooks, uploads
    app.include_router(notify_router, prefix=API_PREFIX)  # client webhook log
    app.include_router(files_router.router, prefix=API_PREFIX)  # input files
    files_service.bind_storage(storage)  # for inputs given inline at submit
    app.include_router(usage_router, prefix=API_PREFIX)  # a key's usage
    app.include_router(batches_router, prefix=API_PREFIX)  # many jobs at once
    # Replicate's API (`replicate` clients with this service as their base URL).
    replicate_api.install(app)
    web.install(app)  # the web page at / and its /assets
    if settings.metrics_enabled:
        app.include_router(metrics_router)  # /metrics (Prometheus)
    errors_http.install(app)
    _state_auth_mode(app, settings.auth_required)
    proxy.install_root_path(app, settings)  # innermost: routing sees the prefix (ROOT_PATH)
    if settings.fast_paths:  # innermost: CORS and the body limit apply to it as to the routes
        app.add_middleware(FastPaths)
    if isinstance(storage, LocalStorage):
        storage.root.mkdir(parents=True, exist_ok=True)
        app.mount("/media", SignedFiles(storage, served_job_gone), name="media")
    # Webhook bodies carry a prediction's logs: allow them more room than client requests.
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "Last-Event-ID",
                "Prefer",
            ],
            expose_headers=["Retry-After", "Idempotent-Replayed", "Preference-Applied"],
        )
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        overrides={f"{API_PREFIX}/webhooks/": WEBHOOK_MAX_BYTES},
        keyed={f"{API_PREFIX}/batches": batch_body_bytes(settings)},  # MAX_BATCH job requests
        streamed={  # they read their own, capped as they go
            **cog_webhooks.streamed_limits(settings, API_PREFIX),
            API_PREFIX + files_router.PATH: files_router.upload_limit(settings.max_file_bytes),
            replicate_api.FILES: files_router.upload_limit(settings.max_file_bytes),
        },
    )
    observed.install(app, settings)  # around everything: request id, access log, metrics
    # Around those: forwarded headers of trusted peers believed, the path prefix taken off.
    proxy.install_outer(app, settings)
    if tracing.configure("api"):  # outermost, so the server span covers FastPaths' answers
        tracing.instrument_app(app)
    return app


def __getattr__(name: str) -> FastAPI:
    """`mediagen.main:app` for uvicorn, built on first access (so importing is cheap)."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
