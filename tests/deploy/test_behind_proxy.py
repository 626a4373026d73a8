"""Behind a reverse proxy or load balancer (mediagen.proxy, docs/deployment.md), in process:
forwarded headers believed from trusted peers only (FORWARDED_ALLOW_IPS), and a path prefix
(ROOT_PATH) that the API, `/docs`, `/media` and the web page answer and link under, whether
the proxy strips it or passes it on."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from mediagen import proxy
from mediagen.config import Settings
from mediagen.main import create_app
from mediagen.observability import http as observed
from mediagen.observability.http import RequestObserver
from tests.conftest import free_port
from tests.stack import InProcess, in_process
from tests.support import submit, wait_terminal

STRANGER = ("203.0.113.9", 50000)  # a peer no default trusts
PROXY = ("10.1.2.3", 50000)  # a load balancer's address inside the cluster


def stack_peer(stack: InProcess, client: tuple[str, int]) -> httpx.AsyncClient:
    """A client of the in-process application whose connection comes from `client` (closed
    with the application)."""
    transport = httpx.ASGITransport(app=stack.app, client=client)
    http = httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30)
    stack.clients.append(http)
    return http


async def _next_url(http: httpx.AsyncClient, headers: dict[str, str], prefix: str = "") -> str:
    """The absolute `next` of a one-job page of the job list (there are two jobs or more)."""
    for _ in range(2):
        await submit(http, "a lighthouse", width=64, height=64)
    page = await http.get(f"{prefix}/api/v1/jobs?limit=1", headers=headers)
    assert page.status_code == 200, page.text
    return str(page.json()["next"])


# --- forwarded headers -------------------------------------------------------------------------
async def test_the_scheme_comes_from_x_forwarded_proto_of_a_trusted_peer_only(database: str) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"}
    async with in_process({"FORWARDED_ALLOW_IPS": "10.0.0.0/8"}) as stack:
        proxy, stranger = stack_peer(stack, PROXY), stack_peer(stack, STRANGER)
        assert (await _next_url(proxy, forwarded)).startswith("https://testserver/api/v1/")
        assert (await _next_url(stranger, forwarded)).startswith("http://testserver/api/v1/")
        assert (await _next_url(proxy, {})).startswith("http://testserver/")


async def test_health_details_go_to_this_machine_not_to_who_claims_to_be_it(database: str) -> None:
    """The failure detail of /api/v1/health is shown to callers on this machine only: a
    stranger who writes `X-Forwarded-For: 127.0.0.1` is still a stranger, and a remote client
    a trusted proxy forwards is remote."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    async with in_process({"REDIS_URL": dead, "FORWARDED_ALLOW_IPS": "10.1.2.3"}) as stack:
        stranger, proxy = stack_peer(stack, STRANGER), stack_peer(stack, PROXY)
        claims = await stranger.get("/api/v1/health", headers={"X-Forwarded-For": "127.0.0.1"})
        forwarded = await proxy.get("/api/v1/health", headers={"X-Forwarded-For": "198.51.100.7"})
        from_proxy_host = await proxy.get("/api/v1/health",
                                          headers={"X-Forwarded-For": "127.0.0.1"})
        here = await stack_peer(stack, ("127.0.0.1", 40000)).get("/api/v1/health")
    for response in (claims, forwarded):
        assert response.json()["checks"]["broker"]["detail"] is None, response.text
    for response in (from_proxy_host, here):  # the proxy on this machine vouches for it
        assert response.json()["checks"]["broker"]["detail"], response.text


def test_the_api_command_leaves_forwarded_headers_to_the_app() -> None:
    """uvicorn's own handling is off: FORWARDED_ALLOW_IPS from `.env` decides (uvicorn reads
    only the process environment), in one place."""
    from mediagen.supervisor import api_cmd

    assert "--no-proxy-headers" in api_cmd(Settings(_env_file=None))  # type: ignore[call-arg]


# --- a path prefix -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
async def prefixed(database: str) -> AsyncIterator[InProcess]:
    async with in_process({"ROOT_PATH": "/mg/"}, worker=True) as stack:
        yield stack


@pytest.mark.parametrize("strips", [True, False], ids=["proxy-strips", "proxy-passes-prefix"])
async def test_the_api_answers_and_links_under_the_prefix(
    prefixed: InProcess, strips: bool
) -> None:
    sent = "" if strips else "/mg"  # what the proxy puts before the API's own path
    http = stack_peer(prefixed, ("127.0.0.1", 40000))
    created = await http.post(f"{sent}/api/v1/generate",  # the fast path
                              json={"prompt": "a fox", "parameters": {"width": 64,
                                                                      "height": 64}})
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    status = await http.get(f"{sent}/api/v1/status/{job_id}")
    assert status.status_code == 200, status.text
    # The in-process worker makes the image.
    done = await wait_terminal(_Prefixed(http, sent), job_id)  # type: ignore[arg-type]
    assert done["status"] == "completed", done
    assert done["result_url"].startswith(f"/mg/media/{job_id}"), done["result_url"]
    image = await http.get(done["result_url"].removeprefix("/mg") if strips
                           else done["result_url"])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    stable = await http.get(f"{sent}/api/v1/jobs/{job_id}/outputs/0")
    assert stable.status_code == 307 and stable.headers["location"].startswith("/mg/media/")
    assert (await _next_url(http, {}, sent)).startswith("http://testserver/mg/api/v1/jobs?")
    prediction = await http.get(f"{sent}/v1/predictions/{job_id}")  # the job's /v1 view
    assert prediction.status_code == 200, prediction.text
    assert prediction.json()["urls"]["get"].startswith("http://testserver/mg/v1/")
    (output,) = prediction.json()["output"]
    assert output.startswith(f"http://testserver/mg/media/{job_id}"), output
    missing = await http.get(f"{sent}/api/v1/jobs/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and missing.json()["code"]
    # Errors of /v1 keep its own shape under the prefix too.
    problem = await http.get(f"{sent}/v1/predictions/00000000-0000-0000-0000-000000000000")
    assert problem.status_code == 404
    assert problem.headers["content-type"] == "application/problem+json", problem.text


async def test_docs_and_the_schema_are_under_the_prefix(prefixed: InProcess) -> None:
    http = stack_peer(prefixed, ("127.0.0.1", 40000))
    schema = (await http.get("/mg/openapi.json")).json()
    assert schema["servers"] == [{"url": "/mg"}]
    for page in ("/mg/docs", "/mg/redoc"):
        html = (await http.get(page)).text
        assert "/mg/openapi.json" in html, page
        assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html) + re.findall(
            r"(?:url|openapi_url)['\"]?: ?['\"]([^'\"]+)", html)
        assert assets and all(a.startswith("/mg/") for a in assets), (page, assets)
        for asset in assets:
            assert (await http.get(asset)).status_code == 200, asset


async def test_the_web_page_loads_its_script_and_calls_the_api_under_the_prefix(
    prefixed: InProcess,
) -> None:
    http = stack_peer(prefixed, ("127.0.0.1", 40000))
    page = await http.get("/mg/")
    assert page.status_code == 200
    links = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    assert links and all(link.startswith("/mg/") for link in links), links
    config = json.loads(re.search(r'id="config">(.*?)</script>', page.text).group(1))  # type: ignore[union-attr]
    assert config["root"] == "/mg"
    script = await http.get("/mg/assets/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    # Every call of the page's goes through API, which starts with the prefix it was given.
    assert "const API = `${config.root}/api/v1`;" in script.text
    assert not re.search(r"""["'`]/(api|media|assets|docs)\b""", script.text)
    icon = await http.get("/mg/favicon.ico")
    assert icon.status_code == 308 and icon.headers["location"] == "/mg/assets/icon.svg"
    models = await http.get(f"{config['root']}/api/v1/models")
    assert models.status_code == 200


def test_a_prefix_that_begins_one_of_the_api_s_own_paths_is_refused() -> None:
    with pytest.raises(ValueError, match="ROOT_PATH '/api'"):
        create_app(Settings(_env_file=None, root_path="/api"))  # type: ignore[call-arg]


def test_the_public_url_and_the_prefix_agree() -> None:
    ok = Settings(_env_file=None, root_path="/mg",  # type: ignore[call-arg]
                  public_base_url="https://example.com/mg/")
    assert ok.root_path == "/mg"
    with pytest.raises(ValueError, match="must be ROOT_PATH"):
        Settings(_env_file=None, root_path="/mg",  # type: ignore[call-arg]
                 public_base_url="https://example.com/other")
    with pytest.raises(ValueError, match="ROOT_PATH must be a path"):
        Settings(_env_file=None, root_path="mg?x=1")  # type: ignore[call-arg]


class _Prefixed:
    """`wait_terminal`'s client, with the proxy's prefix put before each path."""

    def __init__(self, http: httpx.AsyncClient, prefix: str) -> None:
        self.http, self.prefix = http, prefix

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.get(f"{self.prefix}{path}", **kwargs)


async def test_the_access_log_names_the_client_a_trusted_proxy_forwarded() -> None:
    """The layers `create_app` puts around the API, on a bare app: the access line's client
    is the forwarded one behind a trusted proxy, the peer's own otherwise."""
    app = FastAPI()
    app.get("/ping")(lambda: {"ok": True})
    settings = Settings(_env_file=None, forwarded_allow_ips="10.1.2.3",  # type: ignore[call-arg]
                        metrics_enabled=False, access_log=True)
    observed.install(app, settings)
    proxy.install_outer(app, settings)
    stack = app.build_middleware_stack()
    layer: Any = stack
    while not isinstance(layer, RequestObserver):
        layer = layer.app
    lines: list[Any] = []
    layer.access = lines.extend
    forwarded = {"X-Forwarded-For": "198.51.100.7"}
    for client in (PROXY, STRANGER):
        transport = httpx.ASGITransport(app=stack, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            assert (await http.get("/ping", headers=forwarded)).status_code == 200
    layer.flush()
    assert [line[3] for line in lines] == ["198.51.100.7", STRANGER[0]]
