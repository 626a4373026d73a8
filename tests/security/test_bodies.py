"""A body over MAX_BODY_BYTES is read only for a caller with a valid key: `POST /api/v1/batches`
allows more (MAX_BATCH job requests), but a caller without a key, or with a bad one, is refused
before the body is read (413, or 401 where a key is required), so it cannot make the API buffer
and parse megabytes of JSON."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

from tests.stack import app, new_key, revoke_key

LIMIT = 1024  # MAX_BODY_BYTES (its least); the batch limit is 100 times that
ENV = {"MAX_BODY_BYTES": str(LIMIT), "AUTH_REQUIRED": "false"}
CHUNK = 256


def _batch() -> bytes:
    tag = uuid.uuid4().hex
    jobs = [{"prompt": f"{tag} {'x' * 900}", "parameters": {"width": 64, "height": 64}}
            for _ in range(8)]
    body = json.dumps({"jobs": jobs}).encode()
    assert 4 * LIMIT < len(body) < 100 * LIMIT
    return body


class Sent:
    """A request body sent chunk by chunk as the application asks for it, counted."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), CHUNK):
            self.read += CHUNK
            yield self.body[start:start + CHUNK]


async def test_only_a_key_may_send_a_body_over_max_body_bytes(database: str) -> None:
    body = _batch()
    secret = await new_key("large-bodies")
    json_type = {"Content-Type": "application/json"}
    try:
        async with app(ENV) as client:
            # Announced (Content-Length): refused before a byte of it is read.
            announced = Sent(body)
            refused = await client.post("/api/v1/batches", content=announced, headers={
                **json_type, "Content-Length": str(len(body))})
            assert refused.status_code == 413, refused.text
            assert refused.json()["code"] == "payload_too_large"
            assert announced.read == 0
            # Chunked: refused once MAX_BODY_BYTES has come, not after the whole body.
            chunked = Sent(body)
            refused = await client.post("/api/v1/batches", content=chunked, headers=json_type)
            assert refused.status_code == 413, refused.text
            assert chunked.read <= LIMIT + CHUNK
            # A bad key: 401, unread.
            bad = Sent(body)
            refused = await client.post("/api/v1/batches", content=bad, headers={
                **json_type, "Content-Length": str(len(body)),
                "Authorization": "Bearer mg_not-a-key"})
            assert refused.status_code == 401, refused.text
            assert bad.read == 0
            # A valid key: the larger limit applies, announced or chunked.
            for content, extra in ((body, {}), (Sent(body), {})):
                accepted = await client.post("/api/v1/batches", content=content, headers={
                    **json_type, **extra, "Authorization": f"Bearer {secret}"})
                assert accepted.status_code == 201, accepted.text
                assert accepted.json()["size"] == 8
            # A body within MAX_BODY_BYTES needs no key (the route decides as before).
            small = {"jobs": [{"prompt": "small", "parameters": {"width": 64, "height": 64}}]}
            assert (await client.post("/api/v1/batches", json=small)).status_code == 201
        async with app({**ENV, "AUTH_REQUIRED": "true"}) as client:
            keyless = Sent(body)
            refused = await client.post("/api/v1/batches", content=keyless, headers={
                **json_type, "Content-Length": str(len(body))})
            assert refused.status_code == 401, refused.text
            assert keyless.read == 0
    finally:
        await revoke_key(secret[:11])
