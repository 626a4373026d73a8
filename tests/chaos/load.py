"""The client side: POST jobs over real HTTP and remember every answer and how long it took.

An answer is what promise 1 is about: 201 means the job must exist and run; while Postgres is
down it must be 503 (not 500, not a hang: a request still unanswered after `TIMEOUT` seconds is
recorded as "timeout").
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

TIMEOUT = 15.0  # longer than any honest answer takes, even with a dependency down
CONCURRENCY = 24
MAX_RETRIES = 30


@dataclass
class Post:
    """One HTTP attempt (a retried 503 is several)."""

    index: int
    started: float  # wall clock, comparable with the database's timestamps
    ended: float
    status: int | str  # HTTP status, or "timeout" / "error: ..."
    job_id: str | None = None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class Load:
    """Submits jobs `index -> prompt`. With `retry`, a 503 or a connection error is retried
    after a second (as a client honouring Retry-After would), so a scenario still gets its jobs
    in; every attempt stays recorded in `posts` and is judged."""

    def __init__(
        self,
        api_url: str,
        prompt: Callable[[int], str],
        retry: bool,
        body: Callable[[int], dict[str, Any]] | None = None,
    ) -> None:
        self.api_url, self.prompt, self.retry, self.body = api_url, prompt, retry, body
        self.posts: list[Post] = []
        self.accepted: dict[str, int] = {}  # job id -> index
        self._client = httpx.AsyncClient(
            base_url=api_url,
            timeout=TIMEOUT,
            limits=httpx.Limits(max_connections=CONCURRENCY * 2),
        )
        self._slots = asyncio.Semaphore(CONCURRENCY)

    async def close(self) -> None:
        await self._client.aclose()

    async def _once(self, index: int) -> Post:
        started = time.time()
        body = {"prompt": self.prompt(index), "parameters": {"width": 512, "height": 512}}
        if self.body is not None:  # e.g. S10: a `model` and its parameters
            body = {"prompt": self.prompt(index), **self.body(index)}
        try:
            response = await self._client.post("/api/v1/generate", json=body)
        except httpx.TimeoutException:
            post = Post(index, started, time.time(), "timeout")
        except httpx.HTTPError as exc:
            post = Post(index, started, time.time(), f"error: {type(exc).__name__}")
        else:
            job_id = response.json().get("job_id") if response.status_code == 201 else None
            post = Post(index, started, time.time(), response.status_code, job_id)
            if job_id:
                self.accepted[job_id] = index
        self.posts.append(post)
        return post

    async def once(self, index: int) -> Post:
        """POST job `index` once, whatever the answer."""
        async with self._slots:
            return await self._once(index)

    async def submit(self, index: int) -> Post:
        """POST job `index`, retrying (a bounded number of times, when asked to) a 503 or a
        connection error: neither created a job (a created job would show as unacknowledged)."""
        async with self._slots:
            post = await self._once(index)
        for _ in range(MAX_RETRIES if self.retry else 0):
            if post.status != 503 and not str(post.status).startswith("error"):
                break
            await asyncio.sleep(1.0)
            async with self._slots:
                post = await self._once(index)
        return post

    async def batch(self, indices: Iterable[int]) -> list[Post]:
        """All at once (as far as CONCURRENCY lets)."""
        return list(await asyncio.gather(*(self.submit(i) for i in indices)))

    async def stream(self, indices: list[int], seconds: float, rng: random.Random) -> None:
        """Spread over `seconds`, in random order, so faults land on jobs in every state."""
        order = list(indices)
        rng.shuffle(order)
        start = time.monotonic()
        step = seconds / max(1, len(order))

        async def one(slot: int, index: int) -> None:
            await asyncio.sleep(max(0.0, start + slot * step - time.monotonic()))
            await self.submit(index)

        await asyncio.gather(*(one(slot, index) for slot, index in enumerate(order)))
