"""Serve the benchmark site on 127.0.0.1 with a server that is not the bottleneck.

``StaticServer(root)`` runs nginx (one worker, no access log, sendfile) in its own temporary
prefix, installing it with apt-get when missing; without nginx it falls back, with a warning, to
an aiohttp static server in a separate process. Both expose a request counter at ``/__status``.
Run ``python -m benchmarks.server --root DIR`` to serve a site by hand until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

ServerKind = Literal["auto", "nginx", "aiohttp"]

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
STATUS_PATH: Final = "/__status"
_START_TIMEOUT: Final = 15.0

_NGINX_CONF: Final = """\
daemon off;
master_process on;
worker_processes 1;
{user}pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    open_file_cache max=20000 inactive=60s;
    types {{ text/html html; application/json json; text/plain txt; }}
    default_type application/octet-stream;
    charset utf-8;
    client_body_temp_path {tmp}/client_body;
{temp_paths}    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        root {root};
        location / {{ }}
{status}    }}
}}
"""
_OPTIONAL_TEMP_PATHS: Final = ("proxy", "fastcgi", "uwsgi", "scgi")


def find_nginx() -> str | None:
    """Return the nginx executable, or None if it is not installed."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def _apt_get(*args: str) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "-q", *args]
    result = subprocess.run(command, env=env, capture_output=True, check=False)
    return result.returncode == 0


def install_nginx() -> str | None:
    """Install nginx-light (or nginx) with apt-get; return the executable or None on failure."""
    if not shutil.which("apt-get") or os.geteuid() != 0:
        return None
    print("nginx not found: installing it with apt-get ...", file=sys.stderr, flush=True)
    if not _apt_get("update"):
        return None
    for package in ("nginx-light", "nginx"):
        if _apt_get("install", "-y", "--no-install-recommends", package) and find_nginx():
            return find_nginx()
    return None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def nginx_version(nginx: str) -> str:
    """Return nginx's version, e.g. ``nginx/1.22.1``."""
    result = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
    return result.stderr.strip().removeprefix("nginx version: ")


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


class StaticServer:
    """A static file server for ``root`` on 127.0.0.1, started and stopped as a context manager.

    ``kind="auto"`` uses nginx (installed with apt-get if missing) and falls back to aiohttp.
    ``cpu`` pins the server process to one CPU (``os.sched_setaffinity``); by default the
    scheduler places it. Inside the ``with`` block, ``base_url`` is ``http://127.0.0.1:PORT``.
    """

    def __init__(self, root: Path, *, kind: ServerKind = "auto", cpu: int | None = None) -> None:
        self.root = root.resolve()
        self.requested = kind
        self.cpu = cpu
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.kind: Literal["nginx", "aiohttp"] = "aiohttp"
        self.version = ""
        self.counts_requests = True
        """Whether :meth:`requests_served` works (nginx may lack ``stub_status``)."""
        self._tmp = Path(tempfile.mkdtemp(prefix="bench-server-"))  # removed by stop()
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stop()  # no stray process or temporary directory when start-up fails
            raise
        return self

    def _start(self) -> None:
        nginx = None
        if self.requested != "aiohttp":
            nginx = find_nginx() or install_nginx()
            if nginx is None and self.requested == "nginx":
                raise RuntimeError("nginx is not installed and could not be installed")
        if nginx is None:
            if self.requested == "auto":
                print(
                    "WARNING: nginx unavailable, serving with aiohttp instead; the server may "
                    "limit throughput (it is one Python process)",
                    file=sys.stderr,
                )
            command = self._aiohttp_command()
        else:
            command = self._nginx_command(nginx)
        log = (self._tmp / "server.log").open("wb")
        # The affinity is set in the child before exec, so nginx's worker inherits it.
        self._process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            preexec_fn=(lambda: _pin(self.cpu)) if self.cpu is not None else None,
        )
        log.close()
        self._wait_until_ready(self._process)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the server process and remove its temporary directory."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)  # nginx: fast shutdown
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    def requests_served(self) -> int | None:
        """Return how many requests the server has answered so far, this one included.

        None if this nginx was built without ``stub_status``, so there is no counter.
        """
        if not self.counts_requests:
            return None
        url = self.base_url + STATUS_PATH
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as r:
            text = r.read().decode()
        # nginx stub_status: "server accepts handled requests\n 1 1 7\n"
        match = re.search(r"requests\s*\n\s*\d+\s+\d+\s+(\d+)", text)
        if match is None:
            raise RuntimeError(f"unexpected status page: {text!r}")
        return int(match.group(1))

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return None if self._process is None else self._process.pid

    def _nginx_command(self, nginx: str) -> list[str]:
        self.kind = "nginx"
        self.version = nginx_version(nginx)
        built_with = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False)
        temp_paths = "".join(
            f"    {name}_temp_path {self._tmp}/{name};\n"
            for name in _OPTIONAL_TEMP_PATHS
            if f"--without-http_{name}_module" not in built_with.stderr
        )
        self.counts_requests = "http_stub_status_module" in built_with.stderr
        status = f"        location = {STATUS_PATH} {{ stub_status; }}\n"
        conf = _NGINX_CONF.format(
            user="user root;\n" if os.geteuid() == 0 else "",  # workers must read a 0700 temp dir
            tmp=self._tmp,
            temp_paths=temp_paths,
            port=self.port,
            root=self.root,
            status=status if self.counts_requests else "",
        )
        (self._tmp / "nginx.conf").write_text(conf)
        return [
            nginx,
            "-p",
            str(self._tmp),
            "-c",
            str(self._tmp / "nginx.conf"),
            "-e",
            str(self._tmp / "error.log"),
        ]

    def _aiohttp_command(self) -> list[str]:
        self.kind = "aiohttp"
        self.version = f"aiohttp/{importlib.metadata.version('aiohttp')}"
        return [
            sys.executable,
            "-m",
            "benchmarks.server",
            "--root",
            str(self.root),
            "--port",
            str(self.port),
            "--server",
            "aiohttp-child",
        ]

    def _wait_until_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log = (self._tmp / "server.log").read_text(errors="replace")
                errors = self._tmp / "error.log"
                if errors.exists():
                    log += errors.read_text(errors="replace")
                raise RuntimeError(f"{self.kind} exited with {process.returncode}:\n{log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                time.sleep(0.05)
            else:
                return
        raise RuntimeError(f"{self.kind} did not listen on port {self.port} in {_START_TIMEOUT}s")


def serve_with_aiohttp(root: Path, port: int) -> None:
    """Serve ``root`` on 127.0.0.1:``port`` with aiohttp until killed (the nginx fallback)."""
    # Imported here: the parent process does not need aiohttp.
    from aiohttp import web
    from aiohttp.typedefs import Handler

    served = 0

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal served
        served += 1
        return await handler(request)

    async def status(request: web.Request) -> web.Response:
        return web.Response(text=f"server accepts handled requests\n 0 0 {served}\n")

    app = web.Application(middlewares=[count])
    app.router.add_get(STATUS_PATH, status)
    app.router.add_static("/", root)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def main() -> None:
    """Command line: serve a directory until Ctrl-C (or run as the aiohttp fallback child)."""
    parser = argparse.ArgumentParser(description="Serve a directory for the benchmarks.")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument(
        "--server", choices=("auto", "nginx", "aiohttp", "aiohttp-child"), default="auto"
    )
    parser.add_argument("--server-cpu", type=int, default=None, help="pin the server to this CPU")
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server == "aiohttp-child":
        serve_with_aiohttp(args.root, args.port)
        return
    with StaticServer(args.root, kind=args.server, cpu=args.server_cpu) as server:
        print(f"serving {args.root} at {server.base_url}/ with {server.version}; Ctrl-C stops")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
