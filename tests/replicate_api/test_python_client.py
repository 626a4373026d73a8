"""The official Python client (`replicate==1.0.7`) against mediagen's `/v1`, changing only its
base URL: run, create/wait/reload, pages, cancel, `Prefer: wait`, webhooks it validates, another
tenant's 404 and a 429 it retries. Its source decides what is worth checking: `run()` trusts any
status but `starting` after `Prefer: wait`, only `https:` outputs become `FileOutput`s, `next`
is requested as given, and its transport retries 429 (after Retry-After) on GETs only."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import replicate
from replicate.exceptions import ModelError, ReplicateError
from replicate.helpers import FileOutput
from replicate.webhook import InvalidSignatureError, WebhookSigningSecret

from tests.replicate_api.conftest import READS, SLOW, Stack, job_detail, stored_bytes

SMALL = {"width": 64, "height": 64}
TERMINAL = {"succeeded", "failed", "canceled"}
PREDICTION_FIELDS = {"id", "model", "version", "input", "output", "logs", "error", "status",
                     "created_at", "started_at", "completed_at", "urls", "metrics",
                     "data_removed", "source"}


def client_for(stack: Stack, who: str, base: str | None = None,
               transport: httpx.BaseTransport | None = None) -> replicate.Client:
    """The client as a user makes it: a mediagen key and the service's address."""
    base = base or stack.tls
    if transport is None and base.startswith("https:"):
        transport = stack.https()
    extra: dict[str, Any] = {"transport": transport} if transport else {}
    return replicate.Client(api_token=stack.keys[who].secret, base_url=base, **extra)


@pytest.fixture(scope="module")
def alice(stack: Stack) -> Iterator[replicate.Client]:
    yield client_for(stack, "alice")


def _files(output: Any) -> list[Any]:
    return output if isinstance(output, list) else [output]


def _newest_job(stack: Stack, who: str) -> str:
    response = httpx.get(f"{stack.tls}/api/v1/jobs", params={"limit": 1},
                         headers={"Authorization": f"Bearer {stack.keys[who].secret}"},
                         verify=stack.verify(), timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["data"][0]["job_id"])


def test_run_returns_file_outputs_holding_the_stored_bytes(stack: Stack,
                                                           alice: replicate.Client) -> None:
    output = alice.run("mediagen/builtin",
                       input={"prompt": "a red fox", **SMALL, "seed": 7, "num_outputs": 2})
    files = _files(output)
    assert len(files) == 2
    assert all(isinstance(item, FileOutput) for item in files), output
    # absolute, on the address the request came to
    assert all(item.url.startswith(f"{stack.tls}/") for item in files), [f.url for f in files]
    job_id = _newest_job(stack, "alice")
    assert [item.read() for item in files] == stored_bytes(stack, stack.keys["alice"].secret,
                                                           job_id)
    assert files[0].read().startswith(b"\x89PNG")


def test_over_plain_http_run_gives_the_output_urls(stack: Stack) -> None:
    """Both clients wrap only `https:` URLs; over http the output is the URL itself."""
    client = client_for(stack, "bob", base=stack.slow)
    output = client.run("mediagen/builtin", input={"prompt": "a plain fox", **SMALL})
    urls = _files(output)
    assert urls and all(isinstance(url, str) and url.startswith(f"{stack.slow}/")
                        for url in urls), output
    assert httpx.get(urls[0], timeout=30).content.startswith(b"\x89PNG")


def test_create_wait_and_reload(stack: Stack, alice: replicate.Client) -> None:
    inputs = {"prompt": "a slow loris", **SMALL, "seed": 3}
    prediction = alice.predictions.create(model="mediagen/builtin", input=inputs)
    assert prediction.status == "starting"
    assert prediction.model == "mediagen/builtin"
    assert prediction.input is not None and inputs.items() <= prediction.input.items()
    assert prediction.output is None and prediction.completed_at is None
    assert prediction.urls is not None
    assert prediction.urls["get"] == f"{stack.tls}/v1/predictions/{prediction.id}"
    assert prediction.urls["cancel"] == f"{stack.tls}/v1/predictions/{prediction.id}/cancel"

    prediction.wait()
    assert prediction.status == "succeeded", prediction
    assert prediction.error is None
    assert prediction.started_at and prediction.completed_at
    assert prediction.metrics is not None and prediction.metrics["predict_time"] > 0
    files = _files(prediction.output)
    assert files and all(url.startswith(f"{stack.tls}/") for url in files)

    prediction.reload()
    assert prediction.status == "succeeded"
    raw = httpx.get(prediction.urls["get"], verify=stack.verify(),
                    headers={"Authorization": f"Bearer {stack.keys['alice'].secret}"})
    assert set(raw.json()) >= PREDICTION_FIELDS, raw.json()
    assert raw.json()["data_removed"] is False
    # the prediction is a mediagen job: same id, same record
    detail = job_detail(stack, stack.keys["alice"].secret, prediction.id)
    assert detail["status"] == "completed" and detail["prompt"] == "a slow loris"


def test_prefer_wait_answers_with_the_finished_prediction(stack: Stack,
                                                          alice: replicate.Client) -> None:
    by_model = alice.models.predictions.create(model="mediagen/builtin",
                                               input={"prompt": "held", **SMALL}, wait=30)
    assert by_model.status == "succeeded" and by_model.output, by_model
    by_name = alice.predictions.create(version="mediagen/builtin",
                                       input={"prompt": "held by name", **SMALL}, wait=True)
    assert by_name.status == "succeeded" and by_name.output, by_name

    model = alice.models.get("mediagen/builtin")
    assert model.owner == "mediagen" and model.name == "builtin"
    assert model.latest_version is not None
    version = model.latest_version.id
    schema = model.latest_version.openapi_schema["components"]["schemas"]["Input"]
    assert {"prompt", "width", "height"} <= set(schema["properties"]), schema
    assert model.versions.get(version).id == version
    by_version = alice.predictions.create(version=version,
                                          input={"prompt": "held by id", **SMALL}, wait=30)
    assert by_version.status == "succeeded", by_version
    pinned = alice.run(f"mediagen/builtin:{version}", input={"prompt": "pinned", **SMALL})
    assert all(isinstance(item, FileOutput) for item in _files(pinned)), pinned


def test_prefer_wait_gives_up_after_n_seconds(stack: Stack) -> None:
    client = client_for(stack, "bob", base=stack.slow)
    began = time.monotonic()
    prediction = client.models.predictions.create(model="mediagen/builtin",
                                                  input={"prompt": "too slow", **SMALL}, wait=1)
    took = time.monotonic() - began
    assert prediction.status in {"starting", "processing"}, prediction
    assert 0.5 <= took < SLOW - 1, took  # held about a second (it answers just before)
    prediction.wait()
    assert prediction.status == "succeeded"


def test_list_follows_next_across_pages(stack: Stack) -> None:
    client = client_for(stack, "lister")
    created: list[str] = []
    while True:  # as many as it takes to fill more than one page
        for _ in range(10):
            created.append(client.predictions.create(
                model="mediagen/builtin", input={"prompt": f"item {len(created)}", **SMALL}).id)
        first = client.predictions.list()
        if first.next is not None:
            break
        assert len(created) < 150, "no second page after 150 predictions"
    for _ in range(3):
        created.append(client.predictions.create(
            model="mediagen/builtin", input={"prompt": "last", **SMALL}).id)
    assert first.next.startswith(f"{stack.tls}/v1/predictions?")  # absolute, as Replicate's

    pages = list(replicate.paginate(client.predictions.list))
    seen = [prediction.id for page in pages for prediction in page]
    assert len(pages) >= 2
    assert len(seen) == len(set(seen)), "a prediction listed twice"
    assert seen == list(reversed(created)), "not every prediction, newest first"
    assert all(p.model == "mediagen/builtin" for page in pages for p in page)
    assert pages[0].previous is None and pages[-1].next is None
    assert pages[1].previous is not None, "no way back from the second page"
    back = client.predictions.list(pages[1].previous)  # the first page again, newest first
    assert [p.id for p in back] == [p.id for p in pages[0]]
    assert back.previous is None and back.next == pages[0].next


def test_cancel_a_running_prediction(stack: Stack) -> None:
    client = client_for(stack, "bob", base=stack.slow)
    prediction = client.predictions.create(model="mediagen/builtin",
                                           input={"prompt": "never mind", **SMALL})
    deadline = time.monotonic() + 10
    while prediction.status != "processing":
        assert time.monotonic() < deadline, prediction
        time.sleep(0.1)
        prediction.reload()
    prediction.cancel()
    assert prediction.status == "canceled", prediction
    assert prediction.completed_at is not None
    prediction.reload()
    assert prediction.status == "canceled" and prediction.output is None
    again = client.predictions.cancel(prediction.id)  # a finished one answers as it is
    assert again.status == "canceled"


def test_a_failed_prediction_raises_model_error(alice: replicate.Client) -> None:
    with pytest.raises(ModelError) as raised:
        alice.run("mediagen/builtin", input={"prompt": "broken [fault:permanent]", **SMALL})
    assert raised.value.prediction.status == "failed"
    assert raised.value.prediction.error


def test_stream_gives_logs_then_each_output_as_a_file(stack: Stack) -> None:
    client = client_for(stack, "alice")
    events = list(client.stream("mediagen/builtin",
                                input={"prompt": "a river of foxes", **SMALL, "num_outputs": 2}))
    kinds = [event.event.value for event in events]
    assert kinds[-1] == "done" and kinds.count("output") == 2, kinds
    assert kinds.index("logs") < kinds.index("output"), kinds
    logs = "".join(event.data for event in events if event.event.value == "logs")
    assert "rendered output 1" in logs, logs
    files = [event.data for event in events if event.event.value == "output"]
    assert all(isinstance(item, FileOutput) for item in files), files
    newest = client.predictions.list().results[0]
    assert newest.input["prompt"] == "a river of foxes"
    assert [item.read() for item in files] == stored_bytes(stack, stack.keys["alice"].secret,
                                                           newest.id)
    assert json.loads(events[-1].data) == {}


def test_stream_of_a_failed_prediction_raises(alice: replicate.Client) -> None:
    with pytest.raises(RuntimeError) as raised:
        list(alice.stream("mediagen/builtin",
                          input={"prompt": "broken stream [fault:permanent]", **SMALL}))
    assert "injected permanent fault" in json.loads(str(raised.value))["detail"]


def test_stream_of_a_canceled_prediction_is_done(stack: Stack) -> None:
    client = client_for(stack, "bob", base=stack.slow)
    prediction = client.predictions.create(model="mediagen/builtin",
                                           input={"prompt": "stream, then stop", **SMALL})
    canceler = threading.Timer(1.0, client.predictions.cancel, args=(prediction.id,))
    canceler.start()
    began = time.monotonic()
    events = list(prediction.stream())
    canceler.join()
    assert time.monotonic() - began < SLOW, "the stream did not end at the cancel"
    assert [event.event.value for event in events][-1:] == ["done"], events
    assert json.loads(events[-1].data) == {"reason": "canceled"}
    assert not [event for event in events if event.event.value == "output"]


def test_webhooks_carry_the_prediction_signed_with_the_keys_secret(
        stack: Stack, alice: replicate.Client) -> None:
    secret = alice.webhooks.default.secret()
    assert secret.key == stack.keys["alice"].webhook_secret
    assert client_for(stack, "bob").webhooks.default.secret().key == \
        stack.keys["bob"].webhook_secret != secret.key

    hook = f"{stack.receiver.url}/hook/python-all"
    prediction = alice.predictions.create(model="mediagen/builtin",
                                          input={"prompt": "a carrier pigeon", **SMALL},
                                          webhook=hook)
    prediction.wait()
    stack.receiver.wait("/hook/python-all", 2)
    time.sleep(1)  # anything else that was coming
    hits = stack.receiver.at("/hook/python-all")
    for hit in hits:
        body = hit.body.decode()
        replicate.webhooks.validate(headers=hit.headers, body=body, secret=secret)  # raises if not
        with pytest.raises(InvalidSignatureError):
            replicate.webhooks.validate(
                headers=hit.headers, body=body,
                secret=WebhookSigningSecret(key=stack.keys["bob"].webhook_secret))
        with pytest.raises(InvalidSignatureError):
            replicate.webhooks.validate(headers=hit.headers, body=body.replace("a", "b"),
                                        secret=secret)
    bodies = [json.loads(hit.body) for hit in hits]
    assert {body["id"] for body in bodies} == {prediction.id}
    assert set(bodies[-1]) >= PREDICTION_FIELDS
    final = [body for body in bodies if body["status"] == "succeeded"]
    assert len(final) == 1 and final[0]["output"], bodies
    assert any(body["status"] in {"starting", "processing"} for body in bodies)  # `start`

    only_done = f"{stack.receiver.url}/hook/python-completed"
    filtered = alice.predictions.create(model="mediagen/builtin",
                                        input={"prompt": "just the news", **SMALL},
                                        webhook=only_done, webhook_events_filter=["completed"])
    filtered.wait()
    stack.receiver.wait("/hook/python-completed", 1)
    time.sleep(1)
    statuses = [json.loads(hit.body)["status"] for hit in stack.receiver.at(
        "/hook/python-completed")]
    assert statuses == ["succeeded"]


def test_another_tenants_prediction_is_not_found(stack: Stack, alice: replicate.Client) -> None:
    mine = alice.predictions.create(model="mediagen/builtin", input={"prompt": "mine", **SMALL})
    bob = client_for(stack, "bob")
    for attempt in (lambda: bob.predictions.get(mine.id),
                    lambda: bob.predictions.cancel(mine.id),
                    lambda: bob.predictions.get("00000000-0000-0000-0000-000000000000"),
                    lambda: bob.predictions.get("not-a-prediction")):
        with pytest.raises(ReplicateError) as raised:
            attempt()
        assert raised.value.status == 404
        assert raised.value.title and raised.value.detail
    assert mine.id not in {p.id for p in bob.predictions.list()}
    assert alice.predictions.get(mine.id).id == mine.id


def test_errors_are_problem_details(stack: Stack, alice: replicate.Client) -> None:
    anonymous = replicate.Client(api_token="mg_wrong", base_url=stack.tls,
                                 transport=stack.https())
    with pytest.raises(ReplicateError) as raised:
        anonymous.predictions.list()
    assert raised.value.status == 401
    with pytest.raises(ReplicateError) as raised:
        alice.run("nobody/nothing", input={"prompt": "x"})
    assert raised.value.status == 404
    with pytest.raises(ReplicateError) as raised:
        alice.run("mediagen/builtin", input={"prompt": "x", "width": 3})
    assert raised.value.status == 422 and "width" in (raised.value.detail or "")


class Recording(httpx.HTTPTransport):
    """Every status the client's retrying transport saw, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.seen.append((response.status_code, response.headers.get("retry-after")))
        return response


@pytest.mark.timeout(240)
def test_a_read_past_the_limit_is_retried_after_retry_after(stack: Stack) -> None:
    transport = Recording()
    client = client_for(stack, "carol", base=stack.limited, transport=transport)
    prediction = client.predictions.create(model="mediagen/builtin",
                                           input={"prompt": "patience", **SMALL})
    headers = {"Authorization": f"Bearer {stack.keys['carol'].secret}"}
    ok = 0
    while True:  # spend this minute's reads, with a few seconds of it left for the client's try
        raw = httpx.get(f"{stack.limited}/v1/predictions/{prediction.id}", headers=headers)
        ok += raw.status_code == 200
        assert ok <= 2 * READS, "reads are not limited"
        if raw.status_code == 429 and int(raw.headers["retry-after"]) >= 3:
            break
        if raw.status_code == 429:
            time.sleep(int(raw.headers["retry-after"]) + 0.2)
        else:
            assert raw.status_code == 200, raw.text
    assert raw.headers["content-type"].startswith("application/problem+json")
    assert raw.json()["status"] == 429 and raw.json()["title"]

    began = time.monotonic()
    again = client.predictions.get(prediction.id)  # 429, then the client waits and retries
    assert again.id == prediction.id
    statuses = [status for status, _ in transport.seen]
    assert statuses[0] == 201 and statuses[-1] == 200 and 429 in statuses, transport.seen
    waited = sum(int(after) for status, after in transport.seen if status == 429 and after)
    assert waited >= 1 and time.monotonic() - began >= waited - 0.5
