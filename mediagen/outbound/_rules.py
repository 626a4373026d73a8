"""What an HTTP status means for the caller, and when the other side asks us to come back."""

from __future__ import annotations

import email.utils
import math
from datetime import UTC, datetime
from typing import Literal

RETRYABLE = frozenset({408, 425, 429})


def classify(status: int) -> Literal["ok", "retry", "fail"]:
    """2xx succeeded; 408, 425, 429 and 5xx may pass if tried again; anything else will not."""
    if 200 <= status < 300:
        return "ok"
    if status in RETRYABLE or status >= 500:
        return "retry"
    return "fail"


def retry_after(value: str | None, cap: float | None = None) -> float | None:
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
