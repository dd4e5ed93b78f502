"""A command run inside another program (click's CliRunner here, anyone's code elsewhere)
leaves that program's SIGINT and SIGTERM handlers as it found them, and an ignored signal
ignored. Run in this process, in its main thread (the only one that may set handlers)."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest
from click.testing import CliRunner

from crawler.cli.main import cli
from tests.databases import assert_intact, scalar
from tests.results_site import copy_database, crawl_books_once
from tests.signals import ignored
from tests.test_reparse import upper_spider

Handler = Callable[[int, FrameType | None], object] | int


def ours(signum: int, frame: FrameType | None) -> None:
    """A handler of the program that runs the command."""


@pytest.fixture(params=["handlers", "SIGINT ignored"])
def found(request: pytest.FixtureRequest) -> Iterator[dict[signal.Signals, Handler]]:
    """The handlers the command finds: the program's own, or SIGINT ignored (a background job
    of a script); put back after the test whatever the command did."""
    wanted: dict[signal.Signals, Handler] = {signal.SIGINT: ours, signal.SIGTERM: ours}
    if request.param == "SIGINT ignored":
        wanted[signal.SIGINT] = signal.SIG_IGN
    before = {sig: signal.signal(sig, handler) for sig, handler in wanted.items()}
    try:
        yield wanted
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def test_a_crawl_run_in_process_puts_back_the_handlers_it_found(
    found: dict[signal.Signals, Handler], tmp_path: Path
) -> None:
    db = tmp_path / "demo.db"
    result = CliRunner().invoke(cli, ["demo", "-o", str(db), "--books", "20"])
    assert result.exit_code == 0, result.output
    assert scalar(db, "SELECT status FROM crawls") == "finished"
    assert_intact(db)
    assert {sig: signal.getsignal(sig) for sig in found} == found
    assert (signal.SIGINT in ignored()) == (found[signal.SIGINT] == signal.SIG_IGN)


@pytest.fixture(scope="module")
def crawled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return crawl_books_once(tmp_path_factory.mktemp("crawled") / "books.db")


@pytest.mark.parametrize("processes", [1, 2])
def test_a_reparse_run_in_process_puts_back_the_handlers_it_found(
    found: dict[signal.Signals, Handler], crawled: Path, tmp_path: Path, processes: int
) -> None:
    db = copy_database(crawled, tmp_path / "books.db")
    spider = upper_spider(tmp_path)
    args = ["reparse", str(spider), str(db), "-p", str(processes), "-f", "json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["pages"] > 0
    assert_intact(db)
    assert {sig: signal.getsignal(sig) for sig in found} == found
    assert (signal.SIGINT in ignored()) == (found[signal.SIGINT] == signal.SIG_IGN)
