"""`/media` serves an output only through the signed, expiring URL the service gave its owner:
not by guessing the job id, not with the signature of another object, not after it expired."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import httpx

from mediagen.config import get_settings
from mediagen.storage.signing import load_signer
from tests.support import submit, unsigned, wait_terminal


async def test_only_signed_unexpired_urls_open_an_output(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, "a signed lighthouse", width=64, height=64, num_outputs=2)
    detail = await wait_terminal(client, job_id)
    url, other = (o["url"] for o in detail["outputs"])
    path = unsigned(url)
    assert (await client.get(url)).status_code == 200

    assert (await client.get(path)).status_code == 403  # knowing the job id is not enough
    query = parse_qs(urlsplit(url).query)
    expires, sig = query["expires"][0], query["sig"][0]
    tampered = sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")
    for bad in (f"{path}?expires={expires}&sig={tampered}",
                f"{path}?expires={int(expires) + 60}&sig={sig}",  # a later expiry, same sig
                f"{path}?{urlsplit(other).query}",  # the other output's signature
                f"{path}?expires={expires}&sig=%F1%AF%B5%B5N%C2%95"):  # not even ASCII
        response = await client.get(bad)
        assert response.status_code == 403, bad
        assert response.json()["code"] == "forbidden"

    settings = get_settings()
    signer = await load_signer(settings.media_signing_key.get_secret_value(), settings.media_url_ttl)
    key = path.removeprefix("/media/")
    expired = signer.query(key, now=time.time() - settings.media_url_ttl - 120)
    assert (await client.get(f"{path}?{expired}")).status_code == 403
    assert (await client.get(f"{path}?{signer.query(key)}")).status_code == 200
