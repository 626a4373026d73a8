"""The Host header does not decide where our absolute URLs point: PUBLIC_BASE_URL does when set;
otherwise a Host must be well-formed, not too long, and one ALLOWED_HOSTS lists (400 if not,
never a 500 nor a URL to somewhere else). Covers `/v1`'s prediction and signed stream URLs,
the root its webhooks are written with (stored with the job), and `/api/v1/jobs`'s `next`."""

from __future__ import annotations

import uuid

from mediagen.jobs.models import Job
from tests.stack import app

INPUT = {"prompt": "a lighthouse", "width": 64, "height": 64}
CREATE = "/v1/models/mediagen/builtin/predictions"
PUBLIC = "https://media.example.test/gen"
EVIL = {"Host": "attacker.example"}


async def test_public_base_url_wins_over_the_host(database: str) -> None:
    async with app({"PUBLIC_BASE_URL": PUBLIC}) as client:
        created = await client.post(CREATE, json={"input": INPUT}, headers=EVIL)
        assert created.status_code == 201, created.text
        urls = created.json()["urls"]
        assert urls["get"] == f"{PUBLIC}/v1/predictions/{created.json()['id']}"
        assert urls["stream"].startswith(f"{PUBLIC}/v1/predictions/")
        job = await Job.get(id=uuid.UUID(created.json()["id"]))
        assert job.surface_base == PUBLIC  # the root its webhooks are written with
        read = await client.get(f"/v1/predictions/{job.id}", headers=EVIL)
        assert read.json()["urls"]["cancel"].startswith(f"{PUBLIC}/v1/")
        listed = await client.get("/v1/predictions", headers=EVIL)
        assert all(p["urls"]["get"].startswith(PUBLIC) for p in listed.json()["results"])
        # mediagen's own list: `next` too.
        await client.post(CREATE, json={"input": INPUT})
        page = await client.get("/api/v1/jobs?limit=1", headers=EVIL)
        assert page.status_code == 200, page.text
        assert page.json()["next"].startswith(f"{PUBLIC}/api/v1/jobs?")
        assert "limit=1" in page.json()["next"] and "cursor=" in page.json()["next"]


async def test_without_public_base_url_only_allowed_hosts(database: str) -> None:
    async with app({"PUBLIC_BASE_URL": "", "ALLOWED_HOSTS": "api.example.test, .example.org"}
                   ) as client:
        for host in ("api.example.test:8000", "API.Example.Test", "example.org", "a.example.org"):
            served = await client.post(CREATE, json={"input": INPUT}, headers={"Host": host})
            assert served.status_code == 201, (host, served.text)
            assert served.json()["urls"]["get"].startswith(f"http://{host}/v1/predictions/")
        refused = await client.post(CREATE, json={"input": INPUT}, headers=EVIL)
        assert refused.status_code == 400, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith(":invalid_host")
        page = await client.get("/api/v1/jobs?limit=1", headers=EVIL)
        assert page.status_code == 400 and page.json()["code"] == "invalid_host"
        # Where no URL is built, the Host does not matter.
        job_id = served.json()["id"]
        assert (await client.get(f"/api/v1/status/{job_id}", headers=EVIL)).status_code == 200


MALFORMED = ["a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + "." + "e" * 63,
             "evil.example/@x", "evil.example:99999999", "ex ample", "[not-ipv6]", ""]


async def test_a_malformed_host_is_400_not_500(database: str) -> None:
    async with app({"PUBLIC_BASE_URL": ""}) as client:  # ALLOWED_HOSTS: * (the default)
        for host in MALFORMED:
            refused = await client.post(CREATE, json={"input": INPUT}, headers={"Host": host})
            assert refused.status_code == 400, (host, refused.text)
            assert refused.json()["type"].endswith(":invalid_host")
        fine = await client.post(CREATE, json={"input": INPUT}, headers={"Host": "x.test:81"})
        assert fine.status_code == 201, fine.text
        assert fine.json()["urls"]["get"].startswith("http://x.test:81/v1/predictions/")
