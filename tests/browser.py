"""Headless Chromium driven over the DevTools protocol (no extra package: aiohttp's websocket
client speaks it), for the dashboard's browser tests.

Debian's `chromium` (/usr/bin/chromium) with a fresh profile, no sandbox (CI runs as root),
and everything that would reach the network switched off: the machine's network is closed,
and only pages on 127.0.0.1 are loaded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import aiohttp

__all__ = ["CHROMIUM", "Browser", "chromium_missing", "open_browser"]

CHROMIUM: Final = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
    "--window-size=1280,1800",
    "--remote-debugging-port=0",
)


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if shutil.which(CHROMIUM) is None:
        return f"{CHROMIUM} is not installed (apt-get install -y chromium; `make test` tries)"
    return None


class Browser:
    """One page of a running Chromium, driven over its DevTools websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events meanwhile are dropped)."""
        message_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": message_id, "method": method, "params": params}))
        async for message in self._ws:
            data = json.loads(message.data)
            if data.get("id") != message_id:
                continue
            if "error" in data:
                raise RuntimeError(f"{method}: {data['error']}")
            result: dict[str, Any] = data["result"]
            return result
        raise RuntimeError("the browser closed its DevTools connection")

    async def goto(self, url: str) -> None:
        """Load `url` and wait until its document has loaded."""
        await self.call("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable)."""
        reply = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, *, within: float = 30.0) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value."""
        async with asyncio.timeout(within):
            # the page has no event to wait for here: it is asked again and again
            while not (value := await self.evaluate(expression)):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        return value

    async def screenshot(self, path: Path) -> Path:
        """Save a PNG of the whole page at `path`."""
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))
        return path


@contextlib.asynccontextmanager
async def open_browser() -> AsyncIterator[Browser]:
    """Start headless Chromium with a fresh profile; yield its first page; stop it."""
    # Chromium's helper processes (crashpad, zygote) may still write to the profile for a
    # moment after the browser exits: they are killed with its process group, and a file
    # they write after that does not fail the test.
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as profile:
        process = await asyncio.create_subprocess_exec(
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            port = await _devtools_port(Path(profile), lambda: process.wait())
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                    targets = await response.json()
                page = next(t for t in targets if t["type"] == "page")
                async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    browser = Browser(ws)
                    await browser.call("Page.enable")
                    yield browser
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    async with asyncio.timeout(10):
                        await process.wait()
                except TimeoutError:
                    process.kill()
                    await process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


async def _devtools_port(profile: Path, exited: Callable[[], Awaitable[int]]) -> int:
    """The DevTools port Chromium wrote to its profile (it picked a free one)."""
    marker = profile / "DevToolsActivePort"
    async with asyncio.timeout(30):
        waiting = asyncio.ensure_future(exited())
        try:
            while not marker.is_file() or not marker.read_text().strip():
                if waiting.done():
                    raise RuntimeError(f"chromium exited with code {waiting.result()}")
                await asyncio.sleep(0.05)
        finally:
            waiting.cancel()
    return int(marker.read_text().splitlines()[0])
