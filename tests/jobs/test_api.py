"""The README round trip and the image a job produces, over HTTP against real processes."""

from __future__ import annotations

import io
import uuid
from datetime import datetime

import httpx
from PIL import Image

from tests.support import submit, unsigned, wait_terminal

README_BODY = {
    "prompt": "A beautiful sunset over mountains",
    "parameters": {"width": 1024, "height": 1024, "num_inference_steps": 50},
}


async def test_readme_round_trip(client: httpx.AsyncClient) -> None:
    created = await client.post("/api/v1/generate", json=README_BODY)
    assert created.status_code == 201
    body = created.json()
    job_id = body["job_id"]
    assert uuid.UUID(job_id)
    assert body["status"] == "pending"
    assert body["message"] == (
        f"Job created successfully. Use job ID {job_id} to check status."
    )

    detail = await wait_terminal(client, job_id)
    assert detail["status"] == "completed", detail

    status = (await client.get(f"/api/v1/status/{job_id}")).json()
    assert set(status) == {"job_id", "status", "result_url", "created_at", "updated_at",
                           "retry_count"}
    assert status["status"] == "completed"
    assert status["retry_count"] == 0
    assert unsigned(status["result_url"]) == f"/media/{job_id}.png"
    assert datetime.fromisoformat(status["updated_at"]) >= datetime.fromisoformat(
        status["created_at"])

    assert detail["prompt"] == README_BODY["prompt"]
    assert detail["parameters"]["num_inference_steps"] == 50
    assert detail["error"] is None
    assert detail["attempts"] == 1
    assert detail["provider"] == "builtin"
    assert detail["started_at"] and detail["completed_at"]
    assert detail["duration_seconds"] > 0
    [output] = detail["outputs"]
    assert unsigned(output["url"]) == unsigned(status["result_url"])  # signed when each was read
    assert (output["content_type"], output["size"] > 0) == ("image/png", True)

    media = await client.get(status["result_url"])
    assert media.status_code == 200
    assert media.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(media.content))
    assert image.format == "PNG"
    assert image.size == (1024, 1024)
    assert len(media.content) == detail["outputs"][0]["size"]


async def _fetch_image(client: httpx.AsyncClient, job_id: str) -> tuple[bytes, Image.Image, str]:
    detail = await wait_terminal(client, job_id)
    assert detail["status"] == "completed", detail
    media = await client.get(detail["result_url"])
    assert media.status_code == 200
    return media.content, Image.open(io.BytesIO(media.content)), media.headers["content-type"]


async def test_image_has_requested_size_and_format(client: httpx.AsyncClient) -> None:
    cases = [(512, 320, "png", "PNG", "image/png"), (256, 640, "jpg", "JPEG", "image/jpeg"),
             (64, 64, "webp", "WEBP", "image/webp"), (200, 128, "jpeg", "JPEG", "image/jpeg")]
    jobs = [(await submit(client, "a red fox in a forest", width=w, height=h, output_format=f),
             w, h, fmt, ctype) for w, h, f, fmt, ctype in cases]
    for job_id, width, height, fmt, ctype in jobs:
        _, image, content_type = await _fetch_image(client, job_id)
        assert image.size == (width, height)
        assert image.format == fmt
        assert content_type == ctype


async def test_image_is_deterministic_per_prompt_and_seed(client: httpx.AsyncClient) -> None:
    prompt = "night ocean with purple boats"
    first = await submit(client, prompt, width=256, height=256, seed=7)
    again = await submit(client, prompt, width=256, height=256, seed=7)
    other_seed = await submit(client, prompt, width=256, height=256, seed=8)
    other_prompt = await submit(client, "snow forest at sunrise", width=256, height=256, seed=7)
    a, image, _ = await _fetch_image(client, first)
    b, _, _ = await _fetch_image(client, again)
    c, _, _ = await _fetch_image(client, other_seed)
    d, _, _ = await _fetch_image(client, other_prompt)
    assert a == b
    assert a != c and a != d
    # A real picture, not a flat placeholder: many distinct colours.
    colours = image.convert("RGB").getcolors(maxcolors=256 * 256)
    assert colours is None or len(colours) > 500


async def test_several_outputs(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, "three gold stars", width=128, height=128, num_outputs=3, seed=1)
    detail = await wait_terminal(client, job_id)
    assert detail["status"] == "completed", detail
    urls = [o["url"] for o in detail["outputs"]]
    assert [unsigned(url) for url in urls] == [
        f"/media/{job_id}.png", f"/media/{job_id}-1.png", f"/media/{job_id}-2.png"]
    bodies = [(await client.get(url)).content for url in urls]
    assert len(set(bodies)) == 3


async def test_unknown_job_is_404(client: httpx.AsyncClient) -> None:
    missing = uuid.uuid4()
    for path in (f"/api/v1/status/{missing}", f"/api/v1/jobs/{missing}"):
        response = await client.get(path)
        assert response.status_code == 404
        assert response.json() == {"detail": f"job {missing} not found", "code": "not_found"}
