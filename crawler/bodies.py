"""Bounded decompression of response bodies (gzip, deflate, brotli) under `max_size`.

Each decoder is fed the compressed chunks as they arrive and never produces more than the
room left under the size cap, so a decompression bomb fails as `too_large` after allocating
about `max_size` bytes, not the size it would expand to.
"""

from __future__ import annotations

import zlib
from typing import Final, Protocol, final

import brotli

__all__ = ["BodyDecoder", "BodyTooLarge", "CorruptBody", "UnsupportedEncoding", "decoder_for"]

SUPPORTED_ENCODINGS: Final = "gzip, deflate, br"


class CorruptBody(Exception):
    """The compressed stream is invalid or ends early."""


class BodyTooLarge(Exception):
    """The decoded body is larger than allowed."""


class UnsupportedEncoding(Exception):
    """The server used a Content-Encoding this crawler did not ask for."""


class BodyDecoder(Protocol):
    """Turns compressed chunks into at most `limit` decoded bytes in total."""

    def feed(self, chunk: bytes) -> bytes:
        """Decode one chunk; raises BodyTooLarge past the limit, CorruptBody on bad data."""
        ...

    def finish(self) -> bytes:
        """Flush the tail; raises CorruptBody when the stream was cut short."""
        ...


@final
class _Identity:
    def __init__(self, limit: int) -> None:
        self._left = limit

    def feed(self, chunk: bytes) -> bytes:
        self._left -= len(chunk)
        if self._left < 0:
            raise BodyTooLarge
        return chunk

    def finish(self) -> bytes:
        return b""


@final
class _Zlib:
    def __init__(self, limit: int, wbits: int | None) -> None:
        self._left = limit
        self._wbits = wbits  # None: deflate, zlib-wrapped or raw, decided by the first byte
        self._inflater: zlib._Decompress | None = (
            None if wbits is None else zlib.decompressobj(wbits)
        )

    def feed(self, chunk: bytes) -> bytes:
        if self._inflater is None:
            if not chunk:
                return b""
            wrapped = chunk[0] & 0x0F == 8  # a zlib header; servers also send raw deflate
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        inflater = self._inflater
        parts: list[bytes] = []
        data = chunk
        try:
            while data:
                out = inflater.decompress(data, self._left + 1)
                self._take(out)
                parts.append(out)
                data = inflater.unconsumed_tail
                if inflater.eof:
                    break
        except zlib.error as exc:
            raise CorruptBody(f"corrupt compressed body: {exc}") from None
        return b"".join(parts)

    def finish(self) -> bytes:
        if self._inflater is None:
            return b""
        if not self._inflater.eof:
            raise CorruptBody("compressed body ends early")
        return b""

    def _take(self, out: bytes) -> None:
        self._left -= len(out)
        if self._left < 0:
            raise BodyTooLarge


@final
class _Brotli:
    def __init__(self, limit: int) -> None:
        self._left = limit
        self._decompressor = brotli.Decompressor()

    def feed(self, chunk: bytes) -> bytes:
        parts: list[bytes] = []
        decompressor = self._decompressor
        try:
            out = decompressor.process(chunk, output_buffer_limit=self._left + 1)
            self._take(out)
            parts.append(out)
            while not decompressor.can_accept_more_data():
                out = decompressor.process(b"", output_buffer_limit=self._left + 1)
                self._take(out)
                parts.append(out)
        except brotli.error as exc:
            raise CorruptBody(f"corrupt brotli body: {exc}") from None
        return b"".join(parts)

    def finish(self) -> bytes:
        if not self._decompressor.is_finished():
            raise CorruptBody("brotli body ends early")
        return b""

    def _take(self, out: bytes) -> None:
        self._left -= len(out)
        if self._left < 0:
            raise BodyTooLarge


def decoder_for(content_encoding: str, limit: int) -> BodyDecoder:
    """Return a bounded decoder for a Content-Encoding header value.

    Raises:
        UnsupportedEncoding: an encoding other than gzip, deflate, br or identity.
    """
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return _Identity(limit)
    if encoding in ("gzip", "x-gzip"):
        return _Zlib(limit, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return _Zlib(limit, None)
    if encoding == "br":
        return _Brotli(limit)
    raise UnsupportedEncoding(f"unsupported Content-Encoding {content_encoding!r}")
