"""Cookies bounded like the rest of per-host state (crawler.fetch.cookies): the jar holds the
cookies of the hosts in memory, the `hosts` table the rest, and a host that comes back, in
the same run or the next, sends the cookies it was given.

(The crawl of many cookie-setting hosts under a memory bound is in tests/test_host_memory.py.)
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from crawler import crawl
from crawler.cli.common import with_start_urls
from crawler.fetch.cookies import HostCookies, domains_of, requesting
from tests.conftest import Target, scalar
from tests.polite_sites import VISITS, Visits
from tests.sites import html_page
from tests.spiders import FollowAllSpider
from tests.test_host_memory import FAST, host_of_request

pytestmark = pytest.mark.usefixtures("named_hosts")


def sent(jar: HostCookies, url: str) -> dict[str, str]:
    """The cookies the jar sends with a request of `url`."""
    return {name: morsel.value for name, morsel in jar.filter_cookies(URL(url)).items()}


def set_by(jar: HostCookies, url: str, *headers: str) -> None:
    """A response of `url` with these Set-Cookie headers."""
    jar.update_cookies_from_headers(list(headers), URL(url))


def test_the_domains_a_host_is_sent_cookies_of() -> None:
    assert list(domains_of("a.b.test")) == ["a.b.test", "b.test", "test"]
    assert list(domains_of("127.0.0.1")) == ["127.0.0.1"]


async def test_a_snapshot_carries_a_hosts_cookies_only_when_they_changed() -> None:
    jar = HostCookies()
    assert jar.snapshot("a.test") is None  # nothing ever set
    set_by(jar, "http://a.test/x", "sid=1; Path=/", "pref=dark; Path=/x; Max-Age=3600")
    stored = jar.snapshot("a.test")
    assert stored is not None
    names = {row[2]: row for row in json.loads(stored)}
    assert set(names) == {"sid", "pref"}
    assert names["pref"][6] == pytest.approx(time.time() + 3600, abs=5)  # absolute expiry
    assert jar.snapshot("a.test") is None  # unchanged since written
    assert jar.snapshot("b.test") is None
    set_by(jar, "http://a.test/", "sid=; Path=/; Max-Age=0", "pref=; Path=/x; Max-Age=0")
    assert jar.snapshot("a.test") == "[]"  # deleted by the host: the row must say so


async def test_forgotten_cookies_come_back_with_their_host() -> None:
    jar = HostCookies()
    set_by(jar, "http://a.test/", "sid=s3cret; Path=/; HttpOnly")
    stored = jar.snapshot("a.test")
    jar.forget(["a.test"])
    assert len(jar) == 0 and sent(jar, "http://a.test/") == {}
    jar.restore("a.test", stored)
    assert sent(jar, "http://a.test/page") == {"sid": "s3cret"}
    assert sent(jar, "http://sub.a.test/") == {}  # host-only, as it was set
    assert jar.snapshot("a.test") is None  # just read back: nothing new to write


async def test_an_expired_cookie_is_not_brought_back() -> None:
    jar = HostCookies()
    set_by(jar, "http://a.test/", "old=1; Path=/; Max-Age=60", "sid=2; Path=/")
    stored = jar.snapshot("a.test")
    assert stored is not None
    rows = json.loads(stored)
    for row in rows:
        if row[2] == "old":
            row[6] = time.time() - 1  # expired while the host was away
    jar.forget(["a.test"])
    jar.restore("a.test", json.dumps(rows))
    assert sent(jar, "http://a.test/") == {"sid": "2"}


async def test_a_domain_cookie_stays_while_a_host_under_it_is_in_memory() -> None:
    jar = HostCookies()
    set_by(jar, "http://www.a.test/", "site=1; Domain=a.test; Path=/")
    assert jar.snapshot("www.a.test") is not None
    api = jar.snapshot("api.a.test")  # its row gets the domain's cookie too
    assert api is not None and json.loads(api)[0][:3] == ["a.test", "/", "site"]
    jar.forget(["www.a.test"])
    assert sent(jar, "http://api.a.test/") == {"site": "1"}
    jar.forget(["api.a.test"])
    assert len(jar) == 0
    jar.restore("api.a.test", api)
    assert sent(jar, "http://api.a.test/") == {"site": "1"}


async def test_a_restore_leaves_a_newer_value_of_a_domain_cookie() -> None:
    jar = HostCookies()
    set_by(jar, "http://www.a.test/", "site=old; Domain=a.test; Path=/")
    api = jar.snapshot("api.a.test")
    jar.forget(["api.a.test"])
    set_by(jar, "http://www.a.test/", "site=new; Domain=a.test; Path=/")
    jar.restore("api.a.test", api)
    assert sent(jar, "http://api.a.test/") == {"site": "new"}


async def test_cookies_a_redirect_target_sets_belong_to_the_requested_host() -> None:
    jar = HostCookies()
    requesting("a.test")  # a.test/ redirected to www.a.test/, which set a cookie
    set_by(jar, "http://www.a.test/", "sid=1; Path=/")
    stored = jar.snapshot("a.test")
    assert stored is not None and json.loads(stored)[0][:3] == ["www.a.test", "/", "sid"]
    jar.forget(["a.test"])
    assert len(jar) == 0  # it left with the host it came for
    jar.restore("a.test", stored)
    assert sent(jar, "http://www.a.test/") == {"sid": "1"}
    jar.forget(["a.test"])
    assert len(jar) == 0


CHECKED = web.AppKey("checked", list[str])


def cookie_app(www: bool = False) -> web.Application:
    """A sets a session cookie on `/`, which links to B's `/slow`; B answers after 0.5 s
    with a link to A's `/check`, which records the Cookie header it gets (`CHECKED`). With
    `www`, A's pages redirect to the same pages on `www.a.test`, which answers for A."""
    app = web.Application()
    app[VISITS] = Visits()
    app[CHECKED] = []

    async def handle(request: web.Request) -> web.Response:
        host, path, port = host_of_request(request), request.path, request.url.port
        body = html_page("")
        if www and host == "a.test":
            raise web.HTTPFound(f"http://www.a.test:{port}{path}")
        host = "a.test" if host == "www.a.test" else host
        if host == "a.test" and path == "/":
            body = html_page(f'<a href="http://b.test:{port}/slow">b</a>')
            response = web.Response(text=body, content_type="text/html")
            response.set_cookie("sid", "s3cret", path="/", httponly=True)
            return response
        if host == "b.test" and path == "/slow":
            await asyncio.sleep(0.5)
            body = html_page(f'<a href="http://a.test:{port}/check">check</a>')
        elif host == "a.test" and path == "/check":
            app[CHECKED].append(request.headers.get("Cookie", ""))
        return web.Response(text=body, content_type="text/html")

    app.router.add_get("/{tail:.*}", handle)
    return app


async def test_a_host_evicted_and_reloaded_still_sends_its_cookie(
    database: Target, restored: list[str]
) -> None:
    app = cookie_app()
    async with TestServer(app, host="127.0.0.1") as server:
        spider = with_start_urls(FollowAllSpider, [f"http://a.test:{server.port}/"])
        spider.allowed_domains = []
        stats = await crawl(spider, db=database, settings=FAST)
    assert stats["pages"] == 3
    assert "a.test" in restored  # it left memory (and the jar), then came back
    assert app[CHECKED] == ["sid=s3cret"]
    stored = scalar(database, "SELECT cookies FROM hosts WHERE host = 'a.test'")
    assert "s3cret" in stored
    assert scalar(database, "SELECT cookies FROM hosts WHERE host = 'b.test'") is None


async def test_a_redirect_targets_cookie_comes_back_with_the_requested_host(
    database: Target, restored: list[str]
) -> None:
    app = cookie_app(www=True)
    async with TestServer(app, host="127.0.0.1") as server:
        spider = with_start_urls(FollowAllSpider, [f"http://a.test:{server.port}/"])
        spider.allowed_domains = []
        await crawl(spider, db=database, settings=FAST)
    assert "a.test" in restored
    assert app[CHECKED] == ["sid=s3cret"]  # a.test/check, redirected to www.a.test/check


async def test_a_session_cookie_survives_a_resume(database: Target) -> None:
    app = cookie_app()
    async with TestServer(app, host="127.0.0.1") as server:
        home = f"http://a.test:{server.port}/"
        first = await crawl(with_start_urls(FollowAllSpider, [home]), db=database, settings=FAST)
        # the next run (a new jar) brings a new request of the host
        spider = with_start_urls(FollowAllSpider, [home, f"{home}check"])
        second = await crawl(spider, db=database, settings=FAST)
    assert first["pages"] == 1 and second["pages"] == 1
    assert app[CHECKED] == ["sid=s3cret"]
