"""The client (installed alone, so it cannot import the server) and the web page keep their own
lists of job states. Held here against the server's, so that a new state cannot be left out of
them again (`expired` was: waits on an expired job never returned). Fast, no processes."""

from __future__ import annotations

import argparse
import ast
import re

from mediagen.jobs.states import TERMINAL, JobStatus
from tests.conftest import ROOT

CLIENT = ROOT / "mediagen" / "client"
STATIC = ROOT / "mediagen" / "web" / "static"
SERVER_ORDER = [str(status) for status in JobStatus]
FINISHED = {str(status) for status in TERMINAL}


def _js_set(name: str, source: str) -> set[str]:
    """The strings of `const NAME = new Set([...])`, which must be defined exactly once."""
    found = re.findall(rf"\bconst\s+{name}\s*=\s*new\s+Set\(\s*\[(.*?)\]\s*\)", source, re.S)
    assert len(found) == 1, f"{name} defined {len(found)} times"
    values = set()
    for item in filter(None, (part.strip() for part in found[0].split(","))):
        literal = re.fullmatch(r"""(["'])([a-z_]+)\1""", item)
        assert literal, f"not a plain string in {name}: {item}"
        values.add(literal.group(2))
    return values


def _status_choices() -> list[str]:
    """The choices of `mediagen jobs list --status`, in the order the help shows them."""
    from mediagen.client._args import build_parser

    parser: argparse.ArgumentParser = build_parser()
    for name in ("jobs", "list"):
        [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[name]
    [status] = [action for action in parser._actions if action.dest == "status"]
    return list(status.choices or ())


def test_the_client_lists_every_state_and_the_finished_ones_as_the_server_does() -> None:
    from mediagen.client import _states

    assert list(_states.STATUSES) == SERVER_ORDER
    assert isinstance(_states.TERMINAL, frozenset) and _states.TERMINAL == FINISHED


def test_a_client_job_is_done_exactly_in_the_server_s_finished_states() -> None:
    from mediagen.client import Job

    assert {s for s in SERVER_ORDER if Job(id="j", status=s).done} == FINISHED


def test_jobs_list_offers_every_state_in_the_server_s_order() -> None:
    assert _status_choices() == SERVER_ORDER


def test_no_other_list_of_finished_states_in_the_client() -> None:
    """Every list of states in the client is one of `_states`: a set, tuple or list literal
    naming two finished states anywhere else is a copy that can drift."""
    copies = []
    for path in sorted(CLIENT.glob("*.py")):
        if path.name == "_states.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Set | ast.Tuple | ast.List):
                named = {
                    e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in FINISHED
                }
                if len(named) >= 2:
                    copies.append(f"{path.name}:{node.lineno} {sorted(named)}")
    assert copies == []


def test_the_page_s_terminal_is_the_server_s() -> None:
    source = (STATIC / "app.js").read_text()
    assert _js_set("TERMINAL", source) == FINISHED
    # ... and the only list of finished states in it (the rest of the page asks TERMINAL).
    lists = re.findall(r"\[([^\[\]]*)\]", source)
    named = [sorted(set(re.findall(r"""["']([a-z]+)["']""", text)) & FINISHED) for text in lists]
    assert [n for n in named if len(n) >= 2] == [sorted(FINISHED)]


def test_every_finished_state_has_a_badge_style() -> None:
    css = (STATIC / "app.css").read_text()
    assert [s for s in sorted(FINISHED) if not re.search(rf"\.badge\.{s}\b", css)] == []
