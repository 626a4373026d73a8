"""The one outbound HTTP path, tested once against a real misbehaving server: the deadline covers
the whole exchange, bodies are read raw and capped, redirects follow the caller's policy, and
what a status or a Retry-After means."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mediagen.errors import OutboundError, RefusedAddressError
from mediagen.outbound import Outbound, Policy, classify
from tests.fakes.hostile import HostileServer

LOCAL = {"pin": True, "allow_hosts": ("127.0.0.1",)}


@pytest.fixture(scope="module")
def server() -> Iterator[HostileServer]:
    hostile = HostileServer().start()
    yield hostile
    hostile.stop()


async def test_the_deadline_covers_a_dripping_body(server: HostileServer) -> None:
    outbound = Outbound()
    started = time.monotonic()
    try:
        with pytest.raises(OutboundError, match=r"timed out after 1s") as caught:
            await outbound.call("GET", server.url("/drip"), Policy(deadline=1, max_bytes=10**7,
                                                                   **LOCAL))
    finally:
        await outbound.close()
    assert caught.value.retryable and time.monotonic() - started < 2


async def test_bodies_are_raw_and_capped(server: HostileServer) -> None:
    outbound = Outbound()
    try:
        reply = await outbound.call("GET", server.url("/gzip-bomb"),
                                    Policy(deadline=5, max_bytes=4096, truncate=True, **LOCAL))
        assert reply.status == 200 and len(reply.body) == 4096
        assert reply.body[:2] == b"\x1f\x8b"  # gzip as sent: never inflated
        with pytest.raises(OutboundError, match=r"exceeds 4096 bytes \(\d+ declared\)") as caught:
            await outbound.call("GET", server.url("/gzip-bomb"),
                                Policy(deadline=5, max_bytes=4096, **LOCAL))
        assert not caught.value.retryable
    finally:
        await outbound.close()


async def test_redirects_follow_the_policy(server: HostileServer) -> None:
    outbound = Outbound()
    once = server.url("/redirect?to=/ok")
    twice = server.url("/redirect?to=/redirect%3Fto%3D/ok")
    try:
        assert (await outbound.call("GET", once, Policy(deadline=5, max_bytes=100,
                                                        **LOCAL))).status == 302
        assert (await outbound.call("GET", once, Policy(deadline=5, max_bytes=100, redirects=1,
                                                        **LOCAL))).status == 204
        with pytest.raises(OutboundError, match="more than 1 redirects"):
            await outbound.call("GET", twice, Policy(deadline=5, max_bytes=100, redirects=1,
                                                     **LOCAL))
    finally:
        await outbound.close()


async def test_pinned_calls_refuse_what_is_not_public(server: HostileServer) -> None:
    outbound = Outbound()
    try:
        with pytest.raises(RefusedAddressError, match="non-public address"):
            await outbound.call("GET", server.url("/ok"), Policy(deadline=5, max_bytes=100))
        with pytest.raises(RefusedAddressError, match="not an http"):
            await outbound.call("GET", "file:///etc/passwd", Policy(deadline=5, max_bytes=100))
    finally:
        await outbound.close()


def test_what_a_status_means() -> None:
    assert [classify(s) for s in (200, 204, 301, 400, 404, 408, 425, 429, 500, 503)] == [
        "ok", "ok", "fail", "fail", "fail", "retry", "retry", "retry", "retry", "retry"]
