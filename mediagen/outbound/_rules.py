"""What an HTTP status means for the caller (when to come back: `mediagen.retry`)."""

from __future__ import annotations

from typing import Literal

RETRYABLE = frozenset({408, 425, 429})


def classify(status: int) -> Literal["ok", "retry", "fail"]:
    """2xx succeeded; 408, 425, 429 and 5xx may pass if tried again; anything else will not."""
    if 200 <= status < 300:
        return "ok"
    if status in RETRYABLE or status >= 500:
        return "retry"
    return "fail"
