"""The import graph of the package: no cycles, and imports inside functions only where they load
an optional extra.

Every import counts: at module level, inside a function, under TYPE_CHECKING, and the package
`__init__` modules an import runs on its way (importing `a.b.c` runs `a/__init__` and
`a/b/__init__` first, so a package that imports its submodules can close a cycle that no single
import line shows).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "mediagen"

# Modules that import parts of mediagen inside functions, and why: each loads an optional extra
# only when it is needed, so what does not need it works without it.
LAZY = {
    "mediagen.cli": "the server (`mediagen[server]`) for server commands; the client's commands",
    "mediagen.embedded": "the embedded servers (`mediagen[embedded]`)",
    "mediagen.supervisor": "what `mediagen run` starts: the server (`mediagen[server]`) and the "
    "embedded servers (`mediagen[embedded]`); `mediagen.cli` imports it before a command is chosen",
    "mediagen.providers.builtin.provider": "Pillow (`mediagen[builtin]`) for rendering",
}


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(path): path for path in ROOT.rglob("*.py") if "migrations" not in path.parts}


def _imports(module: str, path: Path) -> Iterator[tuple[str, int, str]]:
    """(imported module, line, where) for every import of a mediagen module in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([node.module] if node.module else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        where, up = "module level", node
        while up in parents:
            up = parents[up]
            if isinstance(up, ast.FunctionDef | ast.AsyncFunctionDef):
                where = "in a function"
                break
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("mediagen") and name != module:
                yield name, node.lineno, where


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for module, path in MODULES.items():
        for target, _, _ in _imports(module, path):
            parts = target.split(".")
            # The packages on the way run first, then the module itself.
            for end in range(1, len(parts) + 1):
                step = ".".join(parts[:end])
                if step in MODULES and step != module and not module.startswith(step + "."):
                    graph[module].add(step)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_function_level_imports_only_load_optional_extras() -> None:
    lazy = {
        f"{module}:{line} imports {target}"
        for module, path in MODULES.items()
        for target, line, where in _imports(module, path)
        if where == "in a function" and module not in LAZY
    }
    assert lazy == set()


def test_the_check_sees_a_cycle_through_a_package() -> None:
    """The case the line-by-line view misses: `a.x` imports `b.y`, whose package `b` imports
    `b.z`, which imports `a.x`."""
    graph = {"a": set(), "a.x": {"b", "b.y"}, "b": {"b.z"}, "b.y": set(), "b.z": {"a", "a.x"}}
    assert _cycles(graph) == [["a.x", "b", "b.z"]]
