"""Standard Webhooks verification, and the fake Replicate delivering signed webhooks for real."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook

from mediagen.config import Settings
from mediagen.providers.base import GenerationRequest
from mediagen.providers.replicate.provider import ReplicateProvider
from mediagen.providers.replicate.signatures import WebhookVerificationError, verify_webhook
from tests.fakes.replicate.state import new_secret
from tests.fakes.replicate_server import FakeReplicate

SECRET = new_secret()
BODY = json.dumps({"id": "p1", "status": "succeeded", "output": ["https://x/0.png"]}).encode()


def signed(
    body: bytes = BODY, secret: str = SECRET, at: float | None = None, message_id: str = "msg_1"
) -> dict[str, str]:
    when = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return {
        "Webhook-Id": message_id,
        "Webhook-Timestamp": str(int(when.timestamp())),
        "Webhook-Signature": Webhook(secret).sign(message_id, when, body.decode()),
    }


def test_valid_signature_returns_payload() -> None:
    assert verify_webhook(signed(), BODY, SECRET)["status"] == "succeeded"


def test_any_of_several_signatures_may_match() -> None:  # secret rotation sends two
    headers = signed()
    headers["Webhook-Signature"] = f"v1,AAAA {headers['Webhook-Signature']}"
    assert verify_webhook(headers, BODY, SECRET)["id"] == "p1"


# Headers are built when each test runs, not at collection: signed "now" must still be now
# when a long suite reaches these tests (a 5-minute-old signature is rightly "replayed").
REJECTED: dict[str, tuple[Callable[[], dict[str, str]], bytes, str]] = {
    "forged": (lambda: signed(secret=new_secret()), BODY, "no valid webhook signature"),
    "tampered": (signed, BODY.replace(b"succeeded", b"failed"), "no valid webhook signature"),
    "other-id": (lambda: signed(message_id="msg_2") | {"Webhook-Id": "msg_1"}, BODY, "no valid"),
    "too-old": (lambda: signed(at=time.time() - 301), BODY, "replayed"),
    "future": (lambda: signed(at=time.time() + 3600), BODY, "replayed"),
    "bad-ts": (lambda: signed() | {"Webhook-Timestamp": "yesterday"}, BODY,
               "invalid webhook-timestamp"),
    "garbage-sig": (lambda: signed() | {"Webhook-Signature": "garbage"}, BODY,
                    "no valid webhook signature"),
    "no-signature": (lambda: {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(int(time.time()))},
                     BODY, "missing"),
    "no-headers": (dict, BODY, "missing"),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_rejected(case: str) -> None:
    make_headers, body, match = REJECTED[case]
    with pytest.raises(WebhookVerificationError, match=match):
        verify_webhook(make_headers(), body, SECRET)


def test_tolerance_is_a_parameter() -> None:
    old = signed(at=time.time() - 600)
    assert verify_webhook(old, BODY, SECRET, tolerance=900)["id"] == "p1"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(signed(), BODY, "")


class Receiver:
    """A tiny HTTP server that records webhook deliveries, failing the first `fail_first`."""

    def __init__(self, fail_first: int = 0) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.fail_first > 0:
                    outer.fail_first -= 1
                    self.send_response(503)
                else:
                    outer.deliveries.append((dict(self.headers.items()), body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/replicate"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def statuses(self) -> list[str]:
        return [json.loads(body)["status"] for _, body in self.deliveries]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReplicate]:
    with FakeReplicate(latency=0.6, webhook_throttle=0.1) as server:
        yield server


@pytest.mark.parametrize("fail_first", [0, 2])
async def test_fake_delivers_signed_webhooks(fake: FakeReplicate, fail_first: int) -> None:
    receiver = Receiver(fail_first)
    settings = Settings(
        _env_file=None, replicate_api_token=fake.config.token, replicate_base_url=fake.url
    )
    provider = ReplicateProvider(settings)
    failed_before = fake.stats.webhooks_failed
    try:
        request = GenerationRequest("job-1", "a red fox", {}, webhook_url=receiver.url)
        prediction = await provider.create(request)
        deadline = time.monotonic() + 5
        while "succeeded" not in receiver.statuses():
            assert time.monotonic() < deadline, f"no completed webhook: {receiver.statuses()}"
            await asyncio.sleep(0.05)
    finally:
        await provider.close()
        receiver.server.shutdown()
    payloads = [
        verify_webhook(h, body, fake.config.webhook_secret) for h, body in receiver.deliveries
    ]
    assert {p["id"] for p in payloads} == {prediction.id}
    statuses = receiver.statuses()
    assert statuses[-1] == "succeeded" and statuses.count("succeeded") == 1
    if fail_first:
        assert fake.stats.webhooks_failed - failed_before == fail_first
    else:  # start, then logs while processing, in order
        assert statuses[0] == "starting" and "processing" in statuses
        assert payloads[-1]["output"] and "100%" in payloads[-1]["logs"]
