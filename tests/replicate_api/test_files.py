"""`/v1/files`, Replicate's files API over mediagen's input files, driven by the official Python
client (`replicate==1.0.7`): `files.create/get/list/delete`, and `run`/`predictions.create` with
an open file under its default file encoding strategy, which uploads the file to `POST
/v1/files` and sends the returned `urls.get` as the input. The prediction must use that upload
(the key's own, never fetched: the worker may not fetch from 127.0.0.1 at all), and show the
same URL as its input."""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
from PIL import Image
from replicate.exceptions import ReplicateError

from tests.files.images import mean_color, png
from tests.replicate_api.conftest import Stack, job_detail
from tests.replicate_api.test_python_client import client_for

RED, BLUE = (230, 20, 20), (20, 20, 230)
IMAGE = {"width": 128, "height": 128, "prompt_strength": 0.2}  # mostly the input
UNKNOWN = "6d1f0b8e-4c3a-4f6e-9a2b-7e5d3c1a0f94"  # a file id nobody made


class Recording(httpx.HTTPTransport):
    """Each request the client made (method, path, JSON body if any), trusting the test CA."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(verify=stack.verify())
        self.requests: list[tuple[str, str, Any]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = None
        if request.headers.get("content-type", "").startswith("application/json"):
            body = json.loads(request.read())
        self.requests.append((request.method, request.url.path, body))
        return super().handle_request(request)


def _headers(stack: Stack, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.keys[who].secret}"}


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"type", "title", "detail", "status"} and body["status"] == status
    return body


def _checksums(data: bytes) -> dict[str, str]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}


def _noise_png(side: int) -> bytes:
    """A PNG that does not compress: side*side*3 bytes and more."""
    rng = random.Random(side)
    image = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_create_get_list_delete(stack: Stack, tmp_path: Path) -> None:
    client = client_for(stack, "filer")
    path = tmp_path / "red square.png"
    data = png(RED)
    path.write_bytes(data)
    made = client.files.create(path, metadata={"purpose": "test"})
    assert made.name == "red square.png" and made.content_type == "image/png"
    assert made.size == len(data)
    assert made.urls == {"get": f"{stack.tls}/v1/files/{made.id}"}
    assert made.created_at.endswith("Z") and made.expires_at and made.expires_at > made.created_at
    assert made.etag and made.checksums == _checksums(data)
    assert made.metadata == {"purpose": "test"}

    assert client.files.get(made.id) == made
    assert made.id in [item.id for item in client.files.list()]
    # the same file as mediagen's own files API shows it
    own = httpx.get(f"{stack.tls}/api/v1/files/{made.id}", headers=_headers(stack, "filer"),
                    verify=stack.verify())
    assert own.status_code == 200 and own.json()["size"] == len(data)
    # GET urls.get with the key: the file object, as Replicate's
    raw = httpx.get(made.urls["get"], headers=_headers(stack, "filer"), verify=stack.verify())
    assert raw.status_code == 200 and raw.json()["id"] == made.id

    assert client.files.delete(made.id) is True
    with pytest.raises(ReplicateError) as raised:
        client.files.get(made.id)
    assert raised.value.status == 404
    assert made.id not in [item.id for item in client.files.list()]


def test_another_keys_file_is_not_found_and_not_usable(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "blue.png"
    path.write_bytes(png(BLUE))
    thief = client_for(stack, "filethief")
    owner_file = client_for(stack, "filer").files.create(path)
    for attempt in (lambda: thief.files.get(owner_file.id),
                    lambda: thief.files.delete(owner_file.id),
                    lambda: thief.files.get("not-a-file"),
                    lambda: thief.files.get(UNKNOWN)):
        with pytest.raises(ReplicateError) as raised:
            attempt()
        assert raised.value.status == 404 and raised.value.detail
    assert owner_file.id not in [item.id for item in thief.files.list()]
    with pytest.raises(ReplicateError) as raised:  # its URL names it, but it is not theirs
        thief.predictions.create(model="mediagen/builtin",
                                 input={"prompt": "taken", "image": owner_file.urls["get"]})
    assert raised.value.status == 422 and owner_file.id in (raised.value.detail or "")
    with pytest.raises(ReplicateError) as raised:  # the start of a file URL, then no id
        thief.predictions.create(model="mediagen/builtin",
                                 input={"prompt": "nothing", "image": f"{stack.tls}/v1/files/x"})
    assert raised.value.status == 422
    assert client_for(stack, "filer").files.get(owner_file.id).id == owner_file.id


def test_run_with_an_open_file_uploads_it_and_uses_it(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "input.png"
    path.write_bytes(png(RED, (128, 128)))
    transport = Recording(stack)
    client = client_for(stack, "filer", transport=transport)
    with path.open("rb") as image:  # the default file encoding strategy: an upload
        output = client.run("mediagen/builtin",
                            input={"prompt": "over red", "image": image, **IMAGE})
    r, _, b = mean_color(output[0].read(), (0, 0, 1, 0.5))
    assert r > b + 80, (r, b)  # mostly the input's red
    paths = [(method, where) for method, where, _ in transport.requests]
    assert paths[0] == ("POST", "/v1/files"), paths
    sent = next(body for _, where, body in transport.requests if where.endswith("/predictions"))
    url = sent["input"]["image"]
    uploaded = {item.urls["get"]: item for item in client.files.list()}
    assert url in uploaded and uploaded[url].name == "input.png", (url, list(uploaded))

    with path.open("rb") as image:
        created = client.predictions.create(model="mediagen/builtin",
                                            input={"prompt": "over red again", "image": image,
                                                   **IMAGE})
    assert created.input["image"].startswith(f"{stack.tls}/v1/files/")  # as it was sent
    assert created.input["image"] != url  # a second upload
    created.wait()
    assert created.status == "succeeded", created.error
    file_id = created.input["image"].rsplit("/", 1)[1]
    detail = job_detail(stack, stack.keys["filer"].secret, created.id)
    assert detail["parameters"]["image"] == f"mediagen://files/{file_id}"  # type: ignore[index]


async def test_async_run_with_an_open_file(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "blue.png"
    path.write_bytes(png(BLUE, (128, 128)))
    client = replicate.Client(api_token=stack.keys["filer"].secret, base_url=stack.tls,
                              transport=httpx.AsyncHTTPTransport(verify=stack.verify()))
    with path.open("rb") as image:
        output = await client.async_run("mediagen/builtin",
                                        input={"prompt": "over blue", "image": image, **IMAGE})
    r, _, b = mean_color(await output[0].aread(), (0, 0, 1, 0.5))
    assert b > r + 80, (r, b)


def test_over_plain_http_the_file_url_is_taken_too(stack: Stack, tmp_path: Path) -> None:
    """An `http:` input is refused as a URL, but not this service's own file URL."""
    path = tmp_path / "red.png"
    path.write_bytes(png(RED))
    client = client_for(stack, "filer", base=stack.slow)
    with path.open("rb") as image:
        created = client.predictions.create(model="mediagen/builtin",
                                            input={"prompt": "plain", "image": image, **IMAGE})
    assert created.input["image"].startswith(f"{stack.slow}/v1/files/")
    client.predictions.cancel(created.id)  # the slow worker is for other tests
    refused = httpx.post(f"{stack.slow}/v1/predictions", headers=_headers(stack, "filer"),
                         json={"version": "mediagen/builtin",
                               "input": {"prompt": "elsewhere",
                                         "image": f"http://127.0.0.9/v1/files/{UNKNOWN}"}})
    assert _problem(refused, 422)["type"].endswith("input_url_refused")


def test_upload_errors_are_problem_details(stack: Stack) -> None:
    url, headers = f"{stack.tls}/v1/files", _headers(stack, "filer")
    with httpx.Client(verify=stack.verify(), timeout=30) as http:
        _problem(http.post(url, files={"content": ("a.png", png(RED), "image/png")}), 401)
        detail = _problem(http.post(url, headers=headers, json={"content": "x"}), 422)["detail"]
        assert "content" in detail
        wrong_field = http.post(url, headers=headers, files={"file": ("a.png", png(RED))})
        assert "content" in _problem(wrong_field, 422)["detail"]
        text = http.post(url, headers=headers, files={"content": ("a.txt", b"hello" * 100)})
        _problem(text, 415)
        _problem(http.get(f"{url}/{UNKNOWN}", headers=headers), 404)
        _problem(http.delete(f"{url}/{UNKNOWN}", headers=headers), 404)


@pytest.mark.parametrize("metadata, error", [
    ("not json", "not JSON"),
    ('["a list"]', "must be a JSON object"),
    ('{"nul": "a\\u0000b"}', "NUL"),
    ('{"long": "' + "x" * 20_000 + '"}', "at most 16384 bytes"),
])
def test_metadata_that_is_not_a_json_object_is_422_and_keeps_nothing(
        stack: Stack, metadata: str, error: str) -> None:
    """Before the file (Python's client) or after it (JavaScript's): refused either way, and the
    bytes already stored are deleted."""
    url, headers = f"{stack.tls}/v1/files", _headers(stack, "filemeta")
    with httpx.Client(verify=stack.verify(), headers=headers, timeout=30) as http:
        before = http.post(url, data={"metadata": metadata},
                           files={"content": ("a.png", png(RED), "image/png")})
        assert error in _problem(before, 422)["detail"]
        after = http.post(url, content=_form_after(metadata), headers={
            "content-type": "multipart/form-data; boundary=mediagen-test"})
        assert error in _problem(after, 422)["detail"]
        assert http.get(url).json()["results"] == []
        kept = http.post(url, content=_form_after('{"kept": [1, "two"]}'), headers={
            "content-type": "multipart/form-data; boundary=mediagen-test"})
        assert kept.status_code == 201 and kept.json()["metadata"] == {"kept": [1, "two"]}
        http.delete(f"{url}/{kept.json()['id']}")


def _form_after(metadata: str) -> bytes:
    """A form whose `metadata` comes after `content`, as Replicate's JavaScript client sends it."""
    return (b'--mediagen-test\r\nContent-Disposition: form-data; name="content"; '
            b'filename="a.png"\r\nContent-Type: image/png\r\n\r\n' + png(RED)
            + b'\r\n--mediagen-test\r\nContent-Disposition: form-data; name="metadata"; '
            b'filename="blob"\r\nContent-Type: application/json\r\n\r\n' + metadata.encode()
            + b"\r\n--mediagen-test--\r\n")


def test_upload_larger_than_a_request_body_and_named_by_the_form(stack: Stack) -> None:
    """Past MAX_BODY_BYTES (64 KiB): an upload streams under MAX_FILE_BYTES instead. A
    `filename` field before `content` names the file."""
    data = _noise_png(200)
    assert len(data) > 100_000
    response = httpx.post(f"{stack.tls}/v1/files", headers=_headers(stack, "filer"),
                          data={"filename": "chosen.png", "type": "text/plain"},
                          files={"content": ("sent.bin", data, "application/octet-stream")},
                          verify=stack.verify(), timeout=30)
    assert response.status_code == 201, response.text
    made = response.json()
    assert made["name"] == "chosen.png" and made["content_type"] == "image/png"
    assert made["size"] == len(data) and made["checksums"] == _checksums(data)
    assert made["metadata"] == {}  # none given


def test_list_pages_follow_next_and_previous(stack: Stack) -> None:
    headers = _headers(stack, "filelister")
    with httpx.Client(verify=stack.verify(), headers=headers, timeout=30) as http:
        made = []
        for index in range(103):  # more than one page of 100
            response = http.post(f"{stack.tls}/v1/files",
                                 files={"content": (f"{index}.png", png((index, 0, 0), (8, 8)))})
            assert response.status_code == 201, response.text
            made.append(response.json()["id"])
        first = http.get(f"{stack.tls}/v1/files").json()
        assert first["previous"] is None and first["next"].startswith(f"{stack.tls}/v1/files?")
        second = http.get(first["next"]).json()
        assert second["next"] is None and second["previous"]
        listed = [item["id"] for page in (first, second) for item in page["results"]]
        assert listed == list(reversed(made)), "not every file, newest first"
        back = http.get(second["previous"]).json()
        assert [item["id"] for item in back["results"]] == listed[:100]
        assert client_for(stack, "filelister").files.list()[0].id == made[-1]
