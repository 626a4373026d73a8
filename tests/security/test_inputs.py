"""A key holder cannot override the validated prompt through `parameters`, nor run a model the
operator did not allow."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import start_api


@pytest.fixture(scope="module")
def models_api(database: str) -> Iterator[str]:
    proc, url = start_api("api-models", {"ALLOWED_MODELS": "acme/*, other/one:*"})
    yield url
    proc.stop()


async def test_parameters_cannot_replace_the_prompt(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/generate", json={
        "prompt": "a short prompt", "parameters": {"prompt": "x" * 10_000}})
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "validation_error" and "'prompt' is reserved" in body["detail"]


async def test_only_allowed_models_run(client: httpx.AsyncClient, models_api: str) -> None:
    # Default: the default model only.
    refused = await client.post("/api/v1/generate", json={"prompt": "p", "model": "evil/miner"})
    assert refused.status_code == 422
    assert refused.json()["code"] == "model_not_allowed"
    assert refused.json()["allowed"] == ["black-forest-labs/flux-schnell"]
    default = await client.post("/api/v1/generate", json={
        "prompt": "p", "model": "black-forest-labs/flux-schnell",
        "parameters": {"width": 64, "height": 64}})
    assert default.status_code == 201, default.text

    async with httpx.AsyncClient(base_url=models_api) as configured:
        for model, code in (("acme/painter", 201), ("acme/painter:" + "a" * 64, 201),
                            ("other/one:" + "b" * 64, 201), ("other/one", 422),
                            ("evil/miner", 422), ("b" * 64, 422)):
            response = await configured.post("/api/v1/generate", json={
                "prompt": "p", "model": model, "parameters": {"width": 64, "height": 64}})
            assert response.status_code == code, (model, response.text)
            if code == 422:
                assert "acme/*" in response.json()["detail"]
