"""What a worker process runs jobs with, on its event loop: its Tortoise pool, one outbound HTTP
client, one provider of each kind the catalog routes to, storage, the outbox, the pipeline, the
webhook deliverer, the models file's watcher and its heartbeat; and what each task does with
them.

No Celery here: `mediagen.worker` runs a `Worker` in a Celery process, on the loop of its
`Runtime`; tests run one on their own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from redis.exceptions import RedisError

from mediagen import heartbeat, redis_clients
from mediagen.batches import SETTLE_TASK, settle_marker
from mediagen.batches import repository as batches
from mediagen.broker import HEARTBEAT_TTL, WORKERS, Outbox
from mediagen.catalog.watch import CatalogWatcher
from mediagen.config import Settings
from mediagen.db import close_db, init_db
from mediagen.errors import StorageError
from mediagen.jobs.dispatch import CANCEL_UPSTREAM, POLL, START, SWEEP, Next
from mediagen.jobs.pipeline import Pipeline
from mediagen.jobs.sweeper import sweep as sweep_jobs
from mediagen.notify import DELIVER_TASK, delivery_task
from mediagen.notify.circuit import Circuits
from mediagen.notify.deliverer import Deliverer
from mediagen.notify.delivery import Bodies
from mediagen.notify.service import stranded_deliveries
from mediagen.observability import metrics
from mediagen.observability.measured import MeasuredProvider
from mediagen.outbound import Outbound
from mediagen.providers.registry import Providers, create_providers
from mediagen.replicate_api import webhooks as replicate_webhooks
from mediagen.storage import create_storage
from mediagen.storage.base import Storage
from mediagen.storage.signing import load_signer

log = logging.getLogger(__name__)

GONE_AFTER = 3600  # heartbeats older than this are removed from the set
# The body of a job's webhook, by the API that made the job (its `surface`); any other job's is
# mediagen's own: a job made through Replicate's API (`/v1`) is told of in that API's shape.
WEBHOOK_BODIES: Bodies = {replicate_webhooks.SURFACE: replicate_webhooks.body}


class Worker:
    """What a worker process runs jobs with, on its event loop: its Tortoise pool, one outbound
    HTTP client, one provider of each kind the catalog routes to, storage (its URL signer
    loaded), the outbox, the pipeline and the webhook deliverer, and its heartbeat. The one
    composition of them: `Runtime` runs it in a Celery process; tests run it on their loop."""

    settings: Settings
    outbound: Outbound
    providers: Providers
    storage: Storage
    outbox: Outbox
    pipeline: Pipeline
    deliverer: Deliverer
    watcher: CatalogWatcher
    _heartbeat: asyncio.Task[None]

    @classmethod
    async def open(cls, settings: Settings, name: str = "mediagen-worker") -> Worker:
        self = cls()
        self.settings = settings
        self.outbound = Outbound()
        # One shared provider per kind the models file (or the settings) routes jobs to.
        self.providers = create_providers(settings, self.outbound, wrap=MeasuredProvider)
        self.storage = create_storage(settings)
        await init_db(settings, name)
        # Signed URLs in webhook payloads: local outputs, a prediction's stream.
        self.storage.signer = await load_signer(
            settings.media_signing_key.get_secret_value(), settings.media_url_ttl
        )
        self.outbox = Outbox(redis_clients.async_client(settings, name, timeout=5))
        try:
            await self.storage.check()
        except StorageError as exc:  # jobs retry, then fail saying why; no crash loop
            log.error("storage is not usable: %s", exc)
        self.pipeline = Pipeline(settings, self.providers, self.storage, self.outbox)
        self.deliverer = Deliverer(
            settings,
            self.storage,
            self.outbound,
            self.outbox.send,
            WEBHOOK_BODIES,
            circuits=Circuits(self.outbox.client, settings),
        )
        # The models file, read again when it changes (and on SIGHUP: `_reload_on_hup`); last,
        # as the heartbeat: a start-up that failed before leaves no task behind.
        self.watcher = CatalogWatcher(self.providers.catalog, settings)
        await self.watcher.start()
        self._heartbeat = asyncio.create_task(self._beat(heartbeat.member()))
        return self

    async def _beat(self, name: str) -> None:
        """Announce this process in Redis so the API's health check can count live workers."""
        client = redis_clients.async_client(self.settings, "mediagen-beat", timeout=5)
        try:
            while True:
                try:
                    now = time.time()
                    async with client.pipeline(transaction=False) as pipe:
                        pipe.zadd(WORKERS, {name: now})
                        pipe.zremrangebyscore(WORKERS, "-inf", now - GONE_AFTER)
                        await pipe.execute()
                except Exception as exc:  # the broker being down is reported by health
                    log.debug("heartbeat failed: %s", exc)
                await asyncio.sleep(HEARTBEAT_TTL / 3)
        finally:
            with contextlib.suppress(Exception):  # stopping: say so, if Redis still answers
                await client.zrem(WORKERS, name)
            await client.aclose()

    async def step(self, coro: Coroutine[Any, Any, Next | None]) -> None:
        """Run a pipeline step, publish the step it asks for next, and wait until everything it
        announced has been sent."""
        following = await coro
        if following is not None:
            self.outbox.send(following.task())
        await self.outbox.flush()

    # --- what each task does (the Celery tasks of `mediagen.*.tasks` run these on the loop) ---
    async def start(self, job_id: str) -> None:
        """Begin (or retry) a job's generation."""
        await self.step(self.pipeline.start(job_id))

    async def poll(self, job_id: str, attempt: int) -> None:
        """Look once at a running prediction."""
        await self.step(self.pipeline.poll(job_id, attempt))

    async def cancel_upstream(self, prediction_id: str) -> None:
        """Stop a canceled job's prediction upstream (best effort: the job is canceled)."""
        await self.pipeline.cancel_upstream(prediction_id)
        await self.outbox.flush()

    async def sweep(self) -> int:
        """Re-dispatch stranded jobs (`mediagen.jobs.sweeper`) and lost webhook deliveries;
        how many."""
        jobs = await sweep_jobs(self.pipeline)
        deliveries = await stranded_deliveries(self.settings)
        for delivery_id in deliveries:
            self.outbox.send(delivery_task(delivery_id))
        metrics.sweeper_rescued("delivery", len(deliveries))
        await self.outbox.flush()
        return jobs + len(deliveries)

    async def settle(self, batch_id: str) -> None:
        """Mark the batch finished if it is (once), and deliver its webhook."""
        try:  # first: a job that ends from now on sends another look (SETTLE_PENDING)
            await self.outbox.client.delete(settle_marker(batch_id))
        except RedisError as exc:  # it expires; the sweeper settles what is left
            log.warning("batch %s: settle marker not deleted: %s", batch_id, exc)
        _, deliveries = await batches.settle(batch_id)
        for delivery_id in deliveries:
            self.outbox.send(delivery_task(delivery_id))
        await self.outbox.flush()

    async def deliver(self, delivery_id: str, deferred: int = 0) -> None:
        """Start a webhook delivery's attempt on the loop; a slow receiver holds no thread."""
        self.deliverer.submit(delivery_id, deferred)

    def tasks(self) -> dict[str, Callable[..., Coroutine[Any, Any, Any]]]:
        """Each task's work by the task's name."""
        return {
            START: self.start,
            POLL: self.poll,
            CANCEL_UPSTREAM: self.cancel_upstream,
            SWEEP: self.sweep,
            SETTLE_TASK: self.settle,
            DELIVER_TASK: self.deliver,
        }

    async def close(self, database: bool = True) -> None:
        """Stop the heartbeat and close everything, the database pool too unless `database`
        is False (a test's loop shares it)."""
        self._heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._heartbeat
        await self.watcher.stop()
        await self.deliverer.close()
        await self.outbox.close()
        await self.outbox.client.aclose()
        await self.providers.close()
        await self.outbound.close()
        await self.storage.close()
        if database:
            await close_db()
