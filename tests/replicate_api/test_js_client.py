"""The official JavaScript client (npm `replicate@1.4.0`, on the machine's Node) against
mediagen's `/v1`, its files API included: js/run.mjs runs one step per process and reports what
it saw as JSON.

The package is installed once into a cache folder outside the repository. Node and npm are
tools of every machine of ours (scripts/ensure-tools.sh installs them): missing, these tests
fail under CI and skip elsewhere, as the other tool-bound tests do."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TMP
from tests.files.images import mean_color, png
from tests.replicate_api.conftest import READS, Stack, job_detail, stored_bytes

VERSION = "1.4.0"
SCRIPT = Path(__file__).parent / "js" / "run.mjs"
RED = (230, 20, 20)
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mediagen-tests"


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}; CI must run these tests")
    pytest.skip(reason)


@pytest.fixture(scope="package")  # before the stack: no stack is started to be skipped
def replicate_js() -> Path:
    """The package's folder, installed with npm on first use (into a temporary folder renamed
    into place, so two runs at once never see half an install)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        _missing("node and npm are not installed (Debian packages nodejs and npm: "
                 "scripts/ensure-tools.sh)")
    home = CACHE / f"replicate-js-{VERSION}"
    package = home / "node_modules" / "replicate"
    if not (package / "package.json").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="replicate-js-", dir=CACHE))
        result = subprocess.run(
            [str(npm), "install", "--prefix", str(staging), "--no-audit", "--no-fund",
             "--no-save", f"replicate@{VERSION}"],
            capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            pytest.fail(f"npm install replicate@{VERSION} failed:\n{result.stderr[-3000:]}")
        try:
            staging.rename(home)
        except OSError:  # another run got there first
            shutil.rmtree(staging, ignore_errors=True)
    installed = json.loads((package / "package.json").read_text())["version"]
    assert installed == VERSION, f"{package} holds replicate {installed}"
    return package


@pytest.fixture(scope="module")
def config(stack: Stack) -> Iterator[Path]:
    out = TMP / "replicate-js"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.json"
    image = out / "red.png"
    image.write_bytes(png(RED, (128, 128)))
    path.write_text(json.dumps({
        "base": f"{stack.tls}/v1",  # the JavaScript client's base URL ends in /v1
        "slow": f"{stack.slow}/v1",
        "auth": stack.keys["jsuser"].secret,
        "listerAuth": stack.keys["jslister"].secret,
        "otherAuth": stack.keys["bob"].secret,
        "limited": f"{stack.limited}/v1",
        "limitedAuth": stack.keys["jsreader"].secret,
        "otherWebhookSecret": stack.keys["bob"].webhook_secret,
        "filerAuth": stack.keys["jsfiler"].secret,
        "image": str(image),
        "out": str(out),
    }))
    yield path


def node(replicate_js: Path, stack: Stack, config: Path, step: str) -> Any:
    result = subprocess.run(
        ["node", str(SCRIPT), step, str(config)], capture_output=True, text=True, timeout=150,
        env={**os.environ, "REPLICATE_JS": str(replicate_js),
             "NODE_EXTRA_CA_CERTS": str(stack.cert)}, check=False)
    assert result.returncode == 0, f"{step}: {result.stderr[-4000:]}"
    return json.loads(result.stdout)


@pytest.fixture
def run_step(replicate_js: Path, stack: Stack, config: Path) -> Any:
    return lambda step: node(replicate_js, stack, config, step)


def test_run_gives_file_outputs_with_the_stored_bytes(stack: Stack, run_step: Any) -> None:
    seen = run_step("run")
    files = seen["files"]
    assert len(files) == 2 and all(item["fileOutput"] for item in files), files
    assert all(item["url"].startswith(f"{stack.tls}/") for item in files)
    written = [Path(item["path"]).read_bytes() for item in files]
    assert written == stored_bytes(stack, stack.keys["jsuser"].secret, seen["id"])
    assert written[0].startswith(b"\x89PNG")


def test_run_pinned_to_the_version_models_get_gives(run_step: Any) -> None:
    seen = run_step("version")
    assert len(seen["version"]) == 64
    assert {"prompt", "width", "height"} <= set(seen["inputs"])
    assert Path(seen["files"][0]["path"]).read_bytes().startswith(b"\x89PNG")


def test_create_wait_and_get(stack: Stack, run_step: Any) -> None:
    seen = run_step("create")
    created, waited, got = seen["created"], seen["waited"], seen["got"]
    assert created["status"] == "starting" and created["model"] == "mediagen/builtin"
    assert created["urls"]["get"] == f"{stack.tls}/v1/predictions/{created['id']}"
    assert waited["status"] == "succeeded" and waited["output"], waited
    assert got["id"] == created["id"] and got["status"] == "succeeded"
    assert got["output"] == waited["output"] and got["completed_at"]
    detail = job_detail(stack, stack.keys["jsuser"].secret, created["id"])
    assert detail["status"] == "completed"


def test_paginate_walks_every_page(run_step: Any) -> None:
    seen = run_step("paginate")
    pages = seen["pages"]
    listed = [prediction for page in pages for prediction in page]
    assert len(pages) >= 2
    assert listed == list(reversed(seen["created"])), "not every prediction, newest first"


def test_cancel_a_running_prediction(run_step: Any) -> None:
    seen = run_step("cancel")
    assert seen["before"] == "processing"
    assert seen["canceled"]["status"] == "canceled" and seen["canceled"]["completed_at"]
    assert seen["after"]["status"] == "canceled" and seen["after"]["output"] is None


def test_validate_webhook_accepts_what_mediagen_sends(stack: Stack, run_step: Any) -> None:
    seen = run_step("webhook")
    assert seen["key"] == stack.keys["jsuser"].webhook_secret
    checks = seen["checks"]
    assert {check["id"] for check in checks} == {seen["prediction"]}
    assert all(check["valid"] for check in checks), checks
    assert not any(check["tampered"] or check["otherSecret"] for check in checks), checks
    statuses = [check["status"] for check in checks]
    assert statuses.count("succeeded") == 1, statuses
    assert any(status in {"starting", "processing"} for status in statuses), statuses


def test_errors_carry_their_status(run_step: Any) -> None:
    assert run_step("errors") == {"otherTenant": 404, "otherCancel": 404, "wrongKey": 401,
                                  "unknownModel": 404}


def test_stream_gives_logs_then_each_output(stack: Stack, run_step: Any) -> None:
    seen = run_step("stream")
    kinds = [event["event"] for event in seen["events"]]
    assert kinds[-1] == "done" and kinds.count("output") == 2, kinds
    assert "logs" in kinds and kinds.index("logs") < kinds.index("output"), kinds
    assert seen["prompt"] == "a stream in javascript"
    written = [Path(path).read_bytes() for path in seen["files"]]
    assert written == stored_bytes(stack, stack.keys["jsuser"].secret, seen["id"])


@pytest.mark.timeout(200)
def test_a_read_past_the_limit_is_retried_then_refused_with_retry_after(run_step: Any) -> None:
    seen = run_step("limited")
    *served, refused = seen["calls"]
    assert served and all(call == [200] for call in served), seen["calls"]
    assert len(served) <= 2 * READS, "reads are not limited"  # a minute may turn meanwhile
    assert len(refused) >= 2 and set(refused) == {429}, "the client did not retry the 429"
    assert seen["status"] == 429 and 1 <= seen["retryAfter"] <= 60, seen
    assert seen["contentType"].startswith("application/problem+json")
    assert seen["again"] == {"id": seen["created"], "statuses": [200]}, seen


def test_files_create_get_list_delete(stack: Stack, run_step: Any) -> None:
    seen = run_step("files")
    made = seen["made"]
    assert made["content_type"] == "image/png" and made["size"] == seen["size"]
    assert made["name"].startswith("blob")
    assert made["metadata"] == {"purpose": "test"}  # its form sends it after the file
    data = png(RED, (128, 128))  # the config's image
    assert made["checksums"] == {"sha256": hashlib.sha256(data).hexdigest(),
                                 "md5": hashlib.md5(data).hexdigest()}
    assert made["urls"] == {"get": f"{stack.tls}/v1/files/{made['id']}"}
    assert seen["got"] == made and made["id"] in seen["listed"]
    assert seen["deleted"] is True and seen["afterStatus"] == 404


def test_run_with_a_file_uploads_it_and_the_prediction_uses_it(stack: Stack,
                                                               run_step: Any) -> None:
    seen = run_step("runWithFile")
    calls = seen["calls"]
    assert (calls[0]["method"], calls[0]["path"]) == ("POST", "/v1/files"), calls
    sent = next(call["body"] for call in calls if call["path"].endswith("/predictions"))
    url = sent["input"]["image"]
    assert url.startswith(f"{stack.tls}/v1/files/") and url in seen["uploaded"], (url, seen)
    assert seen["input"]["image"] == url  # the prediction shows the input as it was sent
    [output] = seen["output"]
    r, _, b = mean_color(Path(output["path"]).read_bytes(), (0, 0, 1, 0.5))
    assert r > b + 80, (r, b)  # mostly the input's red
