"""URL canonicalisation, fingerprints and link extraction: pure functions, table-driven."""

from __future__ import annotations

import pytest
from selectolax.lexbor import LexborHTMLParser
from yarl import URL

from crawler.links import (
    canonical_parts,
    canonical_url,
    extract_links,
    fingerprint,
    host_of,
    try_canonical_url,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTP://Example.COM/Path/Page.html", "http://example.com/Path/Page.html"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("http://example.com:8080/a", "http://example.com:8080/a"),
        ("http://example.com/a/../b/./c", "http://example.com/b/c"),
        ("http://example.com/a#frag", "http://example.com/a"),
        ("http://example.com", "http://example.com/"),
        ("http://example.com/a?b=2&a=1", "http://example.com/a?b=2&a=1"),
        ("http://example.com/CaseSensitive?Q=Yes", "http://example.com/CaseSensitive?Q=Yes"),
        ("http://example.com/ü x", "http://example.com/%C3%BC%20x"),
        ("http://bücher.example/", "http://xn--bcher-kva.example/"),
        ("  http://example.com/padded \n", "http://example.com/padded"),
    ],
)
def test_canonical_url_folds_only_scheme_and_host(url: str, expected: str) -> None:
    assert canonical_url(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # escapes of reserved characters keep them from acting as delimiters: never decoded
        ("http://x.test/?return=https%3A%2F%2Fx%2F", "http://x.test/?return=https%3A%2F%2Fx%2F"),
        ("http://x.test/a%2Fb", "http://x.test/a%2Fb"),
        ("http://x.test/a%3Ab%40c%21%24%27%28%29%2A%2C%3B%26%3D%2B", None),
        ("http://x.test/?q=%3F%23%26%3D%2B%40%24%2C%3B%21%2A%27%28%29%5B%5D%3A%2F", None),
        # hex in upper case; unreserved characters decoded
        ("http://x.test/a%2fb?c=%3a", "http://x.test/a%2Fb?c=%3A"),
        ("http://x.test/%7euser", "http://x.test/~user"),
        ("http://x.test/%41%2D%2e%5F%7E%30", "http://x.test/A-._~0"),
        ("http://x.test/?q=%41", "http://x.test/?q=A"),
        ("http://x.test/%e2%82%ac?%c3", "http://x.test/%E2%82%AC?%C3"),
        # a "%" that starts no escape stands for itself; a space is %20, in a query too
        ("http://x.test/a%zz%?b%", "http://x.test/a%25zz%25?b%25"),
        ("http://x.test/a%252F", "http://x.test/a%252F"),
        ("http://x.test/a b?c d+e", "http://x.test/a%20b?c%20d+e"),
        # a decoded "." is a dot segment
        ("http://x.test/a/%2e%2E/b", "http://x.test/b"),
    ],
)
def test_canonical_url_decodes_only_unreserved_escapes(url: str, expected: str | None) -> None:
    assert canonical_url(url) == (url if expected is None else expected)


def test_an_encoded_slash_is_a_different_url() -> None:
    encoded, plain = canonical_url("http://x.test/a%2Fb"), canonical_url("http://x.test/a/b")
    assert encoded != plain
    assert fingerprint(encoded) != fingerprint(plain)
    query = canonical_url("http://x.test/?next=%2Fa%26b%3Dc")
    assert query != canonical_url("http://x.test/?next=/a&b=c")
    assert fingerprint(query) != fingerprint(canonical_url("http://x.test/?next=/a&b=c"))


@pytest.mark.parametrize(
    ("href", "base", "expected"),
    [
        ("x", "http://s.test/a%3Fb/page", "http://s.test/a%3Fb/x"),
        ("x", "http://s.test/a%2Fb/c%40d/page?q", "http://s.test/a%2Fb/c%40d/x"),
        ("../y%3A", "http://s.test/a%2Fb/c%40d/page", "http://s.test/a%2Fb/y%3A"),
        ("?q=%2F", "http://s.test/a%2Fb/page?r", "http://s.test/a%2Fb/page?q=%2F"),
        ("x", "http://s.test/%7Eu/%C3%BC%20/page", "http://s.test/~u/%C3%BC%20/x"),
        ("x", "http://s.test/ü/page", "http://s.test/%C3%BC/x"),
    ],
)
def test_relative_urls_keep_the_base_paths_escapes(href: str, base: str, expected: str) -> None:
    assert canonical_url(href, base) == expected
    html = f'<a href="{href}">x</a>'
    assert extract_links(LexborHTMLParser(html), base) == [expected]


@pytest.mark.parametrize(
    ("href", "expected"),
    [
        ("../../../../ok", "http://site.test/ok"),
        ("/root", "http://site.test/root"),
        ("sibling.html#x", "http://site.test/a/b/sibling.html"),
        ("//other.test/p", "http://other.test/p"),
        ("?q=1", "http://site.test/a/b/page.html?q=1"),
    ],
)
def test_relative_urls_resolve_against_the_base(href: str, expected: str) -> None:
    assert canonical_url(href, "http://site.test/a/b/page.html") == expected


@pytest.mark.parametrize("bad", ["http://127.0.0.1:99999/", "http:///nohost", "relative/only"])
def test_invalid_urls_are_rejected(bad: str) -> None:
    assert try_canonical_url(bad) is None
    with pytest.raises(ValueError, match=r".+"):
        canonical_url(bad)


def test_fingerprint_is_stable_and_method_aware() -> None:
    url = "http://example.com/a"
    assert fingerprint(url) == fingerprint(url)
    assert fingerprint(url) != fingerprint("http://example.com/b")
    assert fingerprint(url, "POST", b"x") != fingerprint(url)
    assert fingerprint(url, "POST", b"x") != fingerprint(url, "POST", b"y")
    assert -(2**63) <= fingerprint(url) < 2**63


def test_host_of_returns_idna_lowercase_host() -> None:
    assert host_of("http://Bücher.Example:81/x") == "xn--bcher-kva.example"
    assert host_of("not a url at all") == ""


@pytest.mark.parametrize(
    "url",
    [
        "http://a.test/x",
        "https://a.test",
        "http://a.test:8080/x?y",
        "http://a.test?q",
        "http://a.test#f",
        "http://127.0.0.1:8000/p/1.html",
        "http://example.com./x",
        "http://user:pw@a.test/x",
        "http://A.Test/x",
        "http://[::1]:80/x",
        "http://xn--bcher-kva.example/",
        "http://a_b.test/x",
        "ftp://a.test/x",
        "mailto:a@b.test",
    ],
)
def test_host_of_plain_urls_agrees_with_yarl(url: str) -> None:
    assert host_of(url) == (URL(url).raw_host or "")


def test_extract_links_are_absolute_fragment_free_and_unique() -> None:
    html = """
    <a href="/a">1</a><a href="/a#x">2</a><a href="b.html">3</a><a href="">empty</a>
    <a href="   ">space</a><a href="#top">frag</a><a href="mailto:x@y.z">mail</a>
    <a href="http://127.0.0.1:99999/">bad port</a><a href="page.html">self</a><a>no href</a>
    """
    links = extract_links(LexborHTMLParser(html), "http://site.test/dir/page.html")
    assert links == [
        "http://site.test/a",
        "http://site.test/dir/b.html",
        "mailto:x@y.z",
        "http://127.0.0.1:99999/",
    ]


def test_extract_links_honours_base_href() -> None:
    html = '<head><base href="http://cdn.test/root/"></head><a href="x">x</a>'
    assert extract_links(LexborHTMLParser(html), "http://site.test/") == ["http://cdn.test/root/x"]
    # the first <base> that has an href counts, wherever it is
    html = '<base target="_top"><a href="x">x</a><base href="/in/body/"><base href="/later/">'
    assert extract_links(LexborHTMLParser(html), "http://site.test/") == [
        "http://site.test/in/body/x"
    ]


@pytest.mark.parametrize(
    "href",
    [
        "../up.html",
        "same.html",
        "./dot/x",
        "?q=2",
        "/root",
        "//other.test/x",
        "http://abs.test/y",
        "mailto:a@b.c",
        "a:b/c",
        "1a:b",
        "sub/../x",
        "../../../../deep",
        # joined by concatenation (plain), or sent to yarl by a dot segment or a character
        "p/1.html?x=1&y=2",
        "/p/1.html?x=/a?b",
        "x-y_z~1/(a)!$&'*+,;=@",
        "/x-y_z~1/(a)!$&'*+,;=:@",
        ".",
        "..",
        "a/./b",
        "a/b/..",
        "/p/..",
        "/p/.?q",
        "..?q",
        "x?",
        "/x?",
        "a//b",
        "/a//b",
        "%7Euser",
        "/%7euser",
        "ü",
        "/ü?q=ü",
        "a b",
        "A/B.HTML",
        "../p/1.html",
        "../../a/b.html?q=1",
        "../",
        "../..",
        "../.",
        "../x/../y",
        "..//x",
        "a%2Fb?c=%3A%2f",
        "/a%3Fb?c=%26%3D",
        "%41%2e/x",
    ],
)
def test_cached_resolution_equals_resolving_against_each_page(href: str) -> None:
    for page in [
        "http://s.test/a/b/page.html?x=1",
        "http://s.test/a/b/other.html",
        "http://s.test/",
        "http://s.test:8080/dir/",
        "http://s.test/%7edir/page",  # a base that is not canonical: no concatenation
        "http://s.test/a%3Ab/%2F/page?r=%2F",  # escapes yarl's join would decode
        "http://s.test:80/a/b/c/d",
        "http://s.test:99999/a/",
    ]:
        html = f'<a href="{href}">x</a>'
        expected = try_canonical_url(href, page) or href
        links = extract_links(LexborHTMLParser(html), page)
        assert links in ([expected], []), (page, href, links, expected)
        if expected != try_canonical_url(page):
            assert links == [expected]


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/a/b.html",
        "https://example.com/",
        "http://example.com",
        "http://example.com:80/x",
        "https://example.com:443/x",
        "http://example.com:8080/x?q=1&r=2",
        "http://example.com:99999/x",
        "http://Example.com/x",
        "HTTP://example.com/x",
        "http://example.com/a/../b",
        "http://example.com/a/./b",
        "http://example.com/a/..",
        "http://example.com/%7euser",
        "http://example.com/a b",
        "http://example.com/ü",
        "http://example.com/x#frag",
        "http://example.com/x?y=a#frag",
        "http://ex-ample.com/x-y_z~1/(a)!$&'*+,;=:@",
        "http://-bad.com/x",
        "http://example.com./x",
        "http://127.0.0.1:8000/p/1.html",
        "http://example.com//double//slash",
        "http://example.com/?",
        "http://example.com/x?a=b?c",
        "mailto:a@b.c",
        "http://example.com/a%2Fb?c=%3A%C3%BC",
        "http://example.com/a%2fb",
        "http://example.com/a%7E",
        "http://example.com/a%2",
        "http://example.com/a%%2F",
        "http://example.com/%2E%2E/x",
    ],
)
def test_canonical_parts_fast_path_agrees_with_yarl(url: str) -> None:
    from crawler.links import canonical_parts, parse_canonical

    try:
        text, parsed = parse_canonical(url)
    except ValueError:
        with pytest.raises(ValueError, match=r".*"):
            canonical_parts(url)
        return
    assert canonical_parts(url) == (text, parsed.scheme, parsed.raw_host or "")


def test_a_link_under_a_base_of_another_scheme_is_stored_as_it_is_admitted() -> None:
    # Found by the long Hypothesis run: `<base href=data:…>` made '/p1' 'data:///p1' in
    # `links` while the frontier recorded 'data:/p1', so a discovered URL went unaccounted.
    html = b"<html><head><base href=data:text/html,<a href=x>><svg><a href='/p1'></html>"
    links = extract_links(LexborHTMLParser(html), "http://127.0.0.1:5/p2")
    assert links == ["data:/p1"]
    assert [canonical_parts(link).url for link in links] == links


@pytest.mark.parametrize(
    "href", ["http://[\x01::1]:1/", "http://a.testA.\xa0/x", "http://a b/", "http://[!::1]:1/"]
)
def test_a_host_with_a_control_character_or_space_is_invalid(href: str) -> None:
    # Found by the long Hypothesis run: yarl kept the control character and dropped the IPv6
    # brackets, so the URL admitted was not the one linked.
    assert try_canonical_url(href) is None
    html = f"<a href='{href}'>x</a>".encode()
    (link,) = extract_links(LexborHTMLParser(html), "http://127.0.0.1:8000/dir/page.html")
    with pytest.raises(ValueError, match=r"control character or space|not an IPv6 address"):
        canonical_parts(link)


def test_an_absolute_href_under_a_broken_base_is_resolved_alone() -> None:
    # Found by the long Hypothesis run: the href was returned as written ('<a' unescaped)
    # while the frontier admitted its canonical form.
    html = b"<html><head><base href=//127.0.0.1:@x@/p0><a href=data:text/html,<a href=x>></a>"
    links = extract_links(LexborHTMLParser(html), "http://127.0.0.1:8000/dir/page.html")
    assert links == ["data:text/html,%3Ca"]
    assert [canonical_parts(link).url for link in links] == links
