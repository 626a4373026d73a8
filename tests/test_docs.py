"""The README and docs/ hold up against the repository: the README fits on a page (it is also the
package's long description), every link and file path they give exists (anchors too, by
GitHub's heading ids), none leads off the repository but to the service itself, and every
worker command they give consumes every queue the code publishes to. Reads files only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from mediagen.broker import QUEUES
from mediagen.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
AUTOLINK = re.compile(r"<([a-z][a-z0-9+.-]*:[^>\s]+)>", re.IGNORECASE)
BARE_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s)>\]`'\"]+", re.IGNORECASE)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)
# A repository path written in a page: it starts at a top-level folder (or is a top-level file)
# and is not part of a longer path or URL.
TOP_DIRS = ("mediagen", "tests", "docs", "deploy", "scripts", "bench", "examples", ".ci")
TOP_FILES = ("Makefile", "Dockerfile", "pyproject.toml", "constraints.txt", ".env-example",
             "compose.env-example", "docker-compose.yml", "docker-compose.s3.yml")
_DIRS = "|".join(map(re.escape, TOP_DIRS))
_FILES = "|".join(map(re.escape, TOP_FILES))
REPO_PATH = re.compile(rf"(?<![\w./~:-])((?:{_DIRS})/[\w./-]*|(?:{_FILES}))(?![\w-])")
# Hosts a page may link to: the service a reader runs on their own machine.
LOCAL_HOSTS = {"localhost", "127.0.0.1"}
WORKER_COMMAND = re.compile(r"\bcelery\b[^\n`|]*?\sworker(?=\s|$|`)", re.MULTILINE)
QUEUE_OPTION = re.compile(r"(?:\s-Q|--queues)[ =]([\w.,-]+)")


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _prose(text: str) -> str:
    """The page without fenced code blocks and code spans (where nothing is a link)."""
    return CODE_SPAN.sub(" ", FENCE.sub("\n", text))


def slug(heading: str) -> str:
    """GitHub's id for a heading: markup and punctuation dropped, lower case, spaces as `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading id of a page, with GitHub's `-1`, `-2` suffixes for repeated ones."""
    seen: dict[str, int] = {}
    ids = set()
    for _, title in HEADING.findall(FENCE.sub("\n", page.read_text())):
        base = slug(title)
        count = seen.get(base, 0)
        ids.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return ids


def _links(page: Path) -> Iterator[str]:
    prose = _prose(page.read_text())
    yield from LINK.findall(prose)
    yield from AUTOLINK.findall(prose)
    yield from BARE_URL.findall(LINK.sub(" ", AUTOLINK.sub(" ", prose)))


def test_the_readme_fits_on_a_page() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, at most {README_MAX_LINES}"


def test_slugs_follow_github() -> None:
    assert slug("Kubernetes: the kit in `deploy/kubernetes`") == "kubernetes-the-kit-in-deploykubernetes"
    assert slug("Fair turns between keys: `make bench-fair`") == "fair-turns-between-keys-make-bench-fair"
    assert slug("Postgres: PgBouncer, migrations, restarts") == "postgres-pgbouncer-migrations-restarts"
    assert slug("`Prefer: wait`") == "prefer-wait"
    assert slug("API keys, limits and retries of your own") == "api-keys-limits-and-retries-of-your-own"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_link_resolves_inside_the_repository(page: Path) -> None:
    broken = []
    for target in _links(page):
        scheme = re.match(r"([a-z][a-z0-9+.-]*):", target, re.IGNORECASE)
        if scheme:
            host = re.match(r"[a-z]+://([^/:?#]+)", target, re.IGNORECASE)
            if not host or host.group(1) not in LOCAL_HOSTS:
                broken.append(f"{target}: leaves the repository")
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif not file.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {_rel(file)}")
    assert broken == [], f"{_rel(page)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_repository_path_exists(page: Path) -> None:
    """Paths from the repository's root (`mediagen/jobs/states.py`, `deploy/kubernetes`), in
    prose or code. `mediagen/<name>` without an extension is a model name, not a path."""
    missing = set()
    for path in REPO_PATH.findall(page.read_text()):
        path = path.rstrip(".")
        last = path.rstrip("/").rsplit("/", 1)[-1]
        is_path = path.endswith("/") or "." in last or not path.startswith(("mediagen/", "tests/"))
        if is_path and not (ROOT / path).exists():
            missing.add(path)
    assert missing == set(), f"{_rel(page)} names files that do not exist"


def _docs_references() -> Iterator[tuple[str, str]]:
    """`docs/<page>.md` as the code, the tests and the settings name it."""
    files = [ROOT / ".env-example", ROOT / "compose.env-example", ROOT / "Makefile",
             *ROOT.glob("docker-compose*.yml")]
    for folder in ("mediagen", "tests", "scripts", "bench", "deploy", "examples"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".yml", ".yaml",
                                                                          ".toml", ".md", ".sh"}]
    for file in files:
        for name in re.findall(r"\bdocs/([\w-]+\.md)", file.read_text(errors="ignore")):
            yield _rel(file), name


def test_every_docs_page_the_code_names_exists() -> None:
    missing = {(where, name) for where, name in _docs_references()
               if not (ROOT / "docs" / name).exists()}
    assert missing == set()


def test_worker_commands_consume_every_queue() -> None:
    """A worker started as the docs say takes job steps and webhook deliveries alike."""
    commands = []
    wrong = []
    for page in PAGES:
        text = page.read_text()
        for match in WORKER_COMMAND.finditer(text):
            end = re.compile(r"`|\n|\|").search(text, match.end())
            command = text[match.start():end.start() if end else len(text)]
            commands.append(command)
            queues = QUEUE_OPTION.findall(" " + command)
            if not queues or not set(QUEUES) <= set(queues[-1].split(",")):
                wrong.append(f"{_rel(page)}: {command.strip()}")
        for queues in QUEUE_OPTION.findall(text):  # -Q elsewhere (prose, other tools)
            if not set(QUEUES) <= set(queues.split(",")):
                wrong.append(f"{_rel(page)}: -Q {queues}")
    assert commands, "no page shows the command a worker runs"
    assert wrong == [], f"workers must consume {','.join(QUEUES)}"


def test_the_configuration_page_names_every_setting() -> None:
    """docs/configuration.md is the reference of every setting (`.env-example` lists them with
    their defaults; tests/test_project.py holds that file to `Settings`)."""
    page = (ROOT / "docs" / "configuration.md").read_text()
    named = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", page))
    assert {name.upper() for name in Settings.model_fields} - named == set()
