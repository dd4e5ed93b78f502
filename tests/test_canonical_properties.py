"""Property tests of URL canonicalisation over random URLs.

Paths, queries and fragments are built from every kind of character: reserved and
unreserved ASCII, percent-escapes of every byte in either case, "%" signs that start no
escape, other ASCII (space, quotes, controls), and non-ASCII text. For each URL:

- the fast paths (`canonical_parts` reading a URL without parsing it, `extract_links`
  joining plain hrefs by concatenation) give what yarl's path gives;
- the canonical form is a fixed point;
- no reserved character changes meaning (RFC 3986 6.2.2.2): read as a sequence of reserved
  characters written as such and of the bytes everything else stands for, the canonical
  path and query equal the original ones. Escapes of unreserved characters may be decoded,
  characters that may not appear literally may be encoded, but "%2F" never becomes "/",
  nor "&" "%26".

"[" and "]" count as bytes, not delimiters: RFC 3986 allows them in the host only, so in a
path or query they delimit nothing, and yarl encodes them.
"""

from __future__ import annotations

import re
import string

from hypothesis import example, given, note
from hypothesis import strategies as st
from selectolax.lexbor import LexborHTMLParser

from crawler.links import (
    canonical_parts,
    canonical_url,
    extract_links,
    parse_canonical,
    try_canonical_url,
)

UNRESERVED = string.ascii_letters + string.digits + "-._~"
DELIMITERS = ":/?#@!$&'()*+,;="
"""The reserved characters, less "[" and "]" (see the module's docstring)."""
OTHER_ASCII = ' "<>\\^`{|}[]\x00\x01\t\n\r\x0b\x0c\x1f\x7f'
STRIPPED = " \t\n\r\f\v\x00"
"""What canonical_url strips from both ends of a URL."""

_HEX = "0123456789abcdefABCDEF"
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")

escapes = st.tuples(st.sampled_from(_HEX), st.sampled_from(_HEX)).map(lambda t: "%" + "".join(t))
not_escapes = st.sampled_from(["%", "%4", "%G1", "%%", "%z", "%-1", "%%41", "%\n41"])


def component(exclude: str) -> st.SearchStrategy[str]:
    """A path, query or fragment without the characters in `exclude`."""
    piece = st.one_of(
        escapes,
        not_escapes,
        st.sampled_from([c for c in DELIMITERS + UNRESERVED if c not in exclude]),
        st.sampled_from(OTHER_ASCII),
        st.characters(min_codepoint=0x80, exclude_categories=["Cs"]),  # lone surrogates: invalid
        st.sampled_from([".", "..", "%2e", "%2E%2e"]),
    )
    return st.lists(piece, max_size=14).map("".join)


HOSTS = [
    "a.test",
    "A.Test",
    "a.test:8080",
    "a.test:80",
    "a.test:443",
    "127.0.0.1:8000",
    "[::1]",
    "bücher.example",
    "xn--bcher-kva.example",
]


@st.composite
def absolute_urls(draw: st.DrawFn) -> tuple[str, str]:
    """A URL, and its scheme and authority."""
    prefix = draw(st.sampled_from(["http", "https", "HTTP"])) + "://" + draw(st.sampled_from(HOSTS))
    path = "/" + draw(component("?#"))
    query = draw(st.none() | component("#"))
    fragment = draw(st.none() | component(""))
    url = prefix + path + ("" if query is None else "?" + query)
    url += "" if fragment is None else "#" + fragment
    return url, prefix


def meaning(part: str) -> list[str | int]:
    """Reserved characters written as such, as str; everything else as the bytes it stands
    for (an escape stands for its byte, a "%" that starts no escape for itself)."""
    out: list[str | int] = []
    i = 0
    while i < len(part):
        if (escape := _ESCAPE.match(part, i)) is not None:
            out.append(int(escape.group(1), 16))
            i += 3
            continue
        if part[i] in DELIMITERS:
            out.append(part[i])
        else:
            out.extend(part[i].encode())
        i += 1
    return out


def has_dot_segment(path: str) -> bool:
    return any(re.sub("%2[eE]", ".", segment) in (".", "..") for segment in path.split("/")[1:])


def split_canonical(canonical: str) -> tuple[str, str | None]:
    """The path and the query (None without "?") of a canonical http(s) URL."""
    rest = canonical[canonical.index("/", canonical.index("://") + 3) :]
    path, question, query = rest.partition("?")
    return path, (query if question else None)


def assert_fast_equals_slow(url: str) -> str | None:
    """canonical_parts (fast path or yarl) agrees with parse_canonical (yarl alone); returns
    the canonical form, None when the URL is invalid."""
    try:
        text, parsed = parse_canonical(url)
    except ValueError:
        try:
            parts = canonical_parts(url)
        except ValueError:
            return None
        raise AssertionError(f"fast path accepted an invalid URL: {parts}") from None
    assert canonical_parts(url) == (text, parsed.scheme, parsed.raw_host or "")
    return text


def assert_fixed_point(canonical: str) -> None:
    assert canonical_url(canonical) == canonical
    assert canonical_parts(canonical).url == canonical


@given(absolute_urls())
@example(("http://a.test/?return=https%3A%2F%2Fx%2F", "http://a.test"))
@example(
    ("http://a.test/a%2Fb%3a%40?q=%3F%23%26%3D%2B%40%24%2C%3B%21%2A%27%28%5B", "http://a.test")
)
@example(("http://a.test/a b%zz%?c d+e%", "http://a.test"))
def test_canonical_form_keeps_reserved_characters_meaning(generated: tuple[str, str]) -> None:
    url, prefix = generated
    canonical = assert_fast_equals_slow(url)
    assert canonical is not None
    note(f"canonical: {canonical!r}")
    assert_fixed_point(canonical)
    # What yarl (and a browser) reads: the ends stripped, tabs and newlines dropped.
    cleaned = url.strip(STRIPPED).replace("\t", "").replace("\n", "").replace("\r", "")
    rest = cleaned[len(prefix) :]
    before_fragment = rest.partition("#")[0]
    path, question, query = before_fragment.partition("?")
    canonical_path, canonical_query = split_canonical(canonical)
    if not has_dot_segment(path):
        assert meaning(canonical_path) == meaning(path)
    assert meaning(canonical_query or "") == meaning(query if question else "")


@given(
    st.sampled_from(["http://a.test/", "https://A.test:8443/", "http://a.test?", "http://a.test#"]),
    st.text(),
)
@example("http://a.test/", "a%2Fb?x=%3A%2f#%41")
@example("http://a.test/", "%7e%41%2E%2e/")
def test_fast_path_equals_yarl_on_any_text(prefix: str, text: str) -> None:
    """Any text after the authority (the host's canonical form is not under test here)."""
    canonical = assert_fast_equals_slow(prefix + text)
    if canonical is not None:
        assert_fixed_point(canonical)


@given(
    st.text(alphabet=DELIMITERS.replace("#", "") + UNRESERVED + "%", max_size=30),
    st.sampled_from(["0", "2", "3", "4", "5", "6", "7", "C", "E", "F", "a", "e", "f"]),
)
def test_fast_path_equals_yarl_near_escapes(text: str, digit: str) -> None:
    """Dense in "%" and hex digits, where a fast path that misreads an escape would show."""
    text = text.replace("%", "%" + digit)
    for url in ("http://a.test/" + text, "http://a.test/p?" + text):
        canonical = assert_fast_equals_slow(url)
        if canonical is not None:
            assert_fixed_point(canonical)


BASES = st.builds(
    lambda host, path, query: host + "/" + path + ("" if query is None else "?" + query),
    st.sampled_from(["http://s.test", "http://S.test:80", "https://s.test:8443"]),
    component("?#"),
    st.none() | component("#"),
)
HREF_PREFIXES = ["", "/", "./", "../", "../../", "?", "//other.test/", "http://s.test/"]


@st.composite
def hrefs(draw: st.DrawFn) -> str:
    href = draw(st.sampled_from(HREF_PREFIXES)) + draw(component("?#"))
    if draw(st.booleans()):
        href += "?" + draw(component("#"))
    if draw(st.booleans()):
        href += "#" + draw(component(""))
    return href


def href_as_parsed(href: str) -> tuple[LexborHTMLParser, str]:
    """A page with one link to `href`, and the href as the HTML parser reads it back."""
    escaped = href.replace("&", "&amp;").replace('"', "&quot;")
    tree = LexborHTMLParser(f'<a href="{escaped}">x</a>')
    node = tree.css_first("a")
    assert node is not None
    return tree, node.attributes.get("href") or ""


def resolved_apart(href: str) -> bool:
    """Whether extract_links resolves `href` (stripped) otherwise than canonical_url does, for
    reasons that have nothing to do with canonical form:

    - it resolves the part before a "#" alone, so whitespace that ends it is stripped
      ("/ #" is ".../%20" to canonical_url, ".../" to extract_links);
    - it joins "//" (an empty authority, which browsers refuse) to the origin alone, where
      yarl keeps the base's path;
    - it joins an href that starts with a control character to the base's directory, and
      yarl then strips the control character ("\x1f?q" is the base's directory with "?q").
    """
    before_fragment, hash_sign, _ = href.partition("#")
    return bool(
        (hash_sign and before_fragment[-1:] in tuple(STRIPPED))
        or re.fullmatch(r"//(?:[?#].*)?", href, re.DOTALL)
        or href[:1] < " "
    )


@given(hrefs(), BASES)
@example("x", "http://s.test/a%3Fb/page")
@example("x", "http://s.test/a%2Fb/c%40d/page?q")
@example("../x%3A", "http://s.test/a%2Fb/c%40d/page?q")
@example("?q=%2F", "http://s.test/a%2Fb/page?r")
def test_extracted_links_equal_resolving_each_href(href: str, base: str) -> None:
    tree, read = href_as_parsed(href)
    expected = try_canonical_url(read, base)
    links = extract_links(tree, base)
    note(f"href {read!r} against {base!r}: {links} (expected {expected!r})")
    bare = read.strip(STRIPPED)
    if not bare or bare[0] == "#":
        assert links == []
    elif expected is None or resolved_apart(bare):
        assert len(links) <= 1
    elif not expected.startswith(("http://", "https://")):
        assert links in ([expected], [expected.partition("#")[0]])  # fragments are dropped
    else:
        assert_fixed_point(expected)
        if expected == try_canonical_url(base):
            assert links in ([expected], [])
        else:
            assert links == [expected]


@given(BASES, st.text(alphabet=UNRESERVED, min_size=1, max_size=8))
@example("http://s.test/a%3Fb/page", "x")
@example("http://s.test/a%252F%20b/c%23d/page", "x")
def test_a_relative_href_keeps_the_base_directory(base: str, segment: str) -> None:
    """Joining a relative path never re-encodes or decodes the base's own path."""
    canonical_base = try_canonical_url(base)
    if canonical_base is None or segment in (".", ".."):
        return
    directory = canonical_base.partition("?")[0]
    directory = directory[: directory.rindex("/") + 1]
    assert canonical_url(segment, base) == directory + segment
    assert extract_links(href_as_parsed(segment)[0], base) in ([directory + segment], [])
