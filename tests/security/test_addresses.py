"""Outbound calls reach public addresses only, by one explicit list that does not depend on the
Python version, with the IPv4 address inside IPv6 transition forms judged as itself; and a
refusal never tells the caller which address it found."""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from mediagen.config import Settings
from mediagen.errors import PermanentProviderError
from mediagen.outbound import is_public
from mediagen.providers.base import Output
from mediagen.providers.replicate.provider import ReplicateProvider
from tests.fakes.hostile import HostileServer
from tests.stack import new_key

REFUSED = [
    # IPv4 special-purpose registry
    "0.0.0.0", "10.0.0.1", "100.64.0.1", "127.0.0.1", "169.254.169.254", "172.16.0.1",
    "192.0.0.8", "192.0.2.1", "192.31.196.1", "192.52.193.1", "192.88.99.1", "192.168.1.1",
    "192.175.48.1", "198.18.0.1", "198.51.100.1", "203.0.113.1", "224.0.0.1", "240.0.0.1",
    "255.255.255.255",
    # IPv6, and private IPv4 inside every transition form
    "::", "::1", "::127.0.0.1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:0:127.0.0.1",
    "64:ff9b::127.0.0.1", "64:ff9b::169.254.169.254", "64:ff9b:1::a00:1",
    "2002:7f00:1::1", "2002:a9fe:a9fe::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "2001:db8::1", "3fff::1", "fec0::1", "fe80::1", "fc00::1", "fd12::1", "ff02::1",
    "100::1", "5f00::1", "2620:4f:8000::1",
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8",
           "64:ff9b::8.8.8.8", "2002:808:808::1"]


@pytest.mark.parametrize("address", REFUSED)
def test_special_purpose_addresses_are_refused(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("host", ["[::ffff:127.0.0.1]", "[::127.0.0.1]", "[64:ff9b::7f00:1]",
                                  "[2002:7f00:1::1]", "127.0.0.1", "localhost"])
async def test_an_output_url_inside_is_refused_without_naming_it(
    hostile: HostileServer, host: str
) -> None:
    """What Replicate says to download is fetched only from public addresses (the hostile
    server, listening on loopback, stands for anything inside)."""
    provider = ReplicateProvider(Settings(_env_file=None, replicate_api_token="t"))  # type: ignore[call-arg]
    try:
        with pytest.raises(PermanentProviderError) as refused:
            async with provider.fetch(Output(url=f"http://{host}:{hostile.port}/ok")):
                pytest.fail("an inside address was fetched")
    finally:
        await provider.close()
    message = str(refused.value)
    assert "non-public address" in message or "not an http(s) URL" in message
    for leak in ("127.0.0.1", "::1", "7f00", "ffff"):
        assert leak not in message.replace(host.strip("[]"), ""), message  # only what it gave


async def test_a_webhook_inside_is_refused_without_naming_the_address(
    client: httpx.AsyncClient,
) -> None:
    key = await new_key("webhook-inside")
    response = await client.post("/api/v1/generate", headers={"Authorization": f"Bearer {key}"},
                                 json={"prompt": "p", "webhook": "http://localhost:9/hook"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "non-public address" in detail
    assert "127.0.0.1" not in detail and "::1" not in detail
