"""Webhook delivery for the fake Replicate: one timer loop over a heap of due times.

No task sleeps per prediction: the loop wakes every 20 ms and looks only at predictions whose
next event is due (start at creation, logs every `webhook_throttle`, completed at the end).
Each delivery is a short task, chained after the previous one of the same prediction so events
arrive in order, signed per Standard Webhooks and retried `webhook_retries` times.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from httpx_aiohttp import AiohttpTransport
from standardwebhooks import Webhook

from tests.fakes.replicate.state import TERMINAL, FakePrediction

if TYPE_CHECKING:
    from tests.fakes.replicate.app import FakeState


class WebhookDispatcher:
    def __init__(self, state: FakeState) -> None:
        self.state = state
        self.heap: list[tuple[float, int, str]] = []
        self.seq = itertools.count()
        self.chains: dict[str, asyncio.Task[None]] = {}
        self.client: httpx.AsyncClient | None = None
        self.limit: asyncio.Semaphore | None = None

    def schedule(self, prediction: FakePrediction, due: float) -> None:
        if prediction.webhook:
            heapq.heappush(self.heap, (due, next(self.seq), prediction.id))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self.limit = asyncio.Semaphore(200)  # made here: bound to the server's loop
        limits = httpx.Limits(max_connections=200)  # aiohttp's pool: httpcore's thrashes at 1000
        async with httpx.AsyncClient(
            timeout=5.0, transport=AiohttpTransport(limits=limits)
        ) as self.client:
            loop = asyncio.create_task(self._loop())
            try:
                yield
            finally:
                loop.cancel()
                for task in [loop, *self.chains.values()]:
                    task.cancel()
                await asyncio.gather(loop, *self.chains.values(), return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            now = time.time()
            while self.heap and self.heap[0][0] <= now:
                _, _, prediction_id = heapq.heappop(self.heap)
                prediction = self.state.predictions.get(prediction_id)
                if prediction is not None and not prediction.hook_done:
                    self._tick(prediction, now)

    def _tick(self, prediction: FakePrediction, now: float) -> None:
        config = self.state.config
        snapshot = prediction.to_json(config, now)
        if "start" in prediction.events and not prediction.sent_start:
            prediction.sent_start = True
            self._send(prediction, snapshot)
        if snapshot["status"] in TERMINAL:
            prediction.hook_done = True
            self._send(prediction, snapshot)
            return
        wants_logs = "logs" in prediction.events
        throttled = now - prediction.last_sent < config.webhook_throttle
        if wants_logs and snapshot["logs"] != prediction.sent_logs and not throttled:
            prediction.sent_logs, prediction.last_sent = snapshot["logs"], now
            self._send(prediction, snapshot)
        due = [prediction.ends_at] if prediction.ends_at is not None else []
        if wants_logs:
            due.append(now + config.webhook_throttle)
        if due:
            self.schedule(prediction, min(due))

    def _send(self, prediction: FakePrediction, payload: dict[str, Any]) -> None:
        assert prediction.webhook is not None
        previous = self.chains.get(prediction.id)
        task = asyncio.create_task(self._deliver(prediction.webhook, payload, previous))
        self.chains[prediction.id] = task

        def forget(done: asyncio.Task[None], key: str = prediction.id) -> None:
            if self.chains.get(key) is done:
                del self.chains[key]

        task.add_done_callback(forget)

    async def _deliver(
        self, url: str, payload: dict[str, Any], previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        assert self.client is not None and self.limit is not None
        stats, config = self.state.stats, self.state.config
        body = json.dumps(payload)
        message_id = f"msg_{secrets.token_hex(12)}"
        for attempt in range(config.webhook_retries + 1):
            now = datetime.now(UTC)
            headers = {
                "content-type": "application/json",
                "webhook-id": message_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": Webhook(config.webhook_secret).sign(message_id, now, body),
            }
            try:
                async with self.limit:
                    response = await self.client.post(url, content=body, headers=headers)
                if response.is_success:
                    stats.webhooks_delivered += 1
                    return
            except httpx.HTTPError:
                pass
            stats.webhooks_failed += 1
            await asyncio.sleep(0.1 * 2**attempt)
