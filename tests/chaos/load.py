"""The client side: POST jobs over real HTTP and remember every answer and how long it took.

An answer is what promise 1 is about: 201 means the job must exist and run; while Postgres is
down it must be 503 (not 500, not a hang: a request still unanswered after `TIMEOUT` seconds is
recorded as "timeout"). Shared by the chaos suite and the multi-host rehearsal
(tests/rehearsal), which sends a steady rate from an address of its own, with headers
(`Idempotency-Key`) and retries on more answers.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    retry_after: str | None = None  # the answer's Retry-After header
    code: str | None = None  # an error answer's `code` (mediagen's error shape)

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def unavailable(post: Post) -> bool:
    """A 503 or no answer at all: neither created a job (without an Idempotency-Key, nothing
    else is safe to send again)."""
    return post.status == 503 or str(post.status).startswith("error")


class Load:
    """Submits jobs `index -> prompt`. With `retry`, an answer `retryable` says is worth
    another try (by default `unavailable`) is retried after a second (as a client honouring
    Retry-After would), so a scenario still gets its jobs in; every attempt stays recorded in
    `posts` and is judged. `headers(index)`: the request's own headers (the same for each of
    its attempts); `local_address`: the address the client's connections come from."""

    def __init__(
        self,
        api_url: str,
        prompt: Callable[[int], str],
        retry: bool,
        body: Callable[[int], dict[str, Any]] | None = None,
        *,
        headers: Callable[[int], dict[str, str]] | None = None,
        retryable: Callable[[Post], bool] = unavailable,
        local_address: str | None = None,
    ) -> None:
        self.api_url, self.prompt, self.retry, self.body = api_url, prompt, retry, body
        self.headers, self.retryable = headers, retryable
        self.posts: list[Post] = []
        self.accepted: dict[str, int] = {}  # job id -> index
        transport = httpx.AsyncHTTPTransport(local_address=local_address)
        self._client = httpx.AsyncClient(
            base_url=api_url,
            timeout=TIMEOUT,
            limits=httpx.Limits(max_connections=CONCURRENCY * 2),
            transport=transport,
        )
        self._slots = asyncio.Semaphore(CONCURRENCY)

    async def close(self) -> None:
        await self._client.aclose()

    async def _once(self, index: int) -> Post:
        started = time.time()
        body = {"prompt": self.prompt(index), "parameters": {"width": 512, "height": 512}}
        if self.body is not None:  # e.g. S10: a `model` and its parameters
            body = {"prompt": self.prompt(index), **self.body(index)}
        headers = self.headers(index) if self.headers is not None else None
        try:
            response = await self._client.post("/api/v1/generate", json=body, headers=headers)
        except httpx.TimeoutException:
            post = Post(index, started, time.time(), "timeout")
        except httpx.HTTPError as exc:
            post = Post(index, started, time.time(), f"error: {type(exc).__name__}")
        else:
            answer = _json(response)
            job_id = answer.get("job_id") if response.status_code == 201 else None
            post = Post(index, started, time.time(), response.status_code, job_id)
            post.retry_after = response.headers.get("retry-after")
            if response.status_code >= 400 and isinstance(answer.get("code"), str):
                post.code = answer["code"]
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
            if not self.retryable(post):
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

    async def steady(self, rate: float, stop: asyncio.Event, first: int = 0) -> int:
        """Job `first`, `first + 1`, ... at `rate` per second until `stop` is set; returns once
        every one of them has its final answer, with the number submitted."""
        start, index, pending = time.monotonic(), first, set()
        while not stop.is_set():
            pending.add(asyncio.create_task(self.submit(index)))
            index += 1
            pending = {task for task in pending if not task.done()}
            wait = start + (index - first) / rate - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
        await asyncio.gather(*pending)
        return index - first


def _json(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or {} (a load balancer's own error page may be anything)."""
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}
