"""The `/v1` surface over plain HTTP, for what the `replicate` clients cannot show: the problem
details of every error, `Prefer: wait` bounds, tenants, cursors, and the prediction webhook's
body and signature. A stack of its own (worker + two APIs on Redis database 14) plus an API on
database 15 that no worker serves (its jobs stay `starting`)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from standardwebhooks import Webhook

from tests.receiver import Receiver, receiving
from tests.stack import Redis, Stacks, create_key, revoke_key

SECRET = "whsec_" + base64.b64encode(b"replicate-surface-test-secret-32").decode()
INPUT = {"prompt": "a heron in the reeds", "width": 64, "height": 64}
FIELDS = {"id", "model", "version", "input", "output", "logs", "error", "status", "created_at",
          "started_at", "completed_at", "urls", "metrics", "data_removed", "source"}


@dataclass
class Stack:
    anonymous: str  # AUTH_REQUIRED=false, WEBHOOK_SECRET set
    auto: str  # AUTH_REQUIRED=auto: keys
    idle: str  # no worker: predictions stay `starting`
    keys: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with receiving() as rec:
        yield rec


@pytest.fixture(scope="module")
async def stack(stacks: Stacks, redis_dbs: Redis) -> AsyncIterator[Stack]:
    env = {"REDIS_URL": redis_dbs.fresh(), "WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
           "WEBHOOK_RETRY_DELAY": "0.5", "WEBHOOK_SECRET": SECRET}
    anonymous, auto, idle = stacks.many(
        (env, True, True, "replicate-surface"),
        ({**env, "AUTH_REQUIRED": "auto"}, True, False, "replicate-surface-auto"),
        ({**env, "REDIS_URL": redis_dbs.fresh()}, True, False, "replicate-idle"))
    keys = {"alice": (await create_key("rs-alice"))[1], "bob": (await create_key("rs-bob"))[1]}
    yield Stack(anonymous.url, auto.url, idle.url, keys)
    for secret in keys.values():  # other tests run in modes where any active key requires one
        await revoke_key(secret[:11])


@pytest.fixture
async def anon(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.anonymous, timeout=90) as http:
        yield http


def _as(stack: Stack, who: str, scheme: str = "Bearer") -> httpx.AsyncClient:
    headers = {"Authorization": f"{scheme} {stack.keys[who]}"}
    return httpx.AsyncClient(base_url=stack.auto, headers=headers, timeout=90)


def _root(client: httpx.AsyncClient) -> str:
    return str(client.base_url).rstrip("/")


def _problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert set(body) == {"type", "title", "detail", "status"}, body
    assert body["status"] == status and body["title"] and body["detail"]
    return dict(body)


async def test_a_prediction_is_a_job_in_replicate_shape(anon: httpx.AsyncClient) -> None:
    created = await anon.post("/v1/models/mediagen/builtin/predictions",
                              json={"input": INPUT}, headers={"Prefer": "wait"})
    assert created.status_code == 201, created.text
    assert created.headers["preference-applied"] == "wait=60"
    body = created.json()
    assert set(body) == FIELDS
    assert body["status"] == "succeeded", body
    assert body["model"] == "mediagen/builtin" and len(body["version"]) == 64
    assert body["input"]["prompt"] == INPUT["prompt"] and body["input"]["width"] == 64
    assert body["urls"]["get"] == f"{_root(anon)}/v1/predictions/{body['id']}"
    assert body["completed_at"].endswith("Z") and body["metrics"]["predict_time"] is not None
    [url] = body["output"]
    assert url.startswith(f"{_root(anon)}/media/")
    assert (await anon.get(url)).status_code == 200  # signed, absolute, fetchable
    # The same job on mediagen's own API.
    job = (await anon.get(f"/api/v1/jobs/{body['id']}")).json()
    assert job["status"] == "completed" and job["model"] == "mediagen/builtin"
    again = await anon.get(f"/v1/predictions/{body['id']}")
    assert again.json()["output"][0].split("?")[0] == url.split("?")[0]
    # By version: `owner/name:version` and the bare version id name the same model.
    for version in (f"mediagen/builtin:{body['version']}", body["version"]):
        other = await anon.post("/v1/predictions", json={"version": version, "input": INPUT})
        assert other.status_code == 201, other.text
        assert other.json()["model"] == "mediagen/builtin"


async def test_errors_are_problem_details(stack: Stack, anon: httpx.AsyncClient) -> None:
    _problem(await anon.get(f"/v1/predictions/{uuid.uuid4()}"), 404)
    _problem(await anon.get("/v1/predictions/not-an-id"), 404)
    _problem(await anon.get("/v1/models/nobody/nothing"), 404)
    _problem(await anon.post("/v1/models/nobody/nothing/predictions", json={"input": INPUT}), 404)
    _problem(await anon.get("/v1/no-such-route"), 404)
    missing = _problem(await anon.post("/v1/models/mediagen/builtin/predictions",
                                       json={"input": {"width": 64}}), 422)
    assert "input.prompt" in str(missing["detail"])
    bad = _problem(await anon.post("/v1/models/mediagen/builtin/predictions",
                                   json={"input": {**INPUT, "width": 65}}), 422)
    assert "input.width" in str(bad["detail"])
    _problem(await anon.post("/v1/predictions", json={"input": INPUT}), 422)  # no version
    _problem(await anon.post("/v1/models/mediagen/builtin/predictions", json={"input": INPUT},
                             headers={"Prefer": "wait=soon"}), 422)
    # 401 on /v1, with the challenge; mediagen's own API keeps its own shape.
    async with httpx.AsyncClient(base_url=stack.auto, timeout=30) as nobody:
        denied = await nobody.get("/v1/predictions", headers={"Authorization": "Bearer mg_nope"})
        _problem(denied, 401)
        assert denied.headers["www-authenticate"] == "Bearer"
        _problem(await nobody.get("/v1/predictions", headers={"Authorization": "Basic eDp5"}), 401)
        _problem(await nobody.get("/v1/predictions"), 401)  # keys exist: one is required
        own = await nobody.get("/api/v1/jobs")
        assert own.status_code == 401 and own.json()["code"] == "unauthorized"


async def test_token_scheme_tenants_and_webhook_secret(stack: Stack) -> None:
    async with _as(stack, "alice", "Token") as alice, _as(stack, "bob") as bob:
        made = await alice.post("/v1/models/mediagen/builtin/predictions", json={"input": INPUT})
        assert made.status_code == 201, made.text
        prediction = made.json()["id"]
        assert (await alice.get(f"/v1/predictions/{prediction}")).status_code == 200
        _problem(await bob.get(f"/v1/predictions/{prediction}"), 404)
        _problem(await bob.post(f"/v1/predictions/{prediction}/cancel"), 404)
        assert prediction not in {p["id"] for p in (await bob.get("/v1/predictions")).json()["results"]}
        secret = (await alice.get("/v1/webhooks/default/secret")).json()["key"]
        assert secret.startswith("whsec_")
        assert secret != (await bob.get("/v1/webhooks/default/secret")).json()["key"]


async def test_prefer_wait_is_bounded_and_running_predictions_show_starting(
    stack: Stack,
) -> None:
    async with httpx.AsyncClient(base_url=stack.idle, timeout=30) as idle:
        started = time.monotonic()
        held = await idle.post("/v1/models/mediagen/builtin/predictions", json={"input": INPUT},
                               headers={"Prefer": "wait=2"})
        took = time.monotonic() - started
        assert held.status_code == 201, held.text
        assert held.headers["preference-applied"] == "wait=2"
        assert 1.2 < took < 3.5, took
        assert held.json()["status"] == "starting" and held.json()["output"] is None
        await idle.post(f"/v1/predictions/{held.json()['id']}/cancel")
        # Without Prefer: at once. Cancel a starting one, then cancel it again: as it is.
        quick = await idle.post("/v1/models/mediagen/builtin/predictions", json={"input": INPUT})
        assert "preference-applied" not in quick.headers
        prediction = quick.json()["id"]
        canceled = await idle.post(f"/v1/predictions/{prediction}/cancel")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        assert canceled.json()["completed_at"] is not None
        twice = await idle.post(f"/v1/predictions/{prediction}/cancel")
        assert twice.status_code == 200 and twice.json()["status"] == "canceled"


async def test_wait_is_capped_at_sixty(anon: httpx.AsyncClient) -> None:
    response = await anon.post("/v1/models/mediagen/builtin/predictions", json={"input": INPUT},
                               headers={"Prefer": "wait=3600"})
    assert response.status_code == 201
    assert response.headers["preference-applied"] == "wait=60"
    assert response.json()["status"] == "succeeded"
    # A finished prediction's cancel answers it as it is.
    done = await anon.post(f"/v1/predictions/{response.json()['id']}/cancel")
    assert done.status_code == 200 and done.json()["status"] == "succeeded"


async def test_listing_pages_by_cursor(stack: Stack) -> None:
    async with _as(stack, "bob") as bob:
        made = []
        for _ in range(3):
            response = await bob.post("/v1/models/mediagen/builtin/predictions",
                                      json={"input": INPUT})
            made.append(response.json()["id"])
        own = await bob.post("/api/v1/generate", json={"prompt": "own api", "parameters": {
            "width": 64, "height": 64}})
        made.append(own.json()["job_id"])
        seen: list[str] = []
        url: str | None = "/v1/predictions"
        pages = 0
        while url and pages < 100:
            page = (await bob.get(url)).json()
            assert set(page) == {"next", "previous", "results"}
            seen += [p["id"] for p in page["results"]]
            url, pages = page["next"], pages + 1
        assert seen[:4] == made[::-1]  # newest first, every job of the key
        assert len(seen) == len(set(seen))


async def test_webhook_carries_the_prediction_signed_as_replicate_signs(
    anon: httpx.AsyncClient, receiver: Receiver
) -> None:
    name = uuid.uuid4().hex
    response = await anon.post("/v1/models/mediagen/builtin/predictions", json={
        "input": INPUT, "webhook": f"{receiver.url}/hook/{name}",
        "webhook_events_filter": ["start", "completed"]})
    assert response.status_code == 201, response.text
    prediction = response.json()["id"]
    deadline = time.monotonic() + 30
    bodies: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        bodies = [json.loads(hit.body) for hit in receiver.hits if prediction in hit.body.decode()]
        if any(b["status"] == "succeeded" for b in bodies):
            break
        time.sleep(0.1)
    assert sorted(str(b["status"]) for b in bodies) == ["processing", "succeeded"], bodies
    [final] = [b for b in bodies if b["status"] == "succeeded"]
    assert set(final) == FIELDS and final["id"] == prediction
    output = final["output"]
    assert isinstance(output, list) and str(output[0]).startswith(f"{_root(anon)}/media/")
    for hit in receiver.hits:
        if prediction in hit.body.decode():
            Webhook(SECRET).verify(hit.body, hit.headers)  # raises unless signed with the secret


def _events(text: str) -> list[tuple[str, str]]:
    """(event, data) of each Server-Sent Event in `text` (pings left out)."""
    found = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = [line.partition(":")[::2] for line in block.split("\n") if line]
        kind = next((value.strip() for name, value in fields if name == "event"), None)
        if kind:
            data = "\n".join(value[1:] if value.startswith(" ") else value
                             for name, value in fields if name == "data")
            found.append((kind, data))
    return found


async def test_the_stream_opens_with_its_signature_or_the_owners_token(stack: Stack) -> None:
    async with _as(stack, "alice") as alice, _as(stack, "bob") as bob:
        created = await alice.post("/v1/models/mediagen/builtin/predictions",
                                   json={"input": INPUT}, headers={"Prefer": "wait"})
        prediction = created.json()
        assert prediction["status"] == "succeeded", prediction
        url = prediction["urls"]["stream"]
        bare = f"{_root(alice)}/v1/predictions/{prediction['id']}/stream"
        assert url.startswith(f"{bare}?expires=") and "&sig=" in url
        async with httpx.AsyncClient(timeout=30) as nobody:
            signed = await nobody.get(url)
            assert signed.status_code == 200, signed.text
            assert signed.headers["content-type"].startswith("text/event-stream")
            events = _events(signed.text)
            assert [kind for kind, _ in events if kind != "logs"] == ["output", "done"], events
            assert [data for kind, data in events if kind == "output"] == prediction["output"]
            assert json.loads(events[-1][1]) == {}
            _problem(await nobody.get(bare), 401)
            forged = url.replace("sig=", "sig=x")
            _problem(await nobody.get(forged), 401)
            other = url.replace(prediction["id"], str(uuid.uuid4()))  # its signature, elsewhere
            _problem(await nobody.get(other), 401)
        _problem(await bob.get(bare), 404)  # another tenant's token
        own = await alice.get(bare)  # the owner's token needs no signature
        assert own.status_code == 200 and _events(own.text)[-1][0] == "done"
        # A signature's parameters in another form than given are refused, owner or not.
        for query in ("expires=0.0&sig=x", "expires=1&sig=a&sig=b", "expires=1&expires=2"):
            _problem(await alice.get(f"{bare}?{query}"), 422)
