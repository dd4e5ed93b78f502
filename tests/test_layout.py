"""The package layout is the architecture: imports run one way, from the command line down
to the vocabulary every stage speaks, and modules stay small enough to read.

Layers, bottom to top (a module may import its own layer and the ones below):

    base      errors, settings, durations, urls, bodies, records, stats, failures, spider/, demo/
    fetch/    the HTTP client, politeness, robots.txt, internal addresses, deadlines
    store/    the database: schema, the writer, every statement, budgets, claims, runs
    frontier/ the admission gate, the per-host queues, the feeder
    engine/   the crawl, callbacks, progress, --processes, reparse
    results/  the read side: report, status, export, formats
    cli/      the commands
    crawler   the package root: the public API, imported by nobody inside
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "crawler"
LAYERS = ("base", "fetch", "store", "frontier", "engine", "results", "cli", "root")
BASE_MODULES = {
    "errors",
    "settings",
    "urls",
    "links",
    "bodies",
    "records",
    "stats",
    "failures",
    "durations",
    "version",
}
BASE_PACKAGES = {"spider", "demo"}
MAX_LINES = 420
MAX_FUNCTION_LINES = 60


def layer_of(module: str) -> int:
    """The layer of a module named `crawler.x.y` (or `crawler` itself)."""
    parts = module.split(".")
    if parts == ["crawler"] or parts[1:] == ["__main__"]:
        return LAYERS.index("root")
    first = parts[1]
    if first in BASE_MODULES or first in BASE_PACKAGES:
        return LAYERS.index("base")
    return LAYERS.index(first)


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def imports_of(path: Path) -> Iterator[tuple[str, int]]:
    """Every `crawler…` module `path` imports, anywhere in it, with the line."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "crawler":
                    yield alias.name, node.lineno
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] == "crawler"
        ):
            yield node.module, node.lineno


def test_imports_run_one_way() -> None:
    wrong = []
    for module, path in modules():
        for imported, line in imports_of(path):
            if layer_of(imported) > layer_of(module):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} -> {imported}")
    assert wrong == [], "\n".join(wrong)


def test_the_module_graph_has_no_cycles() -> None:
    graph = {module: {name for name, _ in imports_of(path)} for module, path in modules()}
    graph = {
        module: {n for n in names if n in graph and n != module} for module, names in graph.items()
    }
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            cycle = [*trail[trail.index(module) :], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for name in sorted(graph[module]):
            visit(name, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_every_package_says_what_enters_and_what_leaves() -> None:
    for package in (p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()):
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc.splitlines()) >= 3, f"{package.name}/__init__.py needs a docstring"


@pytest.mark.parametrize(("module", "path"), list(modules()), ids=lambda v: str(v))
def test_modules_and_functions_stay_small(module: str, path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_LINES, f"{module}: split it by job"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == [], f"{module}: {long}"
