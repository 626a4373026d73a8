"""When the server tries again: one policy for every retry it schedules.

A job's next attempt (`mediagen.jobs.pipeline`), an upstream cancel that failed, and a client
webhook delivery (`mediagen.notify.delivery`) each wait a backoff before trying again, and at
least what the other side's `Retry-After` asked for, up to a cap (a `Retry-After` of a day must
not park a job for a day). `parse_retry_after` reads the header, in seconds or as an HTTP date.

- jobs: RETRY_DELAY x 2^n, at most RETRY_MAX_DELAY, +-10% jitter so a herd spreads out;
  `Retry-After` honoured up to RETRY_MAX_DELAY.
- webhook deliveries: WEBHOOK_RETRY_DELAY x (1, 6, 24, 120, 360, 720) (5 s .. 1 h by default);
  `Retry-After` honoured up to an hour.
- a webhook delivery put off, not attempted (`mediagen.notify.deliverer`: its key or receiver
  has its share of the worker's slots, or the receiver's circuit is open): 1 s, doubling each
  time the same delivery is put off again, at most 30 s, +-50%; at least until the circuit may
  close (WEBHOOK_CIRCUIT_COOLDOWN at most).

The broker must hold a message as long as the longest of these waits (`longest_countdown`).
The Python client, which cannot import the server, keeps a policy of its own.
"""

from __future__ import annotations

import email.utils
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime

from mediagen.config import Settings

WEBHOOK_SCHEDULE = (1, 6, 24, 120, 360, 720)  # multiples of WEBHOOK_RETRY_DELAY
WEBHOOK_MAX_RETRY_AFTER = 3600.0
WEBHOOK_DEFER = 1.0  # a delivery put off (not attempted) waits about this long, doubling...
WEBHOOK_MAX_DEFER = 30.0  # ...up to this
MAX_POLL_WAIT = 60.0  # the longest a running prediction waits for its next look


@dataclass(frozen=True)
class RetryPolicy:
    """Waits before retry n+1 (n = the retries so far): `base` x the n-th step (`schedule`,
    its last repeating; doubling when there is none), at most `max_delay`, spread by
    +-`jitter`; never less than a `Retry-After`, which counts up to `max_retry_after`."""

    base: float
    max_delay: float = math.inf
    max_retry_after: float = math.inf
    schedule: tuple[float, ...] = ()
    jitter: float = 0.0

    def backoff(self, retries_so_far: int) -> float:
        if self.schedule:
            step = self.schedule[min(retries_so_far, len(self.schedule) - 1)]
        else:
            step = 2.0 ** min(retries_so_far, 64)
        delay = min(self.max_delay, self.base * step)
        if self.jitter:
            delay = min(self.max_delay, delay * random.uniform(1 - self.jitter, 1 + self.jitter))
        return float(delay)

    def delay(self, retries_so_far: int, retry_after: float | None = None) -> float:
        """Seconds before the next try: the backoff, or the `Retry-After` (capped) if longer."""
        return self.at_least(self.backoff(retries_so_far), retry_after)

    def at_least(self, wait: float, retry_after: float | None) -> float:
        """`wait`, or the `Retry-After` (capped) if longer."""
        if retry_after:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait

    @property
    def longest(self) -> float:
        """The longest wait this policy can give."""
        longest = self.base * max(self.schedule) if self.schedule else self.max_delay
        return max(min(longest, self.max_delay), min(self.max_retry_after, self.max_delay))


def jobs(settings: Settings) -> RetryPolicy:
    """A job's next attempt, and a failed upstream cancel's."""
    return RetryPolicy(
        settings.retry_delay,
        max_delay=settings.retry_max_delay,
        max_retry_after=settings.retry_max_delay,
        jitter=0.1,
    )


def webhooks(settings: Settings) -> RetryPolicy:
    """A client webhook delivery's next attempt."""
    return RetryPolicy(
        settings.webhook_retry_delay,
        max_retry_after=WEBHOOK_MAX_RETRY_AFTER,
        schedule=WEBHOOK_SCHEDULE,
    )


def webhook_deferrals(settings: Settings) -> RetryPolicy:
    """A webhook delivery put off without an attempt (n = the times it was put off before); the
    `Retry-After` is how long the receiver's circuit stays open."""
    return RetryPolicy(
        WEBHOOK_DEFER,
        max_delay=WEBHOOK_MAX_DEFER,
        max_retry_after=settings.webhook_circuit_cooldown,
        jitter=0.5,
    )


def longest_countdown(settings: Settings) -> float:
    """The longest delay any task message is scheduled with (the broker must hold it)."""
    return max(
        jobs(settings).longest,
        webhooks(settings).longest,
        settings.webhook_circuit_cooldown,  # a delivery put off while its circuit is open
        MAX_POLL_WAIT,
    )


def parse_retry_after(value: str | None, cap: float | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), at most `cap`;
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    seconds: float | None = None
    try:
        seconds = float(value)
        if not math.isfinite(seconds):
            return None
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    seconds = max(0.0, seconds)
    return min(seconds, cap) if cap is not None else seconds
