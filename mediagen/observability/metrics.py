"""Prometheus metrics: what every process counts, and how they are read.

Several processes count at once: `mediagen api --workers N`, and a Celery worker's pool
processes. prometheus-client's multiprocess mode covers both: when `PROMETHEUS_MULTIPROC_DIR`
is set (`mediagen api`, `mediagen worker` and `mediagen run` set a fresh one per service),
each process writes its counters to memory-mapped files there, and a scrape of any one of them
adds them all up. Started without it (`uvicorn mediagen.main:app`, `celery -A mediagen.worker
worker -P threads`), each process counts alone, which is right for one process. A per-process
exporter port was the alternative: it needs a port per pool process, and a Prometheus that
knows them all.

- The API serves `GET /metrics`: its processes' counters, plus the backlog read at scrape time
  from rows the transitions keep (`job_counters`, a few per key: never a count of jobs), a
  partial index of the pending jobs by model, and Redis (slots, the worker heartbeats).
- The worker serves the same format on WORKER_METRICS_PORT, from its main process
  (`mediagen.observability.exporter`, beside the worker's probes).

METRICS_TOKEN, when set, is required as a bearer token by both. METRICS_ENABLED=false turns
both off, and the API then counts nothing per request. Either one bound beyond loopback
without METRICS_TOKEN says so with a warning when it starts (`warn_if_open`).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import SecretStr

from mediagen.jobs.states import OUTCOMES

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_MODEL = "default"  # the `model` label of jobs that named none

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW = (0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
_CALLS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# --- the API's requests ----------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "mediagen_http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "mediagen_http_request_duration_seconds",
    "Time to answer an HTTP request (to its last byte), by route template and method.",
    ["route", "method"],
    buckets=_FAST,
)
RATE_LIMITED = Counter(
    "mediagen_rate_limited_total",
    "Requests refused by a limit: submissions, reads, in_flight (unfinished jobs), streams.",
    ["limit"],
)

# --- jobs ------------------------------------------------------------------------------------
JOBS_CREATED = Counter("mediagen_jobs_created_total", "Jobs accepted.", ["provider", "model"])
JOBS_FINISHED = Counter(
    "mediagen_jobs_finished_total",
    "Jobs that reached a terminal state (completed, failed, canceled).",
    ["status", "provider", "model"],
)
JOB_RETRIES = Counter(
    "mediagen_job_retries_total", "Attempts that ended in a retry.", ["provider", "model"]
)
QUEUE_TIME = Histogram(
    "mediagen_job_queue_seconds",
    "From a job's creation to its first start.",
    ["provider", "model"],
    buckets=_SLOW,
)
RUN_TIME = Histogram(
    "mediagen_job_run_seconds",
    "From a job's first start to its terminal state, by that state.",
    ["status", "provider", "model"],
    buckets=_SLOW,
)

# --- the worker's calls out ------------------------------------------------------------------
PROVIDER_REQUESTS = Counter(
    "mediagen_provider_requests_total",
    "Calls to the generation provider, by operation (create, get, cancel) and outcome (ok, error).",
    ["provider", "operation", "outcome"],
)
PROVIDER_DURATION = Histogram(
    "mediagen_provider_request_duration_seconds",
    "Time a call to the generation provider took.",
    ["provider", "operation"],
    buckets=_CALLS,
)
DOWNLOADS = Counter(
    "mediagen_downloads_total",
    "Outputs fetched from the provider into storage, by outcome (ok, error).",
    ["outcome"],
)
DOWNLOAD_BYTES = Counter("mediagen_download_bytes_total", "Bytes of outputs fetched and stored.")
STORAGE_WRITES = Counter(
    "mediagen_storage_writes_total",
    "Objects written to storage, by backend (local, s3) and outcome (ok, error).",
    ["backend", "outcome"],
)
STORAGE_BYTES = Counter(
    "mediagen_storage_write_bytes_total", "Bytes written to storage.", ["backend"]
)
WEBHOOK_DELIVERIES = Counter(
    "mediagen_webhook_deliveries_total",
    "Client webhook attempts, by outcome (delivered, retry, failed: given up, refused: the "
    "address is not allowed).",
    ["outcome"],
)
WEBHOOK_DEFERRALS = Counter(
    "mediagen_webhook_deferrals_total",
    "Client webhook deliveries put off without an attempt, by why (key, host: its share of "
    "the worker's slots is taken; circuit: the receiver keeps failing).",
    ["reason"],
)
SWEEPER_RESCUES = Counter(
    "mediagen_sweeper_rescues_total",
    "What the sweeper sent on again, by kind (undispatched, retry_due, lease_expired, "
    "deadline, delivery, upstream_cancel, batch_settled).",
    ["kind"],
)


MAX_MODELS = 100  # distinct `model` labels per process; later ones count as "other"
PENDING_COUNTED = 1_000  # a model's pending jobs on /metrics are counted up to this
_models: set[str] = set()


def model_label(model: str | None) -> str:
    """The `model` label: a wildcard in ALLOWED_MODELS (`owner/*`, `name:*`) admits any number
    of names, and each would be a new series in every job metric, so past MAX_MODELS they are
    counted together."""
    if model is None:
        return DEFAULT_MODEL
    if model not in _models:
        if len(_models) >= MAX_MODELS:
            return "other"
        _models.add(model)
    return model


# --- counting --------------------------------------------------------------------------------
# Children cached by label values: `.labels()` takes a lock and builds a key on every call,
# which the request path need not pay for.
_requests: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """One answered HTTP request (called by the API's request observer)."""
    children = _requests.get((route, method, status))
    if children is None:
        children = (
            HTTP_REQUESTS.labels(route, method, str(status)),
            HTTP_DURATION.labels(route, method),
        )
        _requests[(route, method, status)] = children
    children[0].inc()
    children[1].observe(seconds)


def rate_limited(limit: str) -> None:
    RATE_LIMITED.labels(limit).inc()


_created: dict[tuple[str, str], Any] = {}


def job_created(provider: str, model: str | None) -> None:
    key = (provider, model_label(model))
    child = _created.get(key)
    if child is None:
        child = _created[key] = JOBS_CREATED.labels(*key)
    child.inc()


def job_moved(
    was: str,
    status: str,
    provider: str,
    model: str | None,
    created_at: datetime,
    started_at: datetime | None,
    completed_at: datetime | None,
) -> None:
    """A job changed state (counted by the process whose guarded update made the change, so
    each change once, whichever process or retry did it)."""
    if was == status:
        return
    label = model_label(model)
    if status == "processing" and was == "pending" and started_at is not None:
        QUEUE_TIME.labels(provider, label).observe((started_at - created_at).total_seconds())
    elif status == "retrying":
        JOB_RETRIES.labels(provider, label).inc()
    elif status in OUTCOMES:
        JOBS_FINISHED.labels(status, provider, label).inc()
        if started_at is not None and completed_at is not None:
            seconds = (completed_at - started_at).total_seconds()
            RUN_TIME.labels(status, provider, label).observe(seconds)


@asynccontextmanager
async def provider_call(provider: str, operation: str) -> AsyncIterator[None]:
    """Time one call to the provider and count its outcome."""
    began = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    finally:
        PROVIDER_DURATION.labels(provider, operation).observe(time.perf_counter() - began)
        PROVIDER_REQUESTS.labels(provider, operation, outcome).inc()


def download(outcome: str, size: int = 0) -> None:
    DOWNLOADS.labels(outcome).inc()
    if size:
        DOWNLOAD_BYTES.inc(size)


def storage_write(backend: str, outcome: str, size: int = 0) -> None:
    STORAGE_WRITES.labels(backend, outcome).inc()
    if size:
        STORAGE_BYTES.labels(backend).inc(size)


def webhook_delivery(outcome: str) -> None:
    WEBHOOK_DELIVERIES.labels(outcome).inc()


def webhook_deferred(reason: str) -> None:
    WEBHOOK_DEFERRALS.labels(reason).inc()


def sweeper_rescued(kind: str, count: int) -> None:
    if count:
        SWEEPER_RESCUES.labels(kind).inc(count)


# --- reading ---------------------------------------------------------------------------------
_before_scrape: list[Callable[[], None]] = []


def before_scrape(hook: Callable[[], None]) -> None:
    """Have `hook` (which counts what it gathered) run before this process is scraped."""
    _before_scrape.append(hook)


def registry() -> CollectorRegistry:
    """What a scrape of this process shows: every process of its service in multiprocess mode,
    else this process's own metrics."""
    if os.environ.get(MULTIPROC_ENV):
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
        return collected
    return REGISTRY


class _Values(Collector):
    """Gauges whose values were read just before the scrape."""

    def __init__(self, families: Iterable[GaugeMetricFamily]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self.families


@dataclass(frozen=True)
class ModelBacklog:
    """One model's pending jobs (counted up to a bound, `observability.router`) and how long
    its oldest has waited (seconds)."""

    pending: int
    oldest: float


def backlog_families(
    by_state: Mapping[str, int] | None,
    workers: int | None,
    models: Mapping[str, ModelBacklog] | None = None,
    slots: Mapping[str, tuple[int, int]] | None = None,
) -> list[GaugeMetricFamily]:
    """The backlog gauges. A part that could not be read (None) leaves its series out of the
    scrape (an absent series, which alerts can tell from a zero).

    The per-model series are the same families with a `model` label (`models`: by model):
    `mediagen_jobs{status="pending",model=...}` and `mediagen_oldest_pending_age_seconds{model=...}`
    beside the unlabelled totals, which are never less than any model's, so `max(...)` over a
    family still reads the total (the oldest is the oldest of the models'). `slots`: the busy
    and total slots of each model that has a limit (Cog servers, or a `concurrency`)."""
    jobs = GaugeMetricFamily(
        "mediagen_jobs",
        "Unfinished jobs by state (exact); with a `model` label, a model's pending jobs "
        f"(counted up to {PENDING_COUNTED}).",
        labels=["status"],
    )
    for state in ("pending", "processing", "retrying"):
        if by_state is not None:
            jobs.add_metric([state], by_state.get(state, 0))
    oldest = GaugeMetricFamily(
        "mediagen_oldest_pending_age_seconds",
        "Age of the oldest job waiting for its first start (0: none waiting); with a `model` "
        "label, that model's.",
    )
    if models is not None:
        oldest.add_metric([], max(0.0, 0.0, *(b.oldest for b in models.values())))
    for model, backlog in (models or {}).items():
        jobs.add_sample("mediagen_jobs", {"status": "pending", "model": model}, backlog.pending)
        oldest.add_sample(
            "mediagen_oldest_pending_age_seconds", {"model": model}, max(0.0, backlog.oldest)
        )
    families = [family for family in (jobs, oldest) if family.samples]
    if workers is not None:
        families.append(
            GaugeMetricFamily(
                "mediagen_workers_live",
                "Worker processes whose heartbeat is recent.",
                value=workers,
            )
        )
    if slots is not None:
        busy = GaugeMetricFamily(
            "mediagen_slots_busy",
            "Jobs of a model with a limit that hold one of its slots (a Cog model's servers, or "
            "its concurrency), by model.",
            labels=["model"],
        )
        total = GaugeMetricFamily(
            "mediagen_slots_total",
            "Slots of a model with a limit that are in service (a Cog server not set aside after "
            "a failed health check or a refusal; its concurrency), by model.",
            labels=["model"],
        )
        for model, (used, whole) in slots.items():
            busy.add_metric([model], used)
            total.add_metric([model], whole)
        families += [busy, total]
    return families


def exposition(extra: Iterable[GaugeMetricFamily] = ()) -> bytes:
    """The text format of this process's (or service's) metrics, plus `extra` gauges."""
    text = generate_latest(registry())
    families = list(extra)
    if families:
        gauges = CollectorRegistry(auto_describe=False)
        gauges.register(_Values(families))
        text += generate_latest(gauges)
    return text


def _loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def warn_if_open(host: str, token: SecretStr, what: str) -> None:
    """A loud warning when `what` (a /metrics) will answer whoever reaches `host` without a
    credential: bound beyond loopback with METRICS_TOKEN unset."""
    if token or _loopback(host):
        return
    logging.getLogger(__name__).warning(
        "%s answers without credentials on %s, beyond loopback: METRICS_TOKEN is unset, so "
        "anyone who reaches it reads the service's counters. Set METRICS_TOKEN (and give it "
        "to Prometheus), or bind to 127.0.0.1.",
        what,
        host,
    )


def authorized(header: str | None, token: SecretStr) -> bool:
    """A scrape is allowed: no METRICS_TOKEN, or `Bearer <METRICS_TOKEN>` (constant time)."""
    if not token:
        return True
    expected = f"Bearer {token.get_secret_value()}".encode()
    return hmac.compare_digest((header or "").encode(), expected)


async def render(extra: Iterable[GaugeMetricFamily] = ()) -> bytes:
    """`exposition` off the event loop (multiprocess mode reads every process's files), after
    the hooks have counted what they gathered (on the loop, where they gather it)."""
    for hook in _before_scrape:
        hook()
    return await asyncio.to_thread(exposition, extra)
