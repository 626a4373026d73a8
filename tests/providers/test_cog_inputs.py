"""A Cog model's own inputs, end to end, against real Cog servers (Cog's HTTP server from PyPI,
`tests/cog_servers.py`) running three small models of the shapes Replicate's examples use
(tests/fakes/cog_models/), routed by one models file to an API and a worker of their own:

- `acme/still`: no input, one image file (`BaseRunner.run`); its server publishes no schema,
  the models file gives the `openapi.json` that `cog build` writes (`schema = ...`).
- `acme/words`: a `text` input, text streamed back (`BasePredictor.predict`, the older style);
  no schema anywhere: its inputs go to it unchecked.
- `acme/typed`: a required input and typed ones (an async `run`), files back; its server
  publishes its schema.

Driven through `/api/v1` (HTTP and the Python client `mediagen.client`), a batch, and `/v1`
with the official replicate clients (Python, and npm's `replicate.run`). A job sends exactly the
inputs the caller gave: a model that takes no `prompt` never gets one, and nothing of mediagen's
(width, height...) is added, or the model's `TypeError` would fail the job.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
from replicate.exceptions import ModelError, ReplicateError

from mediagen.client import AsyncClient
from mediagen.client import ValidationError as ClientValidationError
from tests.cog_servers import CogServer, cog_venv  # noqa: F401 - the fixture, for this module
from tests.conftest import ROOT
from tests.replicate_api.test_js_client import replicate_js  # noqa: F401 - the fixture
from tests.stack import Stacks
from tests.support import wait_terminal

MODELS = ROOT / "tests" / "fakes" / "cog_models"
NAMES = ("still", "words", "typed")
SCRIPT = Path(__file__).parent / "js" / "cog_run.mjs"


@dataclass
class Setup:
    url: str
    servers: dict[str, CogServer]
    worker_log: Path

    def replicate(self) -> replicate.Client:
        """The official client as a user makes it: only its base URL changed (no key: the
        stack requires none)."""
        return replicate.Client(api_token=None, base_url=self.url)


def _models_file(folder: Path, servers: dict[str, CogServer]) -> Path:
    """The models file, with `still`'s schema beside it (a path relative to the file)."""
    (folder / "schemas").mkdir()
    shutil.copy(MODELS / "still" / "openapi.json", folder / "schemas" / "still.json")
    text = ""
    for name, server in servers.items():
        text += f'[models."acme/{name}"]\nprovider = "cog"\ndeadline = 60\n'
        if name == "still":
            text += 'schema = "schemas/still.json"\n'
        text += f'[[models."acme/{name}".endpoints]]\nurl = "{server.url}"\nslots = 2\n\n'
    path = folder / "models.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def setup(stacks: Stacks, cog_venv: Path,  # noqa: F811
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("cog-inputs")
    servers = {name: CogServer(cog_venv, folder / f"cog-{name}.log", model=MODELS / name)
               for name in NAMES}
    try:
        for server in servers.values():
            server.start()
        from tests.support import free_port

        port = free_port()
        env = {"MODELS_FILE": str(_models_file(folder, servers)),
               "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
               "COG_WEBHOOK_SECRET": "test-cog-inputs-secret"}
        with stacks.own(env, name="cog-inputs", port=port) as stack:
            assert stack.worker is not None
            yield Setup(stack.url, servers, stack.worker.log)
    finally:
        for server in servers.values():
            server.stop()


async def _job(setup: Setup, body: dict[str, Any], timeout: float = 40) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=setup.url, timeout=30) as client:
        created = await client.post("/api/v1/generate", json=body)
        assert created.status_code == 201, created.text
        return await wait_terminal(client, created.json()["job_id"], timeout)


async def _stored(setup: Setup, job: dict[str, Any]) -> list[bytes]:
    async with httpx.AsyncClient(base_url=setup.url, timeout=30) as client:
        return [(await client.get(output["url"])).content for output in job["outputs"]]


# --- no input, a file back -----------------------------------------------------------------------

async def test_a_model_without_inputs_gets_none_and_the_prompt_stays_a_label(setup: Setup
                                                                             ) -> None:
    job = await _job(setup, {"prompt": "a still life", "model": "acme/still"})
    assert job["status"] == "completed", job
    assert job["prompt"] == "a still life" and job["parameters"] == {}  # no default added
    assert [o["content_type"] for o in job["outputs"]] == ["image/png"]
    assert (await _stored(setup, job))[0].startswith(b"\x89PNG")


def test_replicate_run_with_no_input_gives_the_file(setup: Setup) -> None:
    output = setup.replicate().run("acme/still", input={})
    print(f"replicate.run('acme/still', input={{}}) -> {output!r}")
    # Over plain HTTP the client gives the output's URL itself (it wraps only https: ones): the
    # one file's (a list of one, where the output is listed as a list).
    [url] = output if isinstance(output, list) else [output]
    assert isinstance(url, str) and url.startswith(f"{setup.url}/"), output
    assert httpx.get(url, timeout=30).content.startswith(b"\x89PNG")
    prediction = setup.replicate().predictions.create(model="acme/still", input={})
    prediction.wait()
    assert prediction.status == "succeeded" and prediction.input == {}, prediction.error


def test_npm_replicate_run_with_no_input_gives_the_file(setup: Setup,
                                                        replicate_js: Path  # noqa: F811
                                                        ) -> None:
    result = subprocess.run(
        ["node", str(SCRIPT), f"{setup.url}/v1", "acme/still"], capture_output=True, text=True,
        timeout=120, check=False,
        env={**os.environ, "REPLICATE_JS": str(replicate_js), "REPLICATE_API_TOKEN": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout)["output"]
    [url] = output if isinstance(output, list) else [output]
    assert isinstance(url, str) and url.startswith(f"{setup.url}/"), output
    assert httpx.get(url, timeout=30).content.startswith(b"\x89PNG")


async def test_the_models_file_schema_refuses_inputs_the_model_does_not_take(setup: Setup
                                                                             ) -> None:
    async with httpx.AsyncClient(base_url=setup.url, timeout=30) as client:
        refused = await client.post("/api/v1/generate", json={
            "prompt": "a still life", "model": "acme/still", "parameters": {"width": 64}})
        listed = (await client.get("/api/v1/models")).json()["data"]
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["code"] == "validation_error"
    assert body["detail"] == "parameters.width: not an input of this model (it takes no inputs)"
    assert body["errors"] == [{"loc": ["body", "parameters", "width"], "type": "unknown",
                               "msg": "not an input of this model (it takes no inputs)"}]
    schemas = {model["name"]: model["input_schema"] for model in listed}
    assert schemas["acme/still"] == {"title": "Input", "type": "object", "properties": {}}
    assert schemas["acme/words"] is None  # published nowhere: inputs pass unchecked
    assert schemas["acme/typed"]["required"] == ["text"]  # its server's
    assert schemas["acme/typed"]["properties"]["mode"]["allOf"] == [{"$ref": "#/$defs/mode"}]
    with pytest.raises(ReplicateError) as refused_v1:  # on /v1 a prompt is an input like any
        setup.replicate().run("acme/still", input={"width": 64, "prompt": "a still life"})
    assert refused_v1.value.status == 422
    assert refused_v1.value.detail == (
        "input.width: not an input of this model (it takes no inputs); "
        "input.prompt: not an input of this model (it takes no inputs)")


# --- text in, text streamed back (no schema) ---------------------------------------------------

def test_a_text_model_gets_exactly_its_text(setup: Setup) -> None:
    text = f"hello there {uuid.uuid4().hex}"
    prediction = setup.replicate().predictions.create(model="acme/words", input={"text": text})
    prediction.wait()
    assert prediction.input == {"text": text}
    # It ran with its text and nothing else: another input fails it with a TypeError before it
    # logs a word (below). What it streams back is the outputs' business, not the inputs'.
    assert setup.servers["words"].says(f"given text='{text}'"), setup.servers["words"].tail()
    assert "TypeError" not in (prediction.error or ""), prediction.error
    assert prediction.status == "succeeded", prediction.error
    assert "".join(prediction.output).split() == text.split()  # chunks, as Replicate gives them


async def test_an_input_the_model_refuses_fails_with_its_own_message_once(setup: Setup) -> None:
    """No schema is known for `words`: the inputs go as given, and the model's own error comes
    back, once, without the server's `Prediction failed: ` in front."""
    with pytest.raises(ModelError) as failed:
        setup.replicate().run("acme/words", input={"text": "hi", "height": 64})
    error = str(failed.value)
    assert error == "TypeError: Predictor.predict() got an unexpected keyword argument 'height'"
    # Through /api/v1 without a schema, the prompt the caller gave is an input too.
    job = await _job(setup, {"prompt": "a label", "model": "acme/words",
                             "parameters": {"text": "hi"}})
    assert job["status"] == "failed"
    assert job["error"] == (
        "TypeError: Predictor.predict() got an unexpected keyword argument 'prompt'")


# --- typed inputs, a schema the server publishes -----------------------------------------------

BAD = {"count": "three", "mode": "shout", "shade": 2, "colour": "red"}
BAD_WHERE = {"colour": "not an input of this model (its inputs are text, count, mode, shade, "
                       "seed)",
             "text": "Field required", "count": "'three' is not of type 'integer'",
             "mode": "'shout' is not one of ['plain', 'loud']",
             "shade": "2 is greater than the maximum of 1"}


async def test_typed_inputs_are_refused_at_submit_by_the_models_own_names(setup: Setup
                                                                         ) -> None:
    async with httpx.AsyncClient(base_url=setup.url, timeout=30) as client:
        before = (await client.get("/api/v1/jobs", params={"model": "acme/typed"})).json()
        single = await client.post("/api/v1/generate", json={
            "prompt": "a label", "model": "acme/typed", "parameters": BAD})
        batch = await client.post("/api/v1/batches", json={"jobs": [
            {"prompt": "fine", "model": "acme/typed", "parameters": {"text": "ok"}},
            {"prompt": "not fine", "model": "acme/typed", "parameters": {"count": 9}}]})
        after = (await client.get("/api/v1/jobs", params={"model": "acme/typed"})).json()
    assert single.status_code == 422, single.text
    errors = single.json()["errors"]
    assert {e["loc"][-1]: e["msg"] for e in errors} == BAD_WHERE
    assert all(e["loc"][:2] == ["body", "parameters"] for e in errors)
    assert batch.status_code == 422, batch.text
    assert batch.json()["detail"] == ("jobs[1]: parameters.text: Field required; "
                                      "parameters.count: 9 is greater than the maximum of 3")
    assert batch.json()["errors"][0]["loc"] == ["body", "jobs", 1, "parameters", "text"]
    assert after["data"] == before["data"]  # nothing was accepted
    with pytest.raises(ReplicateError) as refused:
        setup.replicate().predictions.create(model="acme/typed", input={"count": 0})
    assert refused.value.status == 422
    assert refused.value.detail == ("input.text: Field required; "
                                    "input.count: 0 is less than the minimum of 1")
    async with AsyncClient(setup.url) as mediagen:
        with pytest.raises(ClientValidationError) as by_client:
            await mediagen.generate("a label", model="acme/typed", text="ok", seed=None)
    # As Cog's server checks it: a null only where the type allows one (`nullable` or not).
    assert "parameters.seed: None is not of type 'integer'" in str(by_client.value)


async def test_typed_inputs_reach_the_model_as_given(setup: Setup) -> None:
    async with AsyncClient(setup.url) as mediagen:
        job = await mediagen.generate("a label", model="acme/typed", text="two reds", count=2,
                                      mode="loud", seed=7)
        done = await mediagen.wait(job.id)
    assert done.status == "completed", done.error
    assert len(done.outputs) == 2
    assert done.parameters == {"text": "two reds", "count": 2, "mode": "loud", "seed": 7}
    # Its defaults are the model's own; no prompt (it has no such input), nothing of mediagen's.
    assert "given text='two reds' count=2 mode=loud shade=0.5 seed=7" in (done.logs or "")
    output = setup.replicate().run("acme/typed", input={"text": "one"})
    assert isinstance(output, list) and len(output) == 1, output
