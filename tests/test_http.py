"""Request and Response: callbacks by name, decoding, selectors, links, follow(); no network."""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator
from typing import Any

import pytest

from crawler import Request, Response, Spider, SpiderError, text_of
from crawler.spider.http import detect_encoding


class PagesSpider(Spider):
    name = "pages"

    async def parse(self, response: Response) -> AsyncIterator[Any]:
        yield {"url": response.url}

    async def parse_detail(self, response: Response) -> AsyncIterator[Any]:
        yield {"detail": response.url}


def make_response(
    body: bytes, content_type: str = "text/html", url: str = "http://s.test/a/b"
) -> Response:
    return Response(
        url=url,
        status=200,
        headers={"Content-Type": content_type},
        body=body,
        request=Request(url, depth=2, meta={"k": "v"}),
    )


def test_request_stores_callback_by_name() -> None:
    spider = PagesSpider()
    assert Request("http://s.test/").callback == "parse"
    assert Request("http://s.test/", callback=spider.parse_detail).callback == "parse_detail"
    assert Request("http://s.test/", callback="parse_detail").callback == "parse_detail"


def test_request_rejects_a_plain_function_as_callback() -> None:
    async def loose(response: Response) -> AsyncIterator[Any]:
        yield {}

    with pytest.raises(SpiderError, match="spider method"):
        Request("http://s.test/", callback=loose)


def test_request_replace_keeps_other_fields() -> None:
    original = Request(
        "http://s.test/", callback="parse_detail", meta={"a": 1}, priority=3, depth=4
    )
    copy = original.replace(url="http://s.test/x")
    assert (copy.url, copy.callback, copy.meta, copy.priority, copy.depth) == (
        "http://s.test/x",
        "parse_detail",
        {"a": 1},
        3,
        4,
    )


@pytest.mark.parametrize(
    ("body", "content_type", "expected_text"),
    [
        ("café €".encode(), "text/html; charset=utf-8", "café €"),
        ("café €".encode("cp1252"), "text/html; charset=windows-1252", "café €"),
        ("café".encode("latin-1"), "text/html; charset=ISO-8859-1", "café"),
        ("café €".encode("cp1252"), "text/html; charset=utf-8", "café €"),  # wrong declaration
        ("café €".encode("cp1252"), "text/html; charset=x-made-up", "café €"),  # unknown charset
        ("café €".encode("cp1252"), "text/html", "café €"),  # no charset: not UTF-8, so 1252
        ("café".encode(), "text/html", "café"),  # no charset, valid UTF-8
        (codecs.BOM_UTF8 + "café".encode(), "text/html; charset=latin-1", "café"),  # BOM wins
        (codecs.BOM_UTF16_LE + "café".encode("utf-16-le"), "text/html", "café"),
        (
            b'<meta charset="iso-8859-15"><p>' + "caf\u00e9 \u20ac".encode("iso-8859-15"),
            "text/html",
            '<meta charset="iso-8859-15"><p>café €',
        ),
    ],
)
def test_text_decodes_with_bom_header_or_meta_and_never_fails(
    body: bytes, content_type: str, expected_text: str
) -> None:
    response = make_response(body, content_type)
    assert response.text.lstrip("\ufeff") == expected_text


def test_nul_bytes_are_dropped_from_text() -> None:
    assert make_response(b"<p>a\x00b</p>").text == "<p>ab</p>"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("<p>café € 東京</p>".encode(), "text/html; charset=utf-8"),  # parsed from the bytes
        ("<p>café € 東京</p>".encode(), "text/html"),
        (codecs.BOM_UTF8 + "<p>café € 東京</p>".encode(), "text/html"),  # from the text
        ("<p>café € 東京</p>".encode("utf-16-le"), "text/html; charset=utf-16-le"),
        ("<p>café €</p>".encode("cp1252"), "text/html; charset=utf-8"),  # wrong declaration
        ("<p>caf\x00é € 東京</p>".encode(), "text/html"),  # NUL: from the text, without it
    ],
)
def test_the_tree_reads_the_same_text_whatever_the_encoding(body: bytes, content_type: str) -> None:
    response = make_response(body, content_type)
    paragraph = response.css_first("p")
    assert paragraph is not None
    assert paragraph.text() == response.text.lstrip("\ufeff")[3:-4]


def test_detect_encoding_order() -> None:
    assert detect_encoding(codecs.BOM_UTF8 + b"x", "text/html; charset=cp1252") == "utf-8-sig"
    assert detect_encoding(b"x", "text/html; charset=cp1252") == "cp1252"
    assert detect_encoding(b"<meta charset='koi8-r'>", "text/html") == "koi8-r"


def test_css_helpers_and_text_of() -> None:
    response = make_response(
        b"<div><h1> Title <b>bold</b> </h1><p class='x'>1</p><p class='x'>2</p></div>"
    )
    assert text_of(response.css_first("h1")) == "Title bold"
    assert [text_of(p) for p in response.css("p.x")] == ["1", "2"]
    assert response.css_first("nothing") is None
    assert text_of(response.css_first("nothing"), default="-") == "-"


def test_links_urljoin_and_follow() -> None:
    response = make_response(b'<a href="../c#f">c</a><a href="/d">d</a><a href="../c">again</a>')
    assert response.links() == ["http://s.test/c", "http://s.test/d"]
    assert response.urljoin("x?y=1") == "http://s.test/a/x?y=1"
    anchor = response.css_first("a")
    assert anchor is not None
    spider = PagesSpider()
    request = response.follow(anchor, callback=spider.parse_detail, meta={"from": "test"})
    assert (request.url, request.callback, request.depth, request.meta) == (
        "http://s.test/c",
        "parse_detail",
        3,
        {"from": "test"},
    )
    assert response.follow("/d").callback == "parse"


def test_response_exposes_request_meta_depth_and_content_type() -> None:
    response = make_response(b"", "Text/HTML; charset=utf-8")
    assert response.meta == {"k": "v"}
    assert response.depth == 2
    assert response.content_type == "text/html"
    assert response.request.url == "http://s.test/a/b"
