"""The one retry policy of the server: job attempts, upstream cancels, webhook deliveries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from mediagen import retry
from mediagen.config import Settings
from mediagen.notify.delivery import MAX_ATTEMPTS


def test_job_backoff_is_exponential_capped_and_jittered() -> None:
    settings = Settings(_env_file=None, retry_delay=60, retry_max_delay=300)  # type: ignore[call-arg]
    backoff = retry.jobs(settings).backoff
    assert 54 <= backoff(0) <= 66
    assert 108 <= backoff(1) <= 132
    assert 216 <= backoff(2) <= 264
    assert backoff(3) <= 300 and backoff(10) <= 300
    assert len({backoff(1) for _ in range(20)}) > 1


def test_a_job_honours_retry_after_up_to_its_longest_delay() -> None:
    policy = retry.jobs(Settings(_env_file=None, retry_delay=1, retry_max_delay=300))  # type: ignore[call-arg]
    assert policy.at_least(0.0, 90) == 90
    assert policy.at_least(0.0, 10**6) == 300
    assert policy.at_least(5.0, None) == 5.0


def test_the_webhook_retry_schedule() -> None:
    delay = retry.webhooks(Settings(webhook_retry_delay=5)).delay
    assert [delay(n - 1) for n in range(1, MAX_ATTEMPTS)] == [5, 30, 120, 600, 1800, 3600]
    assert delay(0, retry_after=90) == 90  # Retry-After, when longer
    assert delay(0, retry_after=10**6) == 3600  # capped at 1 h
    assert delay(3, retry_after=1) == 600


def test_retry_after_in_seconds_or_as_a_date() -> None:
    retry_after = retry.parse_retry_after
    assert retry_after("7") == 7.0
    assert retry_after("-3") == 0.0
    assert retry_after("3600", cap=60) == 60
    assert retry_after(None) is None and retry_after("soon") is None and retry_after("nan") is None
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after(when) or 0) <= 30
