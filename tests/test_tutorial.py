"""docs/tutorial.md, run step by step: every command, file and expected output in it.

The tutorial's fenced blocks are executed in order in an empty directory:

- ```console blocks: each `$ ` line is a command (`crawler …` or `python …`). The lines after
  it are its expected output: plain lines must appear in the output; a rich table printed by
  `crawler query` must hold the same rows (the command prints CSV when not on a terminal);
  a summary table (`crawl`, `reparse`) must show the same rows, except the timing ones and
  the number of processes (the cores of the machine).
- ```python file=PATH blocks are written to PATH; ```python expect=PATH blocks must equal
  the file a command wrote; ```diff file=PATH blocks replace their `-` lines by their `+` lines.

`crawler serve-demo --port 8000` runs in the background with `--port 0`, and its real URL
replaces http://127.0.0.1:8000 everywhere.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from crawler.demo import expected_books
from tests.conftest import ROOT, CliResult, rows, run_crawler

TUTORIAL = ROOT / "docs" / "tutorial.md"
DOC_URL = "http://127.0.0.1:8000"
BLOCK = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
UNCHECKED_SUMMARY_ROWS = frozenset({"duration", "pages/s", "processes"})  # vary by machine


@dataclass
class Step:
    """One thing the tutorial asks the reader to do."""

    kind: str
    """`command`, `write`, `expect` or `patch`."""
    text: str
    """The command line, or the block's content."""
    path: str = ""
    expected: tuple[str, ...] = ()
    """A command's expected output lines."""


def tutorial_steps(markdown: str) -> list[Step]:
    """Read the tutorial's steps from its fenced blocks, in order."""
    steps: list[Step] = []
    for language, info, body in BLOCK.findall(markdown):
        attributes = dict(item.split("=", 1) for item in info.split() if "=" in item)
        if language == "console":
            for chunk in re.split(r"^\$ ", body, flags=re.MULTILINE)[1:]:
                command, *output = chunk.rstrip("\n").split("\n")
                steps.append(Step("command", command, expected=tuple(output)))
        elif language == "python" and "file" in attributes:
            steps.append(Step("write", body, path=attributes["file"]))
        elif language == "python" and "expect" in attributes:
            steps.append(Step("expect", body, path=attributes["expect"]))
        elif language == "diff":
            steps.append(Step("patch", body, path=attributes["file"]))
    return steps


async def run_python(*args: str, cwd: Path) -> CliResult:
    """Run `python ARGS` (the test's interpreter) in the tutorial directory."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


@dataclass
class DemoSite:
    """The `crawler serve-demo` process and the URL it serves."""

    process: asyncio.subprocess.Process
    url: str


@pytest.fixture
async def serve_demo(tmp_path: Path) -> AsyncIterator[DemoSite]:
    """Start the tutorial's `crawler serve-demo` command on a free port; stop it with SIGINT."""
    [serve] = [s for s in tutorial_steps(TUTORIAL.read_text()) if "serve-demo" in s.text]
    args = shlex.split(serve.text.replace("--port 8000", "--port 0"))
    assert args[:2] == ["crawler", "serve-demo"]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crawler",
        *args[1:],
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            first_line = (await process.stdout.readline()).decode()
        match = re.fullmatch(
            r"serving the demo books site at (http://127\.0\.0\.1:\d+)/ .*\n", first_line
        )
        assert match, first_line
        expected = serve.expected[0].replace(DOC_URL, match.group(1))
        assert first_line.rstrip("\n") == expected
        yield DemoSite(process, match.group(1))
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            await process.wait()
    assert process.returncode == 0  # Ctrl-C stops it cleanly


def table_rows(lines: list[str]) -> list[list[str]]:
    """The header and rows of a rich table drawn in the tutorial."""
    cells: list[list[str]] = []
    for line in lines:
        if line.startswith(("┃", "│")):
            cells.append([cell.strip() for cell in re.split(r"[┃│]", line)[1:-1]])
    return cells


def check_output(command: str, expected: list[str], result: CliResult) -> None:
    """Compare a command's output with what the tutorial shows after it."""
    drawn = [line for line in expected if line.startswith(("┃", "│"))]
    if command.startswith("crawler query"):
        assert table_rows(expected) == list(csv.reader(io.StringIO(result.stdout))), command
        return
    if drawn:  # an end-of-run summary: name │ value
        wanted = {row[0]: row[1] for row in table_rows(drawn)}
        shown = {row[0]: row[1] for row in table_rows(result.stdout.splitlines())}
        for name in UNCHECKED_SUMMARY_ROWS:
            wanted.pop(name, None)
            shown.pop(name, None)
        assert shown == wanted, command
    output = (result.stdout + result.stderr).splitlines()
    for line in expected:
        if line and not line.startswith(("┃", "│", "┏", "┡", "└", "┌")):
            assert any(o.rstrip().startswith(line.rstrip()) for o in output), (line, output)


async def test_the_tutorial_runs_as_written(serve_demo: DemoSite, tmp_path: Path) -> None:
    steps = tutorial_steps(TUTORIAL.read_text())
    assert [s.kind for s in steps].count("command") >= 12
    commands_run: list[str] = []
    for step in steps:
        text = step.text.replace(DOC_URL, serve_demo.url)
        if step.kind == "write":
            (tmp_path / step.path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / step.path).write_text(text)
        elif step.kind == "expect":
            assert (tmp_path / step.path).read_text() == text, (
                f"{step.path} differs from the tutorial"
            )
        elif step.kind == "patch":
            removed = "".join(line[1:] + "\n" for line in text.splitlines() if line.startswith("-"))
            added = "".join(line[1:] + "\n" for line in text.splitlines() if line.startswith("+"))
            source = (tmp_path / step.path).read_text()
            assert source.count(removed) == 1, f"the diff does not apply to {step.path}"
            (tmp_path / step.path).write_text(source.replace(removed, added))
        elif "serve-demo" not in text:  # serve-demo runs in the fixture
            program, *args = shlex.split(text)
            if program == "crawler":
                result = await run_crawler(*args, cwd=tmp_path)
            else:
                assert program == "python", f"the tutorial runs an unknown program: {text}"
                result = await run_python(*args, cwd=tmp_path)
            assert result.code == 0, (text, result.stdout, result.stderr)
            expected = [line.replace(DOC_URL, serve_demo.url) for line in step.expected]
            check_output(text, expected, result)
            commands_run.append(program + " " + args[0])
    assert {"crawler new", "crawler crawl", "crawler parse", "crawler reparse"} <= set(commands_run)
    assert {"crawler record", "crawler query", "python -m"} <= set(commands_run)
    # The fixed spider read every book of the demo site right.
    books = rows(tmp_path / "bookshop.db", "SELECT upc, category, price FROM book ORDER BY upc")
    assert books == sorted((b["upc"], b["category"], b["price"]) for b in expected_books())


async def test_serve_demo_listens_on_127_0_0_1_only(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crawler",
        "serve-demo",
        "--site",
        "quotes",
        "--size",
        "12",
        "--port",
        "0",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
        match = re.fullmatch(
            r"serving the demo quotes site at http://127\.0\.0\.1:(\d+)/ .*\n", line
        )
        assert match, line
        port = int(match.group(1))
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/page/2/") as response,
        ):
            assert response.status == 200
            assert (await response.text()).count('<div class="quote"') == 2  # 12 quotes, 10 a page
        with pytest.raises(ConnectionRefusedError):  # not 0.0.0.0: other addresses are refused
            await asyncio.open_connection("127.0.0.2", port)

        in_use = await run_crawler("serve-demo", "--port", str(port), cwd=tmp_path)
        assert in_use.code == 2
        assert (
            in_use.stderr == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
        )
    finally:
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            await process.wait()
    assert process.returncode == 0


def test_the_tutorials_files_pass_mypy_strict_and_ruff(tmp_path: Path) -> None:
    """The spider (as finally fixed) and the test the tutorial has the reader write pass the
    project's own checks: what it teaches is what `make test` asks of code here."""
    files: dict[str, str] = {}
    for step in tutorial_steps(TUTORIAL.read_text()):
        if step.kind == "write":
            files[step.path] = step.text
        elif step.kind == "patch":
            lines = step.text.splitlines()
            removed = "".join(line[1:] + "\n" for line in lines if line.startswith("-"))
            added = "".join(line[1:] + "\n" for line in lines if line.startswith("+"))
            files[step.path] = files[step.path].replace(removed, added)
    assert set(files) == {"spiders/bookshop.py", "tests/test_bookshop.py"}
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    # The crawler as the reader has it installed: mypy does not follow the editable
    # install's import hook, so it gets the package (and nothing else of this repository).
    (tmp_path / "installed").mkdir()
    (tmp_path / "installed" / "crawler").symlink_to(ROOT / "crawler")
    bin_dir = Path(sys.executable).parent
    # The project's ruff rules, in the reader's project: `spiders` is first-party there and
    # the crawler an installed package.
    ruff = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
    config = [
        *("--config", f"line-length = {ruff['line-length']}"),
        *("--config", f"lint.select = {json.dumps(ruff['lint']['select'])}"),
        *("--config", f"lint.ignore = {json.dumps(ruff['lint']['ignore'])}"),
    ]
    checks = [
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--explicit-package-bases",
            "--follow-imports=silent",
            *files,
        ],
        [str(bin_dir / "ruff"), "check", "--isolated", *config, *files],
        [str(bin_dir / "ruff"), "format", "--check", "--isolated", *config, *files],
    ]
    for command in checks:
        done = subprocess.run(
            command,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "MYPYPATH": str(tmp_path / "installed")},
        )
        assert done.returncode == 0, (command[2:4], done.stdout, done.stderr)
