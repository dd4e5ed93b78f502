"""`crawler dashboard FILE`: a read-only web page that shows a crawl while it runs (and after).

The page (crawler/cli/static: HTML, CSS and hand-written JavaScript that draws its charts as
SVG; nothing is fetched from elsewhere) asks `/api/state` every two seconds for what
crawler.results.watch makes of the database. Each answer opens the file read-only in a
thread (crawler.cli.readonly: no statement can write), runs the queries in one read
transaction and closes it, so the page follows a crawl that another process writes, and a
file that does not exist yet (a crawl about to start) is shown as awaited. The server only
answers GET and listens on 127.0.0.1 unless told otherwise. `serve_dashboard` runs the same
page beside a crawl (`crawler crawl --dashboard`).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Final

import click
from aiohttp import web
from rich.console import Console

from crawler.cli.common import UserError, setup_logging, stop_signals, user_errors
from crawler.cli.readonly import open_crawl_database, open_read_only, read_crawl_database
from crawler.errors import StorageError
from crawler.results.watch import dashboard_state, queries
from crawler.store.schema import storage_error

__all__ = [
    "DEFAULT_PORT",
    "dashboard",
    "dashboard_app",
    "dashboard_beside",
    "dashboard_options",
    "listen",
    "serve_dashboard",
]

DEFAULT_PORT: Final = 8050
_DB: Final = web.AppKey("db", Path)
_STATIC: Final = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
_HEADERS: Final = {
    # Everything the page uses comes from this server; nothing is inlined.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def read_state(path: Path, run: int | None) -> dict[str, Any]:
    """The dashboard's data for `run` (None: the latest) of the crawl database at `path`,
    read in one read-only transaction; `{"waiting": …}` while a crawl is creating the file.
    Blocking: call it in a thread.

    Raises:
        StorageError: the file is missing, not a crawl database, or cannot be read.
    """
    try:
        conn = open_crawl_database(path)
    except StorageError:
        if _being_created(path):
            return {"waiting": f"{path} is being created"}
        raise
    try:
        conn.execute("BEGIN")
        has_samples = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'stats_ts'"
        ).fetchone()[0]
        rows = {
            name: conn.execute(sql, params).fetchall()
            for name, (sql, params) in queries(run, samples=bool(has_samples)).items()
        }
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise storage_error(path, exc, "read") from None
    finally:
        conn.close()
    return dashboard_state(rows)


def _being_created(path: Path) -> bool:
    """Whether `path` is an SQLite file without a table yet: a crawl creating it."""
    try:
        conn = open_read_only(path)
    except StorageError:
        return False
    try:
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        return bool(tables == 0 and conn.execute("PRAGMA application_id").fetchone()[0] == 0)
    except sqlite3.Error:
        return False
    finally:
        conn.close()


def dashboard_app(db: Path) -> web.Application:
    """The dashboard of the crawl database `db` as an aiohttp application."""
    app = web.Application(middlewares=[_headers])
    app[_DB] = db
    app.router.add_get("/", _page)
    app.router.add_get("/static/{name}", _static)
    app.router.add_get("/api/state", _state)
    return app


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    response.headers.update(_HEADERS)
    return response


async def _page(request: web.Request) -> web.Response:
    return web.Response(text=_resource("dashboard.html"), content_type="text/html")


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise web.HTTPNotFound()
    return web.Response(text=_resource(name), content_type=_STATIC[name])


async def _state(request: web.Request) -> web.Response:
    db = request.app[_DB]
    run_text = request.query.get("run", "")
    if run_text and not (run_text.isascii() and run_text.isdigit() and len(run_text) <= 18):
        raise web.HTTPBadRequest(text="run must be the id of a crawl run")
    run = int(run_text) if run_text else None
    if not db.is_file():
        return _json({"waiting": f"{db} does not exist yet", "db": str(db)})
    try:
        state = await asyncio.to_thread(read_state, db, run)
    except StorageError as exc:
        return _json({"error": str(exc), "db": str(db)}, status=503)
    state["db"] = str(db)
    return _json(state)


def _json(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, allow_nan=False), status=status, content_type="application/json"
    )


def _resource(name: str) -> str:
    # a path beside this module, not importlib.resources: that import is start-up time of
    # every command, and the package is always installed as files
    return (Path(__file__).parent / "static" / name).read_text(encoding="utf-8")


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` (0: a free port), for `serve_dashboard`.

    Raises:
        UserError: the address cannot be listened on (in use, not this machine's).
    """
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


@asynccontextmanager
async def serve_dashboard(db: Path, sock: socket.socket) -> AsyncIterator[str]:
    """Serve the dashboard of `db` on `sock` for the duration of the block; yields its URL."""
    runner = web.AppRunner(dashboard_app(db), access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{port}/"
    finally:
        await runner.cleanup()


def dashboard_options(command: Callable[..., None]) -> Callable[..., None]:
    """`crawler crawl`'s `--dashboard` and `--dashboard-port` (see `dashboard_beside`)."""
    command = click.option(
        "--dashboard-port",
        type=click.IntRange(0, 65535),
        default=DEFAULT_PORT,
        show_default=True,
        help="Its port on 127.0.0.1 (0 picks a free one).",
    )(command)
    return click.option(
        "--dashboard",
        "with_dashboard",
        is_flag=True,
        help="Serve the live dashboard of this crawl (crawler dashboard) and print its URL.",
    )(command)


def dashboard_beside(
    db: Path | str, port: int, processes: int
) -> AbstractAsyncContextManager[None]:
    """The dashboard of `db` on 127.0.0.1:`port` for as long as a crawl runs (the port is
    taken now: one that cannot be had is bad input before the crawl starts).

    Raises:
        UserError: the port cannot be had, or the crawl runs in several processes.
    """
    if not isinstance(db, Path):
        raise UserError("--dashboard reads a SQLite file, not a PostgreSQL database")
    if processes > 1:
        raise UserError(f"--dashboard runs with one process; run `crawler dashboard {db}`")
    return _announced(db, listen("127.0.0.1", port))


@asynccontextmanager
async def _announced(db: Path, sock: socket.socket) -> AsyncIterator[None]:
    async with serve_dashboard(db, sock) as url:
        click.echo(f"dashboard: {url}", err=True)
        yield


@click.command()
@click.argument("database", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port (0 picks a free one).",
)
def dashboard(database: Path, host: str, port: int) -> None:
    """Serve a live, read-only web page of the crawl in DATABASE until Ctrl-C.

    Charts of pages/s and errors over time, totals, the hosts (throttled, failing and
    slowest first), errors by kind, skips by reason, the latest pages and the runs; it
    follows a crawl that is writing the file, and shows a finished one as it ended.
    """
    setup_logging("WARNING", Console(stderr=True))
    with user_errors():
        read_crawl_database(database, lambda conn: None)  # a crawl database, readable
        sock = listen(host, port)
    asyncio.run(_serve_until_stopped(database, sock))


async def _serve_until_stopped(db: Path, sock: socket.socket) -> None:
    stop = asyncio.Event()
    with stop_signals(stop.set):
        async with serve_dashboard(db, sock) as url:
            click.echo(f"dashboard of {db} at {url} (Ctrl-C to stop)")
            await stop.wait()
    click.echo("stopped", err=True)
