"""The contenders compare.py runs: how to install each, its crawl command, how to read results.

Each tool is prepared once (a virtualenv for Scrapy and Crawlee, an import check for ours),
then run once per round in a fresh directory; ``collect`` reads back what the run produced.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from benchmarks.venvs import ensure_venv, package_version, venv_python

BENCH_DIR: Final = Path(__file__).resolve().parent
REPO_ROOT: Final = BENCH_DIR.parent
PROJECT_PYTHON: Final = (
    REPO_ROOT / ".venv" / "bin" / "python"
    if (REPO_ROOT / ".venv" / "bin" / "python").exists()
    else Path(sys.executable)
)
SCRAPY_REQUIREMENTS: Final = ["scrapy==2.19.0"]
CRAWLEE_REQUIREMENTS: Final = (["crawlee[parsel]==1.11.0"], ["crawlee[beautifulsoup]==1.11.0"])
OURS_SETTINGS: Final = {
    "concurrency": "{concurrency}",
    "concurrency_per_host": "{crawl_concurrency}",
    "obey_robots": "false",
    "autothrottle": "false",
}
"""The ``-s key=value`` settings passed to our CLI; edit here if the CLI rejects one.
``{concurrency}`` is ``--concurrency``, per process; ``{crawl_concurrency}`` is that times the
processes: the one site of the benchmark may take all of the crawl's requests in flight, as
it does the other tools' (`concurrency_per_host` holds for all processes together)."""


class ToolUnavailable(Exception):
    """A tool cannot be run at all (install failed, our package does not import yet)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunContext:
    """Where one run happens and what it crawls."""

    base_url: str
    site: Path
    run_dir: Path
    concurrency: int

    @property
    def start_url(self) -> str:
        """The URL every crawler starts from."""
        return f"{self.base_url}/index.html"


@dataclass(frozen=True, slots=True, kw_only=True)
class Collected:
    """What a run left behind, read back after the process exited."""

    pages: int | None
    """Pages the tool says it fetched, if it says."""
    items: list[dict[str, Any]] | None
    """The items, or None for a tool that yields none (the fetch floor)."""
    errors: int = 0
    problem: str = ""
    """Why the results could not be read, if they could not."""


class Tool(Protocol):
    """One contender in the comparison."""

    name: str

    def prepare(self) -> None:
        """Install or check the tool; raise ToolUnavailable if it cannot run."""

    def command(self, ctx: RunContext) -> tuple[list[str], Path]:
        """Return the command line that crawls the site, and its working directory."""

    def collect(self, ctx: RunContext) -> Collected:
        """Read back the pages and items of a finished run."""

    def versions(self) -> dict[str, str]:
        """Return the versions worth reporting, by package name."""


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def _read_report(ctx: RunContext, items: bool) -> Collected:
    """Read ``report.json`` (and ``items.jsonl`` if ``items``) written by the run."""
    report_path, items_path = ctx.run_dir / "report.json", ctx.run_dir / "items.jsonl"
    if not report_path.exists():
        return Collected(pages=None, items=None, problem="the run wrote no report.json")
    report = json.loads(report_path.read_text())
    if items and not items_path.exists():
        return Collected(pages=report["pages"], items=None, problem="the run wrote no items")
    return Collected(
        pages=report["pages"],
        items=_read_jsonl(items_path) if items else None,
        errors=report.get("errors", 0),
    )


class Ours:
    """This crawler, through its command line, writing a SQLite file (with ``processes``
    above 1, that many crawler processes sharing the file: ``crawl --processes N``)."""

    def __init__(self, settings: Mapping[str, str] = OURS_SETTINGS, processes: int = 1) -> None:
        self.settings = settings
        """``-s`` settings; ``{concurrency}`` in a value is replaced by ``--concurrency``,
        ``{crawl_concurrency}`` by that times ``processes``."""
        self.processes = processes
        self.name = "ours" if processes == 1 else f"ours-{processes}p"

    def prepare(self) -> None:
        """Compile the crawler's modules to bytecode (pip does that for the other tools'
        packages when it installs them; an editable install does not, and with
        PYTHONDONTWRITEBYTECODE set every run would compile them again), then check that it
        imports and has a ``crawl`` command."""
        for args in (
            ["-m", "compileall", "-q", "crawler", "spiders"],
            ["-m", "compileall", "-q", "-l", "benchmarks"],  # not its tools' virtualenvs
            ["-c", "import crawler"],
            ["-m", "crawler", "crawl", "--help"],
        ):
            result = subprocess.run(
                [str(PROJECT_PYTHON), *args],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                output = (result.stderr or result.stdout).strip()
                raise ToolUnavailable(f"`python {' '.join(args)}` failed:\n{output}")

    def command(self, ctx: RunContext) -> tuple[list[str], Path]:
        """``python -m crawler crawl benchmarks/bench_spider.py:BenchSpider -o ours.db ...``."""
        settings = [
            arg
            for key, value in self.settings.items()
            for arg in ("-s", f"{key}={self._value(value, ctx.concurrency)}")
        ]
        spider = f"{(BENCH_DIR / 'bench_spider.py').relative_to(REPO_ROOT)}:BenchSpider"
        command = [
            str(PROJECT_PYTHON),
            "-m",
            "crawler",
            "crawl",
            spider,
            "-o",
            str(ctx.run_dir / "ours.db"),
            "--start-url",
            ctx.start_url,
            *settings,
        ]
        if self.processes > 1:
            command += ["--processes", str(self.processes)]
        return command, REPO_ROOT

    def _value(self, template: str, concurrency: int) -> str:
        return template.format(
            concurrency=concurrency, crawl_concurrency=concurrency * self.processes
        )

    def collect(self, ctx: RunContext) -> Collected:
        """Read items (typed ``product`` table if there is one) and pages from the SQLite file."""
        db = ctx.run_dir / "ours.db"
        if not db.exists():
            return Collected(pages=None, items=None, problem="no ours.db was written")
        try:
            with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
                return self._read(connection)
        except sqlite3.Error as error:
            return Collected(pages=None, items=None, problem=f"reading ours.db: {error}")

    @staticmethod
    def _read(connection: sqlite3.Connection) -> Collected:
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        if "product" in names:
            rows = connection.execute("SELECT title, price, sku, rating FROM product")
            fields = ("title", "price", "sku", "rating")
            items = [dict(zip(fields, row, strict=True)) for row in rows]
        else:
            items = [json.loads(data) for (data,) in connection.execute("SELECT data FROM items")]
        pages = None
        if "pages" in names:
            (pages,) = connection.execute("SELECT count(*) FROM pages").fetchone()
        return Collected(pages=pages, items=items)

    def versions(self) -> dict[str, str]:
        """The crawler's version and its HTTP and HTML libraries."""
        return {
            name: package_version(PROJECT_PYTHON, name)
            for name in ("crawler", "aiohttp", "selectolax")
        }


class Scrapy:
    """Scrapy ``runspider`` with benchmarks/scrapy_spider.py, items to a JSON lines feed."""

    name = "scrapy"

    def prepare(self) -> None:
        """Create ``benchmarks/.venvs/scrapy`` on first use."""
        try:
            ensure_venv("scrapy", SCRAPY_REQUIREMENTS, probe="scrapy")
        except RuntimeError as error:
            raise ToolUnavailable(str(error)) from error

    def command(self, ctx: RunContext) -> tuple[list[str], Path]:
        """``scrapy runspider benchmarks/scrapy_spider.py -a start_url=... -O items.jsonl``."""
        scrapy = venv_python("scrapy").parent / "scrapy"
        concurrency = [
            f"CONCURRENT_REQUESTS={ctx.concurrency}",
            f"CONCURRENT_REQUESTS_PER_DOMAIN={ctx.concurrency}",
        ]
        command = [
            str(scrapy),
            "runspider",
            str(BENCH_DIR / "scrapy_spider.py"),
            "-a",
            f"start_url={ctx.start_url}",
            "-a",
            f"report={ctx.run_dir / 'report.json'}",
            "-O",
            str(ctx.run_dir / "items.jsonl"),
            *(arg for setting in concurrency for arg in ("-s", setting)),
        ]
        return command, ctx.run_dir

    def collect(self, ctx: RunContext) -> Collected:
        """Read report.json (from the spider's ``closed``) and the feed."""
        return _read_report(ctx, items=True)

    def versions(self) -> dict[str, str]:
        """Scrapy and the libraries that do its I/O and parsing."""
        python = venv_python("scrapy")
        return {name: package_version(python, name) for name in ("scrapy", "twisted", "parsel")}


class Crawlee:
    """Crawlee for Python (ParselCrawler, default storage) with benchmarks/crawlee_crawler.py."""

    name = "crawlee"

    def prepare(self) -> None:
        """Create ``benchmarks/.venvs/crawlee`` on first use (parsel extra, else beautifulsoup)."""
        problems = []
        for requirements in CRAWLEE_REQUIREMENTS:
            try:
                ensure_venv("crawlee", requirements, probe="crawlee.crawlers")
            except RuntimeError as error:
                problems.append(str(error))
            else:
                return
        raise ToolUnavailable("\n".join(problems))

    def command(self, ctx: RunContext) -> tuple[list[str], Path]:
        """``python -P benchmarks/crawlee_crawler.py --start-url ... --out RUN_DIR``."""
        # -P: don't put benchmarks/ on sys.path, where site.py and friends could shadow modules.
        command = [
            str(venv_python("crawlee")),
            "-P",
            str(BENCH_DIR / "crawlee_crawler.py"),
            "--start-url",
            ctx.start_url,
            "--out",
            str(ctx.run_dir),
            "--concurrency",
            str(ctx.concurrency),
        ]
        return command, ctx.run_dir  # Crawlee's default storage goes to ./storage

    def collect(self, ctx: RunContext) -> Collected:
        """Read report.json and the exported dataset."""
        return _read_report(ctx, items=True)

    def versions(self) -> dict[str, str]:
        """Crawlee, its default HTTP client and its parser."""
        python = venv_python("crawlee")
        return {name: package_version(python, name) for name in ("crawlee", "impit", "parsel")}


class Floor:
    """A floor from benchmarks/floors.py: bare aiohttp fetching, or fetching plus parsing."""

    def __init__(self, floor: str) -> None:
        self.floor = floor
        """``fetch`` or ``parse``."""
        self.name = f"floor-{floor}"

    def prepare(self) -> None:
        """Nothing to install: the floors use the project's own environment."""

    def command(self, ctx: RunContext) -> tuple[list[str], Path]:
        """``python -m benchmarks.floors fetch|parse --base URL --site DIR --out RUN_DIR``."""
        command = [
            str(PROJECT_PYTHON),
            "-m",
            "benchmarks.floors",
            self.floor,
            "--base",
            ctx.base_url,
            "--site",
            str(ctx.site),
            "--out",
            str(ctx.run_dir),
            "--concurrency",
            str(ctx.concurrency),
        ]
        return command, REPO_ROOT

    def collect(self, ctx: RunContext) -> Collected:
        """Read report.json (and, for ``parse``, items.jsonl)."""
        return _read_report(ctx, items=self.floor == "parse")

    def versions(self) -> dict[str, str]:
        """aiohttp, plus selectolax and yarl for the parse floor."""
        names = ("aiohttp",) if self.floor == "fetch" else ("aiohttp", "selectolax", "yarl")
        return {name: package_version(PROJECT_PYTHON, name) for name in names}


TOOLS: Final[dict[str, Tool]] = {
    tool.name: tool
    for tool in (Ours(), Ours(processes=2), Scrapy(), Crawlee(), Floor("fetch"), Floor("parse"))
}
"""Every contender by name, in the order each round runs them."""
