"""Every kind of bad input gets a 4xx JSON error that says what is wrong, never a 500."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest

from mediagen.jobs.models import Job

GOOD = {"prompt": "a tree", "parameters": {"width": 64, "height": 64}}


def with_params(**params: Any) -> dict[str, Any]:
    return {"prompt": "a tree", "parameters": {"width": 64, "height": 64, **params}}


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("missing prompt", {"parameters": {}}, "prompt: Field required"),
    ("blank prompt", {"prompt": "   "}, "prompt: Value error, must not be blank"),
    ("prompt not a string", {"prompt": 42}, "prompt: Input should be a valid string"),
    ("prompt too long", {"prompt": "x" * 2001}, "must be at most 2000 characters"),
    ("prompt with NUL", {"prompt": "a\x00b"}, "must not contain NUL"),
    ("unknown top-level key", {**GOOD, "colour": "red"}, "colour: Extra inputs are not permitted"),
    ("parameters not an object", {"prompt": "a", "parameters": [1]}, "parameters: Input should be"),
    ("width too small", with_params(width=32), "parameters.width: Value error, must be between 64 and 2048"),
    ("width too large", with_params(width=4096), "must be between 64 and 2048"),
    ("width not multiple of 8", with_params(width=100), "must be a multiple of 8"),
    ("width huge int", with_params(width=2**63), "parameters.width"),
    ("width a string", with_params(width="wide"), "parameters.width: Input should be a valid integer"),
    ("height fractional", with_params(height=64.5), "parameters.height"),
    ("steps zero", with_params(num_inference_steps=0), "num_inference_steps: Input should be greater than or equal to 1"),
    ("steps too many", with_params(num_inference_steps=151), "less than or equal to 150"),
    ("negative seed", with_params(seed=-1), "parameters.seed"),
    ("seed too big", with_params(seed=2**40), "parameters.seed"),
    ("bad format", with_params(output_format="gif"), "parameters.output_format"),
    ("too many outputs", with_params(num_outputs=9), "parameters.num_outputs"),
    ("extra param bad name", with_params(**{"bad name": 1}), "is not an identifier"),
    ("extra param nested object", with_params(style={"a": 1}), "must be a scalar or a list"),
    ("too many params", with_params(**{f"p{i}": i for i in range(39)}), "at most 40 parameters"),
    ("bad model", {**GOOD, "model": "not a model!"}, "model: Value error"),
    ("body is a list", [GOOD], "Input should be a valid dictionary"),
    ("body is null", None, "Field required"),
]


@pytest.mark.parametrize(("case", "body", "expected"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_body_is_422_with_reason(client: httpx.AsyncClient, case: str, body: Any,
                                           expected: str) -> None:
    before = await Job.all().count()
    response = await client.post("/api/v1/generate", json=body)
    assert response.status_code == 422, response.text
    payload = response.json()
    assert payload["code"] == "validation_error"
    assert expected in payload["detail"], payload
    assert payload["errors"] and all("loc" in e and "msg" in e for e in payload["errors"])
    assert await Job.all().count() == before  # nothing half-written


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/generate", content=b'{"prompt": ',
                                 headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "JSON decode error" in response.json()["detail"]


async def test_wrong_content_type_is_4xx(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/generate", content=b"prompt=hi",
                                 headers={"content-type": "application/x-www-form-urlencoded"})
    assert 400 <= response.status_code < 500
    assert "detail" in response.json()


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    body = {"prompt": "a", "parameters": {"negative_prompt": "x" * 70_000}}
    response = await client.post("/api/v1/generate", json=body)
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def test_oversized_chunked_body_is_413(api: str) -> None:
    """No Content-Length: the limit is enforced while the body arrives."""
    host, port = api.removeprefix("http://").split(":")
    chunk = b"x" * 1024
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(100)) + b"0\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/generate HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + body)
        reply = b""
        while chunk := sock.recv(4096):  # the server closes after answering
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"payload_too_large" in reply


@pytest.mark.parametrize("job_id", ["nope", "1", "123e4567-e89b-12d3-a456", "%00", "9" * 40])
async def test_malformed_job_id_is_422(client: httpx.AsyncClient, job_id: str) -> None:
    for path in (f"/api/v1/status/{job_id}", f"/api/v1/jobs/{job_id}"):
        response = await client.get(path)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["code"] == "validation_error"


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/nothing")).status_code == 404
    response = await client.get("/api/v1/generate")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


@pytest.mark.parametrize(("path", "key", "unsigned_status"), [
    ("/media/../../etc/passwd", None, 404),  # the client resolves the dots: /etc/passwd
    ("/media/%2e%2e/%2e%2e/etc/passwd", "../../etc/passwd", 403),
    ("/media/..%2f..%2fetc%2fpasswd", "../../etc/passwd", 403),
    ("/media/", ".", 403),
])
async def test_media_never_leaves_storage_root(client: httpx.AsyncClient, path: str,
                                               key: str | None, unsigned_status: int) -> None:
    """Unsigned: refused before anything is looked up. Signed with the service's own key (as
    if it had been tricked into signing it): still nothing outside the storage root."""
    from mediagen.config import get_settings
    from mediagen.storage.signing import load_signer

    response = await client.get(path)
    assert response.status_code == unsigned_status
    assert b"root:" not in response.content
    if key is not None:
        settings = get_settings()
        signer = await load_signer(settings.media_signing_key.get_secret_value(), settings.media_url_ttl)
        signed = await client.get(f"{path}?{signer.query(key)}")
        assert signed.status_code == 404
        assert b"root:" not in signed.content


async def test_unknown_parameters_pass_through_to_the_job(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/generate", json=with_params(lora_scale=0.8,
                                                                      tags=["a", "b"]))
    assert response.status_code == 201
    job = (await client.get(f"/api/v1/jobs/{response.json()['job_id']}")).json()
    assert job["parameters"]["lora_scale"] == 0.8
    assert job["parameters"]["tags"] == ["a", "b"]
