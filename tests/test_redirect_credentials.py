"""Credentials stay with their origin: a redirect to another scheme, host or port drops the
request's Authorization, Proxy-Authorization and Cookie headers; a same-origin one keeps them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from crawler import Request
from crawler.fetch.client import Fetcher
from crawler.fetch.outcomes import Fetched
from crawler.settings import load_settings

SEEN = web.AppKey("seen", dict[str, dict[str, str]])
CREDENTIALS = {
    "Authorization": "Bearer s3cret",
    "proxy-authorization": "Basic cHJveHk6cGFzcw==",  # any spelling of the name
    "COOKIE": "session=abc",
}
OTHER = {"X-Trace": "kept everywhere"}


def echo_app() -> web.Application:
    """`/echo` records the headers it received (by the path's `n` query value); `/to?url=X`
    redirects to X."""
    app = web.Application()
    app[SEEN] = {}

    async def echo(request: web.Request) -> web.Response:
        app[SEEN][request.query["n"]] = dict(request.headers)
        return web.Response(text="ok")

    async def to(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["url"])

    app.router.add_get("/echo", echo)
    app.router.add_get("/to", to)
    return app


@dataclass
class Origins:
    home: TestServer
    """127.0.0.1, where requests start."""
    other_host: TestServer
    """127.0.0.2: another host."""
    other_port: TestServer
    """127.0.0.1 on another port."""


@pytest.fixture
async def origins() -> AsyncIterator[Origins]:
    servers = Origins(
        TestServer(echo_app(), host="127.0.0.1"),
        TestServer(echo_app(), host="127.0.0.2"),
        TestServer(echo_app(), host="127.0.0.1"),
    )
    async with servers.home, servers.other_host, servers.other_port:
        yield servers


def via(server: TestServer, target: str) -> str:
    """A URL on `server` that redirects to `target`."""
    return str(server.make_url("/to").with_query(url=target))


def credentials_of(headers: dict[str, str]) -> set[str]:
    names = {name.lower() for name in headers}
    return names & {"authorization", "proxy-authorization", "cookie"}


async def fetch(url: str) -> Fetched:
    settings = load_settings(overrides={"max_retries": 0}).settings
    async with Fetcher(settings, lambda target: None) as fetcher:
        outcome = await fetcher.fetch(Request(url, headers={**CREDENTIALS, **OTHER}))
    assert isinstance(outcome, Fetched), outcome
    assert outcome.status == 200
    return outcome


async def test_a_same_origin_redirect_keeps_the_credentials(origins: Origins) -> None:
    await fetch(via(origins.home, str(origins.home.make_url("/echo?n=same"))))
    seen = origins.home.app[SEEN]["same"]
    assert credentials_of(seen) == {"authorization", "proxy-authorization", "cookie"}
    assert seen["Authorization"] == "Bearer s3cret"
    assert seen["Cookie"] == "session=abc"
    assert seen["X-Trace"] == "kept everywhere"


@pytest.mark.parametrize("other", ["other_host", "other_port"])
async def test_a_redirect_to_another_origin_drops_them(origins: Origins, other: str) -> None:
    server: TestServer = getattr(origins, other)
    fetched = await fetch(via(origins.home, str(server.make_url("/echo?n=cross"))))
    assert fetched.url.startswith(str(server.make_url("/echo")))
    seen = server.app[SEEN]["cross"]
    assert credentials_of(seen) == set()
    assert seen["X-Trace"] == "kept everywhere"  # only the credentials are dropped


async def test_once_dropped_they_stay_dropped_when_a_redirect_comes_back(
    origins: Origins,
) -> None:
    back_home = str(origins.home.make_url("/echo?n=back"))
    await fetch(via(origins.home, via(origins.other_host, back_home)))
    assert credentials_of(origins.home.app[SEEN]["back"]) == set()


async def test_a_fetch_without_redirects_sends_them(origins: Origins) -> None:
    await fetch(str(origins.other_host.make_url("/echo?n=direct")))
    seen = origins.other_host.app[SEEN]["direct"]
    assert credentials_of(seen) == {"authorization", "proxy-authorization", "cookie"}
