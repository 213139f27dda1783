"""Request bodies with a Content-Encoding, decoded by the server itself rather than by aiohttp:
bounded (a small gzip that inflates to gigabytes stops at the limit), and a truncated stream is an
error at once (aiohttp's own decoder waits for the rest of a truncated raw-deflate body forever)."""

from __future__ import annotations

import zlib


class BodyEncodingError(ValueError):
    """A body that cannot be decoded: status 400 (corrupt, truncated), 413 (too large) or 415."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def decode_body(body: bytes, content_encoding: str, limit: int) -> bytes:
    """The body with its Content-Encoding undone (gzip, deflate, or none), at most `limit` bytes."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        # RFC 9110's deflate is zlib-wrapped; some clients send a bare deflate stream (as aiohttp, accept both)
        wbits = zlib.MAX_WBITS if body[:1] and body[0] & 0x0F == 8 else -zlib.MAX_WBITS
    else:
        raise BodyEncodingError(415, f"Content-Encoding {encoding[:40]!r} is not supported: send gzip, deflate or "
                                     "an unencoded body")
    inflater = zlib.decompressobj(wbits=wbits)
    try:
        plain = inflater.decompress(body, limit)
    except zlib.error:
        raise BodyEncodingError(400, f"the request body is not valid {encoding} data") from None
    if inflater.unconsumed_tail:
        raise BodyEncodingError(413, f"the request body decodes to more than {limit} bytes")
    if not inflater.eof:
        raise BodyEncodingError(400, f"the request body's {encoding} data ends before its end")
    return plain
