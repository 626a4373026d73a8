"""Probes tell strangers whether the service is ready, not what is inside it; and probing does
not write to storage each time."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import TEST_ENV, free_port
from tests.stack import Stacks, app, create_key

REMOTE = {"X-Forwarded-For": "203.0.113.5"}  # as a proxy on this machine says of a remote client


async def test_livez_does_no_io(client: httpx.AsyncClient) -> None:
    """With Redis gone, the process is alive (restarting it would not help) but not ready."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    async with app({"REDIS_URL": dead}) as broken:
        live = await broken.get("/livez")
        ready = await broken.get("/readyz")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    assert ready.status_code == 503


async def test_failures_are_explained_only_to_key_holders_and_this_machine(
    client: httpx.AsyncClient, stacks: Stacks
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    _, key = await create_key("ops")
    # A live uvicorn: the application takes the client's address from X-Forwarded-For, the
    # connection being from this machine (FORWARDED_ALLOW_IPS' default, tests/deploy).
    with stacks.own({"REDIS_URL": dead}, worker=False, name="ready") as live:
        async with httpx.AsyncClient(base_url=live.url) as api:
            stranger = await api.get("/readyz", headers=REMOTE)
            old_name = await api.get("/api/v1/health", headers=REMOTE)
            operator = await api.get("/readyz", headers={**REMOTE,
                                                         "Authorization": f"Bearer {key}"})
            local = await api.get("/readyz")
    for response in (stranger, old_name):
        assert response.status_code == 503
        broker = response.json()["checks"]["broker"]
        assert broker["ok"] is False and broker["detail"] is None
        assert str(dead.split(":")[-1].split("/")[0]) not in response.text
    for response in (operator, local):
        assert response.status_code == 503
        assert response.json()["checks"]["broker"]["detail"]


async def test_probing_does_not_write_each_time(client: httpx.AsyncClient) -> None:
    """The storage check writes (and deletes) a probe object at most once per
    STORAGE_CHECK_SECONDS: the probe directory changes at most once over 20 calls."""
    probes = Path(TEST_ENV["LOCAL_STORAGE_PATH"]) / ".health"
    seen = set()
    for _ in range(20):
        health = await client.get("/api/v1/health")
        assert health.status_code == 200, health.text  # (which check failed, and why)
        seen.add(probes.stat().st_mtime_ns)
    assert len(seen) <= 2, f"the probe directory changed {len(seen)} times"
