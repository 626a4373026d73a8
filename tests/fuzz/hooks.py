"""schemathesis hooks (loaded through SCHEMATHESIS_HOOKS by tests/fuzz).

An Idempotency-Key is a promise that the same key means the same request: a fuzzer reusing one
key for different bodies gets the 422 it deserves. Valid keys are made unique per generated
request, so the positive-data check stays strict for the body; invalid keys are left alone so
their rejection is still tested. Replay, mismatch and conflict have tests of their own.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import schemathesis

_VALID = re.compile(r"^[\x21-\x7e]{1,255}$")


@schemathesis.hook
def map_headers(context: Any, headers: dict[str, Any] | None) -> dict[str, Any] | None:
    if headers:
        for name, value in list(headers.items()):
            if name.lower() == "idempotency-key" and isinstance(value, str) and _VALID.match(value):
                headers[name] = f"fuzz-{uuid.uuid4().hex}"
    return headers
