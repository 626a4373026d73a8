"""Model routing by a models file (MODELS_FILE): the file is checked at start-up (a bad one
stops `mediagen api` with one line), it is the allow-list, a job's `model` picks its provider in
one stack that runs both the built-in generator and Replicate (the fake, over HTTP), and
`GET /api/v1/models` lists it. Without the file, nothing changes (the rest of the suite)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mediagen.catalog import CatalogError, ModelNotAllowedError, load_catalog
from mediagen.config import Settings
from tests.conftest import ROOT
from tests.fakes.replicate import FakeReplicate
from tests.stack import InProcess, in_process
from tests.support import wait_terminal

MODELS = """
[models."mediagen/builtin"]
provider = "builtin"
default = true

[models."acme/flux"]
provider = "replicate"
ref = "black-forest-labs/flux-schnell"

[models."stability-ai/sdxl"]
provider = "replicate"
"""

SMALL = {"width": 64, "height": 64}


def settings(path: Path | None, **values: str) -> Settings:
    return Settings(_env_file=None, models_file=path, **values)  # type: ignore[arg-type]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


# --- the file ---------------------------------------------------------------------------------

def test_the_file_routes_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, MODELS + """
[models."acme/fox"]
provider = "cog"
deadline = 90
[[models."acme/fox".endpoints]]
url = "http://gpu-1:5000/"
slots = 2
[[models."acme/fox".endpoints]]
url = "https://gpu-2.internal"
""")
    catalog = load_catalog(settings(path, replicate_api_token="r8_x"))
    assert catalog.from_file and catalog.default.name == "mediagen/builtin"
    assert catalog.route(None) is catalog.default
    flux = catalog.route("acme/flux")
    assert (flux.provider, flux.ref, flux.listed) == ("replicate", "black-forest-labs/flux-schnell", True)
    fox = catalog.route("acme/fox")
    assert fox.provider == "cog" and fox.deadline == 90
    assert [(e.url, e.slots) for e in fox.endpoints] == [("http://gpu-1:5000", 2),
                                                        ("https://gpu-2.internal", 1)]
    assert [m.name for m in catalog.models()] == [
        "mediagen/builtin", "acme/flux", "acme/fox", "stability-ai/sdxl"]
    assert catalog.providers() == {"builtin", "replicate", "cog"}
    with pytest.raises(ModelNotAllowedError) as refused:
        catalog.route("black-forest-labs/flux-schnell")  # Replicate's name, not ours
    assert refused.value.details["allowed"] == [
        "acme/flux", "acme/fox", "mediagen/builtin", "stability-ai/sdxl"]
    # A job's row finds its route again; one whose model left the file keeps its provider.
    assert catalog.for_job("cog", "acme/fox") is fox
    gone = catalog.for_job("cog", "acme/gone")
    assert (gone.provider, gone.endpoints, gone.listed) == ("cog", (), False)


def test_without_a_default_entry_the_settings_default_applies(tmp_path: Path) -> None:
    path = write(tmp_path, '[models."acme/painter"]\nprovider = "builtin"\n')
    catalog = load_catalog(settings(path))
    default = catalog.route(None)
    assert (default.name, default.provider, default.listed) == (
        "black-forest-labs/flux-schnell", "builtin", False)
    assert catalog.job_model(default, None) is None  # as before: the job names no model
    with_token = load_catalog(settings(path, replicate_api_token="r8_x"))
    assert with_token.route(None).provider == "replicate"


def test_without_a_file_the_settings_rule() -> None:
    catalog = load_catalog(settings(None, allowed_models="acme/*"))
    assert not catalog.from_file
    route = catalog.route("acme/painter")
    assert (route.provider, catalog.job_model(route, "acme/painter")) == ("builtin", "acme/painter")
    assert catalog.job_model(catalog.route(None), None) is None
    with pytest.raises(ModelNotAllowedError):
        catalog.route("black-forest-labs/flux-schnell")  # ALLOWED_MODELS as today
    assert [(m.name, m.default) for m in catalog.models()] == [
        ("black-forest-labs/flux-schnell", True), ("acme/*", False)]


async def test_the_registry_holds_one_provider_per_kind(tmp_path: Path) -> None:
    from mediagen.errors import PermanentProviderError
    from mediagen.providers.registry import create_providers

    path = write(tmp_path, MODELS + """
[models."acme/fox"]
provider = "cog"
[[models."acme/fox".endpoints]]
url = "http://127.0.0.1:9"
""")
    routed = create_providers(settings(path, replicate_api_token="r8_x"))
    try:
        assert {kind: routed.get(kind).name for kind in ("builtin", "replicate", "cog")} == {
            "builtin": "builtin", "replicate": "replicate", "cog": "cog"}
        assert routed.get("cog") is routed.get("cog")  # shared
        with pytest.raises(PermanentProviderError, match="unknown provider"):
            routed.get("dall-e")
    finally:
        await routed.close()
    plain = create_providers(settings(None))  # no file, no token: the built-in generator only
    try:
        assert plain.get("builtin").name == "builtin"
        for kind, why in (("replicate", "REPLICATE_API_TOKEN is unset"),
                          ("cog", "MODELS_FILE has no cog model")):
            with pytest.raises(PermanentProviderError, match=why):
                plain.get(kind)
    finally:
        await plain.close()


@pytest.mark.parametrize(("text", "problem"), [
    ("models = {}", "models: must not be empty"),
    ('[models."acme/fox"]\nprovider = "cog"\n', "a cog model needs at least one endpoint"),
    ('[models."acme/fox"]\nprovider = "cog"\n[[models."acme/fox".endpoints]]\n'
     'url = "http://gpu:5000"\nslots = 0\n',
     'models."acme/fox".endpoints[0].slots: Input should be greater than or equal to 1'),
    ('[models."acme/fox"]\nprovider = "cog"\n[[models."acme/fox".endpoints]]\n'
     'url = "ftp://gpu:5000"\n', "'ftp://gpu:5000' is not an http(s) URL"),
    ('[models."Acme Fox"]\nprovider = "builtin"\n', "not a model name"),
    ('[models."acme/fox"]\nprovider = "dall-e"\n', "Input should be 'builtin', 'replicate' or 'cog'"),
    ('[models."acme/fox"]\nprovider = "builtin"\nref = "a/b"\n', "ref is for replicate models"),
    ('[models."acme/fox"]\nprovider = "builtin"\ncolour = "red"\n', 'models."acme/fox".colour: unknown key'),
    ('[models."a/b"]\nprovider = "builtin"\ndefault = true\n'
     '[models."c/d"]\nprovider = "builtin"\ndefault = true\n', "only one model can be the default"),
    ('[models."acme/fox"\nprovider = "builtin"\n', "not valid TOML"),
    ('[models."acme/flux"]\nprovider = "replicate"\n', "needs REPLICATE_API_TOKEN"),
])
def test_a_bad_file_says_what_is_wrong(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as bad:
        load_catalog(settings(path))
    message = str(bad.value)
    assert message.startswith(f"models file {path}: ") and "\n" not in message
    assert problem in message, message


_COG = '[models."acme/fox"]\nprovider = "cog"\n{extra}[[models."acme/fox".endpoints]]\nurl = "http://gpu:5000"\n'


def test_a_cog_model_takes_its_schema_from_a_file_beside_the_models_file(tmp_path: Path) -> None:
    import json

    (tmp_path / "fox").mkdir()
    (tmp_path / "fox" / "openapi.json").write_text(json.dumps(COG_OPENAPI))
    path = write(tmp_path, _COG.format(extra='schema = "fox/openapi.json"\n'))
    fox = load_catalog(settings(path)).route("acme/fox")
    assert fox.input_schema is not None and fox.input_schema["required"] == ["prompt"]
    assert fox.input_schema["$defs"]["size"]["enum"] == [256, 512]  # self-contained
    plain = load_catalog(settings(write(tmp_path, _COG.format(extra="")))).route("acme/fox")
    assert plain.input_schema is None  # its servers' own, if they publish one


@pytest.mark.parametrize(("content", "problem"), [
    (None, "fox.json cannot be read"),
    ("{not json", "fox.json is not JSON"),
    ('{"openapi": "3.0.2", "components": {"schemas": {}}}', "has no components.schemas.Input"),
    ('{"components": {"schemas": {"Input": {"type": "mystery"}}}}',
     "the Input schema is not valid"),
])
def test_a_schema_file_that_cannot_be_used_stops_start_up(tmp_path: Path, content: str | None,
                                                          problem: str) -> None:
    if content is not None:
        (tmp_path / "fox.json").write_text(content)
    path = write(tmp_path, _COG.format(extra='schema = "fox.json"\n'))
    with pytest.raises(CatalogError) as bad:
        load_catalog(settings(path))
    message = str(bad.value)
    assert message.startswith(f'models file {path}: models."acme/fox".schema: '), message
    assert problem in message and "\n" not in message, message
    builtin = write(tmp_path, '[models."acme/fox"]\nprovider = "builtin"\nschema = "x.json"\n')
    with pytest.raises(CatalogError, match="schema is for cog models, not builtin"):
        load_catalog(settings(builtin))


def test_inputs_are_checked_by_the_models_own_names() -> None:
    """What a Cog job sends and what its schema refuses (mediagen.catalog.schemas), as Cog's
    server checks it: choices come through `$defs`, and a null only where the type allows it
    (`nullable` or not: Cog 0.23 refuses it there)."""
    from mediagen.catalog.schemas import cog_input, model_inputs, names, problems, sends_prompt

    schema = cog_input(COG_OPENAPI)
    assert schema is not None
    schema["properties"]["seed"] = {"type": "integer", "nullable": True, "x-order": 1}
    assert names(schema) == ["prompt", "seed", "size"]  # by x-order, the unordered last
    assert sends_prompt(schema, "a fox") and not sends_prompt(schema, "")
    assert sends_prompt(None, "a fox")  # unknown schema: the prompt the caller gave goes
    assert not sends_prompt({"properties": {}}, "a label")  # no such input: a label only
    assert model_inputs({"properties": {}}, "a label", {"n": 1}) == {"n": 1}
    assert problems(schema, {"prompt": "p", "size": 512, "seed": 3}) == []
    found = problems(schema, {"size": 300, "seed": None, "colour": 1})
    assert [(p.loc, p.type) for p in found] == [
        (("colour",), "unknown"), (("prompt",), "missing"), (("seed",), "type"),
        (("size",), "enum")]
    assert found[0].msg == "not an input of this model (its inputs are prompt, seed, size)"
    assert [p.msg for p in found[2:]] == ["None is not of type 'integer'",
                                         "300 is not one of [256, 512]"]
    long = problems({"properties": {"n": {"type": "integer"}}}, {"n": "x" * 5000})
    assert len(long[0].msg) == 200 and long[0].msg.endswith("...")


def test_models_file_and_allowed_models_are_not_both_set(tmp_path: Path) -> None:
    path = write(tmp_path, MODELS)
    with pytest.raises(CatalogError, match="ALLOWED_MODELS is set too"):
        load_catalog(settings(path, allowed_models="acme/*", replicate_api_token="r8_x"))
    with pytest.raises(CatalogError, match="cannot be read"):
        load_catalog(settings(tmp_path / "missing.toml"))


@pytest.mark.parametrize("command", ["api", "worker"])
def test_a_bad_models_file_stops_the_server_in_one_line(tmp_path: Path, command: str) -> None:
    path = write(tmp_path, '[models."acme/fox"]\nprovider = "cog"\n')
    result = subprocess.run([sys.executable, "-m", "mediagen", command], cwd=ROOT,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "MODELS_FILE": str(path), "API_PORT": "1"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f'mediagen: models file {path}: models."acme/fox": '
        "a cog model needs at least one endpoint ([[...endpoints]])"], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


# --- a stack that routes --------------------------------------------------------------------

@dataclass
class Stack:
    app: InProcess
    fake: FakeReplicate


@pytest.fixture(scope="module")
async def routed(database: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[Stack]:
    """The application and its worker with MODELS_FILE, in-process, on a queue of their own,
    Replicate being the fake (over HTTP)."""
    path = write(tmp_path_factory.mktemp("models"), MODELS)
    with FakeReplicate(latency=0.2) as fake:
        env = {"MODELS_FILE": str(path), "REPLICATE_API_TOKEN": fake.config.token,
               "REPLICATE_BASE_URL": fake.url, "DOWNLOAD_ALLOW_PRIVATE": "true",
               "POLL_INTERVAL": "0.2"}
        async with in_process(env, worker=True) as app:
            yield Stack(app, fake)


async def test_each_job_runs_where_its_model_says(routed: Stack) -> None:
    async with routed.app.client() as client:
        ids = {}
        for model in (None, "mediagen/builtin", "acme/flux", "stability-ai/sdxl"):
            body = {"prompt": f"a fox for {model}", "parameters": SMALL}
            if model is not None:
                body["model"] = model
            created = await client.post("/api/v1/generate", json=body)
            assert created.status_code == 201, created.text
            ids[model] = created.json()["job_id"]
        jobs = {model: await wait_terminal(client, job_id, 20) for model, job_id in ids.items()}
    assert all(job["status"] == "completed" for job in jobs.values()), jobs
    assert [(job["model"], job["provider"]) for job in jobs.values()] == [
        ("mediagen/builtin", "builtin"), ("mediagen/builtin", "builtin"),
        ("acme/flux", "replicate"), ("stability-ai/sdxl", "replicate")]
    assert jobs[None]["prediction_id"].startswith("builtin-")
    # Replicate was asked for the entry's `ref`, or for the public name when it has none.
    asked = {p.id: p.model for p in routed.fake.state.predictions.values()}
    assert asked[jobs["acme/flux"]["prediction_id"]] == "black-forest-labs/flux-schnell"
    assert asked[jobs["stability-ai/sdxl"]["prediction_id"]] == "stability-ai/sdxl"


async def test_a_cancel_reaches_the_provider_of_the_job(routed: Stack) -> None:
    """The worker's default provider is the built-in one: the cancel of a Replicate job must
    still go to Replicate (the job's row says where)."""
    import asyncio
    import time
    import uuid

    cancels = routed.fake.stats.cancels
    async with routed.app.client() as client:
        created = await client.post("/api/v1/generate", json={
            "prompt": f"[fake:stuck] {uuid.uuid4()}", "model": "acme/flux"})
        job_id = created.json()["job_id"]
        for _ in range(200):  # until the prediction is recorded
            job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
            if job["prediction_id"]:
                break
            await asyncio.sleep(0.05)
        assert job["prediction_id"] and job["provider"] == "replicate", job
        canceled = await client.post(f"/api/v1/jobs/{job_id}/cancel")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    deadline = time.monotonic() + 10
    while routed.fake.stats.cancels == cancels and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert routed.fake.stats.cancels == cancels + 1


async def test_a_model_not_in_the_file_is_refused(routed: Stack) -> None:
    async with routed.app.client() as client:
        for model in ("black-forest-labs/flux-schnell", "evil/miner"):
            refused = await client.post("/api/v1/generate", json={
                "prompt": "p", "model": model, "parameters": SMALL})
            assert refused.status_code == 422, refused.text
            body = refused.json()
            assert body["code"] == "model_not_allowed"
            assert body["allowed"] == ["acme/flux", "mediagen/builtin", "stability-ai/sdxl"]


async def test_models_lists_the_file(routed: Stack) -> None:
    async with routed.app.client() as client:
        listed = await client.get("/api/v1/models")
        schema = (await client.get("/openapi.json")).json()
    assert listed.status_code == 200, listed.text
    models = listed.json()["data"]
    assert [(m["name"], m["provider"], m["default"]) for m in models] == [
        ("mediagen/builtin", "builtin", True), ("acme/flux", "replicate", False),
        ("stability-ai/sdxl", "replicate", False)]
    builtin = models[0]["input_schema"]
    assert {"width", "height", "num_inference_steps", "seed"} <= set(builtin["properties"])
    assert models[1]["input_schema"] is None and models[2]["input_schema"] is None
    operation = schema["paths"]["/api/v1/models"]["get"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ModelList"}


async def test_models_without_a_file(client: httpx.AsyncClient) -> None:
    """The session's stack has no MODELS_FILE: the default model, on the built-in generator."""
    listed = await client.get("/api/v1/models")
    assert listed.status_code == 200, listed.text
    [model] = listed.json()["data"]
    assert (model["name"], model["provider"], model["default"]) == (
        "black-forest-labs/flux-schnell", "builtin", True)
    assert "width" in model["input_schema"]["properties"]


# --- Cog input schemas ----------------------------------------------------------------------

COG_OPENAPI = {
    "openapi": "3.0.2",
    "components": {"schemas": {
        "Input": {"title": "Input", "type": "object", "required": ["prompt"], "properties": {
            "prompt": {"title": "Prompt", "type": "string", "x-order": 0},
            "size": {"allOf": [{"$ref": "#/components/schemas/size"}], "default": 512},
        }},
        "size": {"title": "size", "enum": [256, 512], "type": "integer"},
        "Output": {"type": "string", "format": "uri"},
    }},
}


class _Server:
    """A real HTTP server on loopback answering GET /openapi.json with `status` and `body`."""

    def __init__(self, status: int, body: object) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        owner = self
        self.hits = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                payload = json.dumps(body).encode()
                self.send_response(status if self.path == "/openapi.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


async def test_cog_input_schema_is_fetched_once_and_self_contained() -> None:
    from mediagen.catalog import Endpoint, ModelRoute
    from mediagen.catalog.listing import InputSchemas
    from mediagen.outbound import Outbound
    from tests.support import free_port

    good, broken = _Server(200, COG_OPENAPI), _Server(404, {"detail": "Not Found"})
    dead = f"http://127.0.0.1:{free_port()}"
    outbound = Outbound()
    schemas = InputSchemas(outbound, {"builtin": True})
    try:
        fox = ModelRoute("acme/fox", "cog", (Endpoint(dead, 1), Endpoint(broken.url, 1),
                                             Endpoint(good.url, 1)))
        schema = await schemas.of(fox)
        assert schema is not None and schema["required"] == ["prompt"]
        # Cog's choices live in components of their own: carried along, refs rewritten.
        assert schema["properties"]["size"]["allOf"] == [{"$ref": "#/$defs/size"}]
        assert schema["$defs"] == {"size": COG_OPENAPI["components"]["schemas"]["size"]}
        assert await schemas.of(fox) == schema and good.hits == 1  # cached
        unbuilt = ModelRoute("acme/unbuilt", "cog", (Endpoint(broken.url, 1),))
        assert await schemas.of(unbuilt) is None  # an error answer: null
        assert await schemas.of(ModelRoute("acme/flux", "replicate")) is None
        assert await schemas.of(ModelRoute("mediagen/builtin", "builtin")) == {"builtin": True}
    finally:
        await outbound.close()
        good.close()
        broken.close()
