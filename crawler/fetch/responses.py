"""Reading an aiohttp response into what the crawl stores: its body, decoded and stopped as
soon as it passes the size cap, and aiohttp's and asyncio's exceptions turned into the
`FetchError`s the crawl records.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import aiohttp

from crawler.bodies import BodyTooLarge, CorruptBody, UnsupportedEncoding, decoder_for
from crawler.errors import ConnectError, FetchTimeout, ProtocolError, ResponseTooLarge

__all__ = ["read_body", "translate_errors"]

_READ_CHUNK: Final = 64 * 1024


async def read_body(url: str, response: aiohttp.ClientResponse, limit: int) -> bytes:
    """Read and decode the body, stopping as soon as it passes `limit` bytes."""
    encoding = response.headers.get("Content-Encoding", "")
    length = response.content_length
    if not encoding and length is not None:
        if length > limit:
            raise ResponseTooLarge(url, f"Content-Length {length} exceeds max_size {limit}")
        return await response.read()  # the framing bounds it: read it at once
    try:
        decoder = decoder_for(encoding, limit)
        parts: list[bytes] = []
        async for chunk in response.content.iter_chunked(_READ_CHUNK):
            parts.append(decoder.feed(chunk))
        parts.append(decoder.finish())
    except BodyTooLarge:
        raise ResponseTooLarge(url, f"body exceeds max_size {limit} bytes") from None
    except (CorruptBody, UnsupportedEncoding) as exc:
        raise ProtocolError(url, str(exc)) from None
    return b"".join(parts)


@contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Turn aiohttp's and asyncio's exceptions into FetchErrors that carry the URL."""
    try:
        yield
    except TimeoutError as exc:  # first: aiohttp's ServerTimeoutError is also a connection error
        raise FetchTimeout(url, str(exc) or "request timed out") from exc
    except aiohttp.ClientPayloadError as exc:
        raise ProtocolError(url, str(exc)) from exc
    except aiohttp.ClientResponseError as exc:  # malformed status line or headers
        raise ProtocolError(url, exc.message or str(exc)) from exc
    except aiohttp.ClientConnectionError as exc:
        raise ConnectError(url, str(exc) or type(exc).__name__) from exc
    except aiohttp.InvalidURL as exc:
        raise ConnectError(url, f"invalid URL: {exc}") from exc
    except aiohttp.ClientError as exc:
        raise ProtocolError(url, str(exc) or type(exc).__name__) from exc
    except (ValueError, UnicodeError) as exc:  # e.g. a header aiohttp cannot encode
        raise ProtocolError(url, str(exc)) from exc
