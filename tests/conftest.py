"""Shared fixtures: local sites on loopback, databases (SQLite files and a PostgreSQL server),
and running the CLI as a subprocess; and a check that no test leaves SIGINT or SIGTERM
handled otherwise than it found them."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from aiohttp.test_utils import BaseTestServer, TestServer
from hypothesis import HealthCheck, Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from crawler.engine import crawl as crawl_module
from crawler.fetch import politeness
from crawler.fetch.client import Fetcher
from crawler.fetch.politeness import Hosts
from crawler.records import HostRecord
from tests.broad_crawl import LoopbackResolver
from tests.databases import Target, rows, scalar
from tests.pgserver import PostgresServer, find_bin_dir
from tests.signals import blocked, ignored
from tests.sites import follow_app

__all__ = ["ROOT", "CliResult", "RunCli", "Target", "rows", "run_crawler", "scalar"]

ROOT = Path(__file__).resolve().parent.parent

# Hypothesis profiles (tests/test_hostile_properties.py). The default one is derandomized, so
# every run tries the same examples and a failure reproduces, and sized for about a minute
# (without the explain phase, which re-runs a failing crawl dozens of times);
# HYPOTHESIS_PROFILE=long tries 100,000 new examples per test and keeps the failing ones in a
# database outside the repository, replayed first by the next run.
_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "default",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=100,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=_SLOW_IS_FINE,
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "100000")),
    deadline=None,
    database=DirectoryBasedExampleDatabase(Path(tempfile.gettempdir()) / "crawler-hypothesis"),
    print_blob=True,
    suppress_health_check=_SLOW_IS_FINE,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_configure(config: pytest.Config) -> None:
    """Start every test's subprocesses as a terminal starts a foreground job, with SIGINT at
    its default, even when the suite itself was started with SIGINT ignored (`make test &`
    in a script: a non-interactive shell starts background jobs so, the xdist workers inherit
    it, and an ignored signal stays ignored across exec, so every `crawler` the tests start
    would ignore the Ctrl-Cs they send). Tests of that case ignore it in the child
    (tests.signals.as_a_background_job)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_GUARDED: Final = (signal.SIGINT, signal.SIGTERM)
_PROC_STATUS: Final = Path("/proc/self/status")


@dataclass(frozen=True)
class _Dispositions:
    """SIGINT's and SIGTERM's handlers in Python, and those of them the kernel has ignored or
    blocked (set from C, or in ways Python's table of handlers does not show)."""

    handlers: tuple[object, ...]
    ignored: frozenset[signal.Signals]
    blocked: frozenset[signal.Signals]

    @classmethod
    def now(cls) -> _Dispositions:
        kernel = _PROC_STATUS.exists()  # Linux
        return cls(
            tuple(signal.getsignal(sig) for sig in _GUARDED),
            frozenset(ignored() & set(_GUARDED)) if kernel else frozenset(),
            frozenset(blocked() & set(_GUARDED)) if kernel else frozenset(),
        )

    def restore(self) -> None:
        for sig, handler in zip(_GUARDED, self.handlers, strict=True):
            if callable(handler) or isinstance(handler, signal.Handlers):
                signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(_GUARDED) - self.blocked)


_FOUND = pytest.StashKey[_Dispositions]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    item.stash[_FOUND] = _Dispositions.now()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    """Fail a test (its fixtures included) that leaves SIGINT or SIGTERM handled otherwise
    than it found them, and put them back: the worker's later subprocesses would inherit an
    ignored signal (across exec)."""
    result = yield
    found = item.stash.get(_FOUND, None)
    left = _Dispositions.now()
    if found is not None and left != found:
        found.restore()
        pytest.fail(f"this test changed how SIGINT/SIGTERM are handled: {found} -> {left}")
    return result


@dataclass(frozen=True)
class CliResult:
    """What a `crawler` subprocess printed and how it exited."""

    code: int
    stdout: str
    stderr: str


RunCli = Callable[..., Awaitable[CliResult]]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh database path in the test's temporary directory."""
    return tmp_path / "crawl.db"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this session (of this xdist worker), started on first use."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.fail(
            "PostgreSQL is not installed: `make test` installs it (apt-get install postgresql)"
        )
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """Where a crawl is stored, once for each backend: a fresh SQLite file, or a fresh
    database on the session's PostgreSQL server (its URL). Read it with `rows`/`scalar`."""
    if request.param == "sqlite":
        yield tmp_path / "crawl.db"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
    yield url
    server.drop_database(url)


@pytest.fixture
def named_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Crawls of this test resolve every name to 127.0.0.1."""
    resolver = LoopbackResolver()
    monkeypatch.setattr(crawl_module, "Fetcher", functools.partial(Fetcher, resolver=resolver))


@pytest.fixture
def restored(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No idle host is kept in memory; the hosts brought back from the table are listed."""
    monkeypatch.setattr(politeness, "RECENT_HOSTS", 0)
    names: list[str] = []
    original = Hosts.restore

    def restore(self: Hosts, record: HostRecord) -> None:
        if record.host not in self:
            names.append(record.host)
        original(self, record)

    monkeypatch.setattr(Hosts, "restore", restore)
    return names


@pytest.fixture
async def follow_site() -> AsyncIterator[BaseTestServer]:
    """A link graph of 60 pages on 127.0.0.1 (see tests.sites.follow_app)."""
    async with TestServer(follow_app(pages=60), host="127.0.0.1") as server:
        yield server


async def run_crawler(
    *args: str, cwd: Path | None = None, limit: float = 60.0, env: dict[str, str] | None = None
) -> CliResult:
    """Run `python -m crawler ARGS` without blocking the loop that serves the test sites."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crawler",
        *args,
        cwd=cwd or ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    try:
        async with asyncio.timeout(limit):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


@pytest.fixture
def run_cli() -> RunCli:
    """Run the `crawler` command line as a real subprocess (see run_crawler)."""
    return run_crawler
