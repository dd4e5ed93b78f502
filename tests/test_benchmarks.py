"""The benchmark scripts keep up with the code they measure: each imports and answers `--help`
(so a renamed module or function breaks a test, not the next benchmark run), and the names
`benchmarks.profile_summary` looks for in a profile's stacks are functions that exist.

The benchmarks themselves take minutes and are run by hand (benchmarks/README.md)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

BENCHMARKS = ROOT / "benchmarks"
OTHER_VENVS = {"scrapy_spider", "crawlee_crawler"}
"""Run by the other tools' virtualenvs (benchmarks/tools.py): only compiled here."""


def _names() -> list[str]:
    return sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem != "__init__")


def _module(name: str) -> Any:
    # By name, so mypy does not follow into the scripts (they are not typed strictly).
    return importlib.import_module(f"benchmarks.{name}")


@pytest.mark.parametrize("name", _names())
def test_every_benchmark_script_imports_and_answers_help(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if name in OTHER_VENVS:
        compile((BENCHMARKS / f"{name}.py").read_text(encoding="utf-8"), name, "exec")
        return
    module = _module(name)
    main = getattr(module, "main", None)
    if main is None:
        return
    monkeypatch.setattr(sys, "argv", [f"benchmarks.{name}", "--help"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


# Where the names profile_summary.CATEGORIES looks for live, besides our own code.
_LIBRARIES = ("aiohttp.client", "aiohttp.client_reqrep", "asyncio.selector_events")
_FROZEN = {"_find_and_load", "_get_module_details"}
"""Names in importlib._bootstrap and runpy, frozen modules: no source to read."""


def _qualnames(path: Path) -> Iterator[str]:
    """Every function's and class's qualified name in a source file (`Class.method`)."""

    def walk(node: ast.AST, prefix: str) -> Iterator[str]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = prefix + child.name
                yield name
                yield from walk(child, name + ".")

    yield from walk(ast.parse(path.read_text(encoding="utf-8")), "")


def _defined() -> set[str]:
    """`qualname (path` for every function and class of our code and the libraries'."""
    # py-spy names a file by its path below the sys.path entry it was imported from.
    files = [(p, p.relative_to(ROOT)) for p in (ROOT / "crawler").rglob("*.py")]
    files += [(p, p.relative_to(ROOT)) for p in BENCHMARKS.glob("*.py")]
    for library in _LIBRARIES:
        spec = importlib.util.find_spec(library)
        assert spec is not None and spec.origin is not None
        path = Path(spec.origin)
        files.append((path, path.relative_to(path.parents[library.count(".")])))
    return {f"{name} ({shown}" for path, shown in files for name in _qualnames(path)}


def test_every_name_profile_summary_looks_for_exists() -> None:
    categories: tuple[tuple[str, tuple[str, ...]], ...] = _module("profile_summary").CATEGORIES
    defined = _defined()
    # A key matches a frame `qualname (path:line)` wherever it occurs in it: a whole name,
    # a class's prefix ("Fetcher."), or a name and the start of its file's path.
    missing = [
        key
        for _, keys in categories
        for key in keys
        if key not in _FROZEN
        and not any(key in f" {frame}" or f" {key}" in f" {frame}" for frame in defined)
    ]
    assert missing == []


def test_profile_summary_counts_each_main_thread_sample_once() -> None:
    summarize = _module("profile_summary").summarize
    main = "_run_module_as_main (<frozen runpy>:198);run (asyncio/runners.py:118)"
    writer = "run_writer (/w/crawler/store/batches.py:150)"
    raw = "\n".join(
        [
            f"{main};BatchWriter.{writer};Fetcher.fetch (/w/crawler/fetch/client.py:1) 7",
            f"{main};Feeder.run (/w/crawler/frontier/feeder.py:80) 2",
            f"{main};BaseEventLoop._run_once (asyncio/base_events.py:1) 1",
            "Thread._bootstrap (threading.py:1);Connection.run (aiosqlite/core.py:1) 5",
        ]
    )
    shares, main_samples, other = summarize(raw)
    assert (main_samples, other) == (10, 5)
    assert shares == {
        "the fetcher around aiohttp": 7,  # the first category of the stack's frames
        "feeder": 2,
        "the rest: event loop, worker loop, callback runner, garbage collector": 1,
    }


@pytest.mark.parametrize(("processes", "per_host"), [(1, "64"), (2, "128")])
def test_our_crawl_may_put_all_of_its_concurrency_on_the_benchmark_site(
    processes: int, per_host: str, tmp_path: Path
) -> None:
    # concurrency_per_host holds for all processes together: at the per-process concurrency,
    # the second process of `ours-2p` would idle while the first kept the one site.
    from benchmarks.tools import OURS_SETTINGS, Ours, RunContext

    ctx = RunContext(base_url="http://127.0.0.1:1", site=tmp_path, run_dir=tmp_path, concurrency=64)
    command, _ = Ours(OURS_SETTINGS, processes=processes).command(ctx)
    settings = dict(command[i + 1].split("=", 1) for i, arg in enumerate(command) if arg == "-s")
    assert (settings["concurrency"], settings["concurrency_per_host"]) == ("64", per_host)
