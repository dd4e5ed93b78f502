"""A throwaway PostgreSQL server for the test suite: initdb, pg_ctl start/restart/stop.

One server per test session (per pytest-xdist worker), on a free port of 127.0.0.1, in a
temporary directory; each test gets a database of its own (`create_database`). Debian's
binaries (/usr/lib/postgresql/N/bin, which `make test` installs where missing) refuse to run
as root, so as root every command runs as the `postgres` user in a directory it owns.

Not pytest-postgresql: its executor runs initdb and pg_ctl as the current user, and the
fault test needs to restart the server it started (`restart`), which this does in a line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final

__all__ = ["TEST_SETTINGS", "PostgresServer", "find_bin_dir"]

TEST_SETTINGS: Final = (
    # A test server: a crash may lose it all, and nothing outlives the session anyway.
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=200",
    "shared_buffers=64MB",
)
"""The suite's settings; benchmarks pass their own (PostgreSQL's durable defaults)."""


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian's layout, then $PATH)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, superuser `postgres`, trust auth."""

    def __init__(self, bin_dir: Path, settings: tuple[str, ...] = TEST_SETTINGS) -> None:
        self.bin_dir = bin_dir
        self.settings = ("listen_addresses=127.0.0.1", *settings)
        self.base = Path(tempfile.mkdtemp(prefix="crawler-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = 0
        self._as_postgres = os.geteuid() == 0
        self._databases = 0
        if self._as_postgres:
            shutil.chown(self.base, "postgres", "postgres")
            self.base.chmod(0o700)

    def _run(self, tool: str, *args: str, timeout: float = 60.0) -> None:
        command = [str(self.bin_dir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.base,
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{result.stderr}\n{log}")

    def start(self) -> None:
        """Create the cluster (first time) and start it on a free port."""
        if not self.data.exists():
            self._run(
                "initdb",
                *("-D", str(self.data), "-U", "postgres", "--auth=trust"),
                *("-E", "UTF8", "--locale=C", "--no-sync"),
            )
        for attempt in range(5):  # another process may take the port between bind and start
            self.port = _free_port()
            options = " ".join(f"-c {setting}" for setting in self.settings)
            try:
                self._run(
                    "pg_ctl",
                    *("-D", str(self.data), "-l", str(self.log), "-w", "-t", "60"),
                    *("-o", f"-p {self.port} -k {self.base} {options}", "start"),
                )
                return
            except RuntimeError:
                if attempt == 4:
                    raise

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every connection is cut, the server is back on the same
        port once this returns."""
        self._run(
            "pg_ctl",
            *("-D", str(self.data), "-l", str(self.log), "-w", "-t", "60"),
            *("-m", "fast", "restart"),
        )

    def stop(self) -> None:
        """Stop the server (immediate: nothing is kept) and remove its directory."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop")
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """The URL `crawler crawl -o` takes for `database` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """Create an empty database; return its URL."""
        self._databases += 1
        name = f"crawl_{os.getpid()}_{self._databases}_{time.monotonic_ns() % 10**6}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of `url`, closing whatever is still connected to it."""
        name = url.rsplit("/", 1)[1]
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one statement in `database`; return its unaligned output."""
        psql = self.bin_dir / "psql"
        result = subprocess.run(
            [
                str(psql),
                *("-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"),
                "-d",
                self.url(database),
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed: {result.stderr}")
        return result.stdout
