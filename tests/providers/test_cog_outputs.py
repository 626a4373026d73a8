"""Every kind of output a Cog model returns, end to end, against real Cog servers (Cog's HTTP
server from PyPI, `tests/cog_servers.py`) running the predictors of tests/cog_models/outputs.py:
a text stream written the older way (`BasePredictor.predict` -> `ConcatenateIterator[str]`),
the same from an async generator, a list of files, a JSON object (a `BaseModel` with text, a
list, a number and a file in it) and a number.

One stack for the module: an API and a worker (processes: the Cog servers call the API's
webhook), a models file routing a model to each server, MAX_OUTPUT_VALUE_BYTES small enough to
pass on purpose, and a key of the module's own. Each shape goes through `/api/v1` (job detail,
live events, client webhooks), the Python client, and the official replicate clients against
`/v1`.

Cog 0.23.1 reports a sync generator's chunks one webhook each as they are yielded, but collects
an async generator's items and reports them when it ends (coglet's `_collect_async_gen`): the
async predictor's chunks arrive together, at its end.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate

from mediagen.client import AsyncClient
from mediagen.errors import OutputTooLargeError
from mediagen.jobs import values
from tests.cog_servers import CogServer, cog_venv  # noqa: F401 - the fixture, for this module
from tests.jobs.test_events import Event, all_events, open_events
from tests.receiver import Receiver, receiving
from tests.replicate_api.test_js_client import replicate_js  # noqa: F401 - the fixture
from tests.stack import Stack, Stacks, new_key, revoke_key
from tests.support import free_port, wait_terminal

PREDICTORS = Path(__file__).resolve().parent.parent / "cog_models"
JS = Path(__file__).resolve().parent.parent / "replicate_api" / "js" / "run.mjs"
# model -> the predictor class its server runs
SHAPES = {
    "tests/text-stream": "TextStream",
    "tests/async-stream": "AsyncStream",
    "tests/files": "Files",
    "tests/json": "Json",
    "tests/number": "Number",
}
CAP = 4096  # MAX_OUTPUT_VALUE_BYTES of the stack
WORDS = "one two three four five six seven eight"
CHUNKS = ["one", " two", " three", " four", " five", " six", " seven", " eight"]


@dataclass
class Outputs:
    stack: Stack
    servers: dict[str, CogServer]
    receiver: Receiver
    key: str

    @property
    def url(self) -> str:
        return self.stack.url

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30,
                                 headers={"Authorization": f"Bearer {self.key}"})

    def replicate(self) -> replicate.Client:
        """The official client as a user points it at mediagen: its key, the service's root."""
        return replicate.Client(api_token=self.key, base_url=self.url)


def _models_file(path: Path, servers: dict[str, CogServer]) -> Path:
    path.write_text("".join(
        f'[models."{model}"]\nprovider = "cog"\ndeadline = 60\n'
        f'[[models."{model}".endpoints]]\nurl = "{server.url}"\nslots = 1\n'
        for model, server in servers.items()))
    return path


@pytest.fixture(scope="module")
async def outputs(stacks: Stacks, cog_venv: Path,  # noqa: F811
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Outputs]:
    tmp = tmp_path_factory.mktemp("cog-outputs")
    servers = {model: CogServer(cog_venv, tmp / f"{name}.log", model=PREDICTORS,
                                predictor=f"outputs.py:{name}")
               for model, name in SHAPES.items()}
    try:
        for server in servers.values():  # side by side: each takes a few seconds
            server.launch()
        for server in servers.values():
            server.ready(60)
        port = free_port()
        env = {"MODELS_FILE": str(_models_file(tmp / "models.toml", servers)),
               "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
               "COG_WEBHOOK_SECRET": "cog-outputs-secret", "POLL_INTERVAL": "1",
               "MAX_OUTPUT_VALUE_BYTES": str(CAP), "WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
               "WEBHOOK_RETRY_DELAY": "0.5"}
        secret = await new_key("cog-outputs")
        try:
            with receiving() as receiver, stacks.own(env, name="cog-outputs", port=port) as stack:
                yield Outputs(stack, servers, receiver, secret)
        finally:  # other modules run where an active key would require one
            await revoke_key(secret[:11])
    finally:
        for server in servers.values():
            server.stop()


async def _submit(client: httpx.AsyncClient, model: str, **parameters: Any) -> str:
    body: dict[str, Any] = {"prompt": f"a job of {model}", "model": model,
                            "parameters": parameters}
    if webhook := parameters.pop("webhook", None):
        body["webhook"] = webhook
    created = await client.post("/api/v1/generate", json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["job_id"])


def _status(events: list[Event]) -> list[Event]:
    return [event for event in events if event.event == "status"]


def _streamed(events: list[Event]) -> list[Any]:
    """The output the `output` events add up to (each at its offset: no gap, no repeat). The
    last chunks may come only with the end (the model finished before the next look)."""
    chunks: list[Any] = []
    for event in events:
        if event.event == "output":
            assert event.data["offset"] == len(chunks), events
            chunks += event.data["output"]
    return chunks


def _prefix(chunks: list[Any] | None) -> bool:
    """Some of the chunks, and the first ones (what a stream has so far)."""
    return bool(chunks) and chunks == CHUNKS[: len(chunks or [])]


def _bodies(receiver: Receiver, path: str) -> list[dict[str, Any]]:
    """The webhook bodies received at `path`, once the `completed` one is among them."""
    def bodies() -> list[dict[str, Any]]:
        return [json.loads(hit.body) for hit in receiver.at(path)]

    deadline = time.monotonic() + 30
    while not any(body["event"] == "completed" for body in bodies()):
        assert time.monotonic() < deadline, f"no completed webhook at {path}: {bodies()}"
        time.sleep(0.1)
    return bodies()


# --- /api/v1: detail and live events ---------------------------------------------------------

async def test_a_text_stream_arrives_chunk_by_chunk_while_the_model_runs(
    outputs: Outputs,
) -> None:
    """Cog reports each chunk as the model yields it: the job has them (detail, `output`
    events) before the model is done, and its output is the list of every chunk."""
    async with outputs.http() as client:
        job_id = await _submit(client, "tests/text-stream", text=WORDS, delay=0.4)
        seen: list[Any] = []

        async def watch() -> None:  # the detail while it runs
            while True:
                detail = (await client.get(f"/api/v1/jobs/{job_id}")).json()
                if detail["status"] not in ("pending", "processing"):
                    return
                seen.append(detail["output"])
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch())
        events = await all_events(client, job_id)
        await watcher
        job = await wait_terminal(client, job_id)
    assert job["status"] == "completed", job
    assert job["output"] == CHUNKS
    assert job["outputs"] == [] and job["result_url"] is None
    partial = [output for output in seen if output and len(output) < len(CHUNKS)]
    assert partial and all(_prefix(output) for output in partial), seen
    kinds = [event.event for event in events]
    # `output` events come only while the job runs: several of them, the chunks in order.
    assert kinds.count("output") >= 2 and kinds[-1] == "status", kinds
    assert _prefix(_streamed(events)), events
    assert _status(events)[-1].data["status"] == "completed"
    assert _status(events)[-1].data["output"] == CHUNKS
    assert all(event.data["attempt"] == 1 for event in events if event.event == "output")


async def test_a_resumed_event_stream_goes_on_from_the_last_chunk_it_had(
    outputs: Outputs,
) -> None:
    """Reconnecting with `Last-Event-ID` after an `output` event: the chunks that follow, none
    again."""
    async with outputs.http() as client:
        job_id = await _submit(client, "tests/text-stream", text=WORDS, delay=0.4)
        async with open_events(client, job_id) as stream:
            first: list[Event] = []
            while not first or first[-1].event != "output":
                event = await stream.next()
                assert event is not None, first
                first.append(event)
        rest = await all_events(client, job_id, last_event_id=first[-1].id)
    assert rest and not [event for event in rest if event.id == first[-1].id]
    chunks = first[-1].data["output"]
    for event in rest:
        if event.event == "output":
            assert event.data["offset"] == first[-1].data["offset"] + len(chunks), rest
            chunks = chunks + event.data["output"]
    assert _prefix(chunks) and rest[-1].data["output"] == CHUNKS, rest


async def test_an_async_generator_gives_the_list_of_its_chunks(outputs: Outputs) -> None:
    """(Cog 0.23.1 sends an async generator's items when it ends: no chunk comes earlier.)"""
    async with outputs.http() as client:
        job_id = await _submit(client, "tests/async-stream", text=WORDS, delay=0.2)
        events = await all_events(client, job_id)
        job = await wait_terminal(client, job_id)
    assert job["status"] == "completed", job
    assert job["output"] == CHUNKS and job["outputs"] == []
    assert _status(events)[-1].data["output"] == CHUNKS
    streamed = _streamed(events)
    assert streamed == CHUNKS[: len(streamed)]


async def test_a_list_of_files_is_stored_and_its_output_is_their_urls(outputs: Outputs) -> None:
    async with outputs.http() as client:
        job_id = await _submit(client, "tests/files", count=3, seed=1)
        events = await all_events(client, job_id)
        job = await wait_terminal(client, job_id)
        stored = [(await client.get(output["url"])).content for output in job["outputs"]]
    assert job["status"] == "completed", job
    assert [output["content_type"] for output in job["outputs"]] == ["image/png"] * 3
    assert all(data.startswith(b"\x89PNG") for data in stored) and len(set(stored)) == 3
    urls = [output["url"] for output in job["outputs"]]
    assert job["output"] == urls and job["result_url"] == urls[0]
    final = _status(events)[-1].data
    assert [url.split("?")[0] for url in final["output"]] == [u.split("?")[0] for u in urls]
    assert "output" not in [event.event for event in events]  # files are never streamed


async def test_a_json_object_keeps_its_shape_with_its_file_as_a_url(outputs: Outputs) -> None:
    async with outputs.http() as client:
        job_id = await _submit(client, "tests/json", text="a red fox")
        events = await all_events(client, job_id)
        job = await wait_terminal(client, job_id)
        image = (await client.get(job["output"]["image"])).content
    assert job["status"] == "completed", job
    assert [output["content_type"] for output in job["outputs"]] == ["image/png"]
    assert job["output"] == {"text": "A RED FOX", "words": ["a", "red", "fox"], "score": 2.25,
                             "image": job["outputs"][0]["url"]}
    assert image.startswith(b"\x89PNG")
    final = _status(events)[-1].data["output"]
    assert final["text"] == "A RED FOX" and final["image"].startswith("/media/"), final


async def test_a_number_is_the_output(outputs: Outputs) -> None:
    async with outputs.http() as client:
        job = await wait_terminal(client, await _submit(client, "tests/number", text="abcdef"))
    assert job["status"] == "completed", job
    assert job["output"] == 1.5
    assert job["outputs"] == [] and job["result_url"] is None
    assert job["metrics"]["bytes_stored"] == 0


async def test_an_output_past_the_cap_fails_the_job_and_stops_the_model(
    outputs: Outputs,
) -> None:
    """A stream that grows past MAX_OUTPUT_VALUE_BYTES fails its job while it runs (and the
    Cog server is told to stop); a value past it fails the job at the end. Nothing is kept."""
    async with outputs.http() as client:
        began = time.monotonic()
        streaming = await _submit(client, "tests/text-stream", text=WORDS, delay=1.0, repeat=400)
        at_once = await _submit(client, "tests/json", text="many words " * 400)
        stream_job = await wait_terminal(client, streaming)
        stopped_after = time.monotonic() - began
        value_job = await wait_terminal(client, at_once)
    for job in (stream_job, value_job):
        assert job["status"] == "failed", job
        assert "MAX_OUTPUT_VALUE_BYTES" in job["error"] and f"({CAP})" in job["error"], job
        assert job["retry_count"] == 0 and job["outputs"] == []
    assert stopped_after < 8 * 1.0, "the stream ran to its end"  # 8 chunks, 1 s apart
    server = outputs.servers["tests/text-stream"]
    deadline = time.monotonic() + 10
    while not server.says('"Prediction cancelled"'):
        assert time.monotonic() < deadline, server.tail()
        await asyncio.sleep(0.1)
    assert value_job["output"] is None
    # What streamed below the cap stays with the failed job (as Replicate shows it).
    assert values.size_of(stream_job["output"] or []) <= CAP


# --- client webhooks --------------------------------------------------------------------------

async def test_client_webhooks_carry_the_output(outputs: Outputs) -> None:
    """`progress` webhooks carry the chunks so far, `completed` the whole output, files as
    their URLs."""
    hook = f"{outputs.receiver.url}/hook/outputs"
    async with outputs.http() as client:
        streamed = await _submit(client, "tests/text-stream", text=WORDS, delay=0.3,
                                 webhook=hook + "-stream")
        shaped = await _submit(client, "tests/json", text="a webhook", webhook=hook + "-json")
        for job_id in (streamed, shaped):
            assert (await wait_terminal(client, job_id))["status"] == "completed"
    bodies = _bodies(outputs.receiver, "/hook/outputs-stream")
    completed = [body for body in bodies if body["event"] == "completed"]
    progress = [body["output"] for body in bodies if body["event"] == "progress"]
    assert len(completed) == 1 and completed[0]["output"] == CHUNKS, bodies
    assert progress and all(_prefix(chunks) for chunks in progress), progress
    [done] = [body for body in _bodies(outputs.receiver, "/hook/outputs-json")
              if body["event"] == "completed"]
    assert done["output"]["text"] == "A WEBHOOK" and done["output"]["words"] == ["a", "webhook"]
    assert done["output"]["image"].split("?")[0] == done["result_url"].split("?")[0]


async def test_v1_webhooks_carry_the_output_as_replicate_does(outputs: Outputs) -> None:
    """A prediction made through `/v1`: its webhook body is the prediction, `output` in the
    model's shape with its file as an absolute URL."""
    async with outputs.http() as client:
        created = await client.post("/v1/models/tests/json/predictions", json={
            "input": {"prompt": "p", "text": "by webhook"},
            "webhook": f"{outputs.receiver.url}/hook/v1-json",
            "webhook_events_filter": ["completed"]})
        assert created.status_code == 201, created.text
        assert (await wait_terminal(client, created.json()["id"]))["status"] == "completed"
    hits = outputs.receiver.wait("/hook/v1-json", 1)
    body = json.loads(hits[0].body)
    assert body["status"] == "succeeded" and body["id"] == created.json()["id"], body
    assert body["output"]["text"] == "BY WEBHOOK" and body["output"]["score"] == 2.5
    assert body["output"]["image"].startswith(f"{outputs.url}/media/"), body["output"]


# --- the Python client ------------------------------------------------------------------------

async def test_the_python_client_gives_each_kind_of_output(outputs: Outputs) -> None:
    async with AsyncClient(outputs.url, api_key=outputs.key) as client:
        events: list[tuple[str, dict[str, Any]]] = []
        job = await client.generate("stream", model="tests/text-stream", text=WORDS, delay=0.3)
        job = await client.wait(job.id, progress=lambda kind, data: events.append((kind, data)))
        number = await client.wait((await client.generate("n", model="tests/number",
                                                          text="abc")).id)
        shaped = await client.wait((await client.generate("j", model="tests/json")).id)
    assert job.status == "completed" and job.output == CHUNKS and job.outputs == []
    chunks = [chunk for kind, data in events if kind == "output" for chunk in data["output"]]
    assert _prefix(chunks), events
    assert number.output == 0.75
    assert shaped.output["image"] == shaped.outputs[0].url and shaped.output["score"] == 2.25


def test_the_command_line_prints_an_output_value(outputs: Outputs, tmp_path: Path) -> None:
    """`mediagen generate` has no file to download: it prints the value; `jobs show` too."""
    def mediagen(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mediagen", *args], capture_output=True,
                              text=True, timeout=60, cwd=tmp_path,
                              env={**os.environ, "MEDIAGEN_URL": outputs.url,
                                   "MEDIAGEN_API_KEY": outputs.key})

    shown = mediagen("generate", "a number", "--model", "tests/number", "--param", "text=abcd")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "1.0\n" and list(tmp_path.iterdir()) == []
    summary = mediagen("generate", "words", "--model", "tests/text-stream", "--param",
                       "text=two words", "--json")
    assert summary.returncode == 0, summary.stderr
    result = json.loads(summary.stdout)
    assert result["output"] == ["two", " words"] and result["files"] == [], result
    show = mediagen("jobs", "show", result["job_id"])
    assert show.returncode == 0, show.stderr
    assert 'output:         ["two", " words"]' in show.stdout, show.stdout


# --- the official replicate clients against /v1 ----------------------------------------------

def test_replicate_run_returns_what_the_model_returned(outputs: Outputs) -> None:
    client = outputs.replicate()
    text = client.run("tests/text-stream", input={"prompt": "p", "text": WORDS})
    async_text = client.run("tests/async-stream", input={"prompt": "p", "text": "hi there"})
    number = client.run("tests/number", input={"prompt": "p", "text": "abcdefgh"})
    shaped = client.run("tests/json", input={"prompt": "p", "text": "two words"})
    files = client.run("tests/files", input={"prompt": "p", "count": 2})
    print("replicate.run on tests/text-stream:", repr(text))
    assert text == CHUNKS and "".join(text) == WORDS
    assert async_text == ["hi", " there"]
    assert number == 2.0
    assert shaped["text"] == "TWO WORDS" and shaped["words"] == ["two", "words"]
    assert shaped["image"].startswith(f"{outputs.url}/media/")  # absolute (http: a URL)
    assert len(files) == 2 and all(url.startswith(f"{outputs.url}/media/") for url in files)
    assert httpx.get(files[0], timeout=30).content.startswith(b"\x89PNG")


def test_replicate_stream_sends_each_chunk_as_it_comes(outputs: Outputs) -> None:
    client = outputs.replicate()
    began = time.monotonic()
    arrived: list[tuple[str, float]] = []
    for event in client.stream("tests/text-stream",
                               input={"prompt": "p", "text": WORDS, "delay": 0.4}):
        arrived.append((event.event.value, time.monotonic() - began))
        if event.event.value == "output":
            arrived[-1] = (str(event), arrived[-1][1])
    kinds = [kind for kind, _ in arrived]
    assert kinds[-1] == "done", arrived
    text = [kind for kind in kinds if kind not in ("done", "logs")]
    assert text == CHUNKS, arrived
    first, last = arrived[kinds.index("one")][1], arrived[kinds.index(" eight")][1]
    assert last - first > 1.0, arrived  # not all at the end: the model took 3.2 s


def test_replicate_prediction_shows_the_chunks_so_far(outputs: Outputs) -> None:
    client = outputs.replicate()
    prediction = client.models.predictions.create(
        model="tests/text-stream", input={"prompt": "p", "text": WORDS, "delay": 0.4})
    seen = []
    while prediction.status not in ("succeeded", "failed", "canceled"):
        time.sleep(0.1)
        prediction.reload()
        if prediction.status == "processing" and prediction.output:
            seen.append(list(prediction.output))
    assert prediction.status == "succeeded" and prediction.output == CHUNKS, prediction
    partial = [output for output in seen if len(output) < len(CHUNKS)]
    assert partial and all(output == CHUNKS[: len(output)] for output in partial), seen


# --- pieces -----------------------------------------------------------------------------------

def test_values_split_and_show_files_in_place() -> None:
    def is_file(text: str) -> bool:
        return text.startswith("data:")

    value = {"caption": "a fox", "frames": ["data:a", "text", "data:b"], "n": 3}
    skeleton, files = values.split(value, is_file)
    assert skeleton == {"caption": "a fox", "frames": [None, "text", None], "n": 3}
    assert files == [(("frames", 0), "data:a"), (("frames", 2), "data:b")]
    stored = [{"key": "k0", "at": ["frames", 0]}, {"key": "k1", "at": ["frames", 2]}]
    assert values.shown(skeleton, stored, ["/u0", "/u1"]) == {
        "caption": "a fox", "frames": ["/u0", "text", "/u1"], "n": 3}
    assert skeleton["frames"] == [None, "text", None]  # shown does not change what is stored
    assert values.shown(None, [{"key": "k", "at": []}], ["/u"]) == "/u"  # one file
    assert values.shown(None, [{"key": "a"}, {"key": "b"}], ["/a", "/b"]) == ["/a", "/b"]
    assert values.shown(["so", " far"], [], []) == ["so", " far"]
    assert values.streamed(["a", " b", {"img": "data:x"}, " c"], is_file) == ["a", " b"]
    assert values.streamed("not a list", is_file) is None
    assert values.check({"a": "b"}, 100) == len(b'{"a":"b"}')
    with pytest.raises(OutputTooLargeError, match=r"MAX_OUTPUT_VALUE_BYTES \(10\)"):
        values.check("x" * 20, 10)


def test_the_javascript_client_runs_and_streams_a_text_model(
    outputs: Outputs, replicate_js: Path, tmp_path: Path  # noqa: F811
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"base": f"{outputs.url}/v1", "auth": outputs.key,
                                  "model": "tests/text-stream", "text": WORDS,
                                  "out": str(tmp_path)}))
    result = subprocess.run(["node", str(JS), "textStream", str(config)], capture_output=True,
                            text=True, timeout=120, check=False,
                            env={**os.environ, "REPLICATE_JS": str(replicate_js)})
    assert result.returncode == 0, result.stderr[-4000:]
    seen = json.loads(result.stdout)
    assert seen["output"] == CHUNKS
    events = seen["events"]
    assert [e["data"] for e in events if e["event"] == "output"] == CHUNKS, events
    assert events[-1]["event"] == "done", events
