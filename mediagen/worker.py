"""The Celery application and the per-process runtime its tasks run on.

Real module path for Celery's CLI: `celery -A mediagen.worker inspect ping`.

Each worker process owns one asyncio event loop, running in a daemon thread, with its `Worker`
on it (`mediagen.worker_services`: one Tortoise connection pool, one outbox, its providers and
one storage client).
Tasks are thin: they submit a coroutine to that loop, which publishes the step it returns
through the outbox and waits for the batch to be sent, so the task is acknowledged only after
its successor is in Redis. Because no step waits for a model, a handful of pool threads keep
thousands of jobs in flight.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from celery import Celery
from celery.signals import (
    setup_logging,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from mediagen import heartbeat, kombu_fixes, redis_clients, retry
from mediagen.broker import PRIORITY_STEPS, QUEUE, WEBHOOK_QUEUE
from mediagen.config import Settings, get_settings
from mediagen.jobs.dispatch import SWEEP
from mediagen.observability import context, exporter, logs, metrics, sentry, tracing
from mediagen.worker_services import Worker

log = logging.getLogger(__name__)
T = TypeVar("T")

kombu_fixes.survive_broker_loss()
kombu_fixes.follow_demoted_primary()
kombu_fixes.drop_stale_pools()


def make_celery(settings: Settings) -> Celery:
    app = Celery(
        "mediagen",
        include=["mediagen.jobs.tasks", "mediagen.notify.tasks", "mediagen.batches.tasks"],
    )
    broker = redis_clients.celery_broker(settings)
    app.conf.update(
        broker_url=broker["broker_url"],
        broker_use_ssl=broker.get("broker_use_ssl"),
        result_backend=None,
        task_ignore_result=True,
        task_default_queue=QUEUE,
        task_routes={
            "mediagen.notify.*": {"queue": WEBHOOK_QUEUE},
            "mediagen.*": {"queue": QUEUE},
        },
        # A task is acknowledged after it ran; if its process dies the job's lease (not the
        # broker) brings it back, so no endless redelivery loop.
        task_acks_late=True,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=8,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2.0,
        # A worker never gives up on its broker (Celery's default stops after 100 tries): it
        # waits out an outage or a failover however long it takes.
        broker_connection_max_retries=None,
        broker_transport_options={
            # Sentinel, timeouts, keepalive (mediagen.redis_clients).
            **broker["broker_transport_options"],
            # Redis redelivers a message not acknowledged within this; a countdown counts, so
            # keep it at twice the longest countdown anything schedules (job retries, polls,
            # webhook retries), or such a message would run twice.
            "visibility_timeout": int(2 * max(1800, retry.longest_countdown(settings))),
            # One list per priority step (mediagen.broker.queue_key), BRPOP'd lowest step
            # first: high-priority starts before normal before low (docs/priority-and-usage.md).
            "priority_steps": list(PRIORITY_STEPS),
        },
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0.1,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        beat_schedule={
            "sweep": {
                "task": SWEEP,
                "schedule": settings.sweep_interval,
                "options": {"expires": settings.sweep_interval},
            },
        },
        worker_hijack_root_logger=False,
        # Task events cost a Redis publish per task state; Flower switches them on when it
        # connects (`enable_events`), so they are off unless someone is watching.
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


celery_app = make_celery(get_settings())
app = celery_app  # `celery -A mediagen.worker` finds `app`


class Runtime:
    """One event loop thread per worker process, with its `Worker` on it. Celery's pool threads
    hand each task's coroutine to the loop (`run`): no `asyncio.run()` per task."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="mediagen-loop", daemon=True
        )
        self._thread.start()
        self.worker = self.run(Worker.open(settings))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on this process's loop and wait for it (from a pool thread). The coroutine
        runs in a copy of the calling thread's context: it sees the task's request and job ids.
        The ids it ends with come back to the calling thread, so what the task logs or reports
        after it (Celery's line for an exception, its error report) names the job the step
        ran, which may be another job's turn than its message's (`Pipeline.start`)."""
        ended: list[context.Ids] = []
        try:
            return asyncio.run_coroutine_threadsafe(_ending(coro, ended), self.loop).result(timeout)
        finally:
            if ended:
                context.restore(ended[0])

    def close(self) -> None:
        try:
            self.run(self.worker.close(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)


async def _ending(coro: Coroutine[Any, Any, T], ended: list[context.Ids]) -> T:
    """`coro`, noting the ids in force when it ends (`Runtime.run`)."""
    try:
        return await coro
    finally:
        ended.append(context.current())


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    """This process's runtime, created on first use after any fork (keyed by PID)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None or _runtime.pid != os.getpid():
            _runtime = Runtime(get_settings())
        return _runtime


@setup_logging.connect
def _on_setup_logging(**_: Any) -> None:
    # Connected, so Celery installs no handlers of its own: its lines are structured like ours.
    logs.configure(get_settings(), "worker")
    sentry.configure(get_settings(), "worker")  # before Celery builds its task tracers


def _on_hup(*_: Any) -> None:
    current = _runtime  # never made here: a signal handler takes no lock
    if current is not None and current.pid == os.getpid():
        current.worker.watcher.reload_soon()


def _reload_on_hup() -> None:
    """SIGHUP reads the models file again (instead of Celery's restart of the whole worker).
    From the main thread only: the runtime's loop runs in a thread of its own."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, _on_hup)


@worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    tracing.configure("worker")  # after the fork, as the export thread must be
    runtime()  # prefork children: open the loop and pool after the fork
    _reload_on_hup()


_consumer: Any = None  # the main process's Celery consumer, once it is ready


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    # Threads/solo pools run tasks in the main process. A prefork main process runs none, but
    # its heartbeat is the worker's; children forked later open their own (see db.pool).
    # The port first: a runtime that cannot open yet (the database is restarting) leaves the
    # worker alive but not ready, and the next task opens it again.
    global _consumer
    _consumer = sender
    tracing.configure("worker")
    _serve_port(get_settings())
    runtime()
    _reload_on_hup()


class _Readiness:
    """The main process's readiness (`GET /readyz` on its port): its Celery consumer holds a
    connection to the broker, and its own heartbeat is fresh (its event loop runs, and the
    broker answered it lately and answers now: `mediagen.heartbeat.own`)."""

    def __init__(self, settings: Settings) -> None:
        self.name = heartbeat.member()
        self.client = redis_clients.sync_client(
            settings, "mediagen-probe", timeout=2, connect_timeout=2
        )

    def __call__(self) -> tuple[bool, str]:
        connection = getattr(_consumer, "connection", None)
        if _consumer is not None and not (connection is not None and connection.connected):
            return False, "the worker is not connected to the broker"
        return heartbeat.own(self.client, self.name)


def _serve_port(settings: Settings) -> None:
    """The worker's port, in its main process: its probes, and its Prometheus metrics unless
    METRICS_ENABLED is false (`mediagen.observability.exporter`); in multiprocess mode
    (`mediagen worker` sets it up) the metrics add up every pool process."""
    if not settings.worker_metrics_port:
        return
    host, port = settings.worker_metrics_host, settings.worker_metrics_port
    if settings.metrics_enabled:
        what = "The worker's /metrics (WORKER_METRICS_HOST)"
        metrics.warn_if_open(host, settings.metrics_token, what)
    try:
        exporter.serve(
            host, port, settings.metrics_token, _Readiness(settings), settings.metrics_enabled
        )
    except OSError as exc:  # another worker on this machine has it: run, without the port
        log.warning("worker probes and metrics not served on %s:%d: %s", host, port, exc)
        return
    served = "/livez, /readyz" + (" and /metrics" if settings.metrics_enabled else "")
    log.info("worker %s on http://%s:%d", served, host, port)


@worker_process_shutdown.connect
@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    global _runtime
    with _runtime_lock:
        if _runtime is not None and _runtime.pid == os.getpid():
            _runtime.close()
            _runtime = None
    tracing.shutdown()  # export the spans still buffered
