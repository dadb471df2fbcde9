"""Reading an HTTP response body whole, but never more than a bound.

`StreamReader.read(n)` returns as soon as some bytes are there, not the whole body: a 40 KB
narinfo list or chunk table that arrives in two pieces would be taken for its first piece
and then fail to parse, and the peer that sent it would be blamed. So a body is read until
its end, and reading stops the moment it is longer than allowed.
"""

from __future__ import annotations

import aiohttp


class BodyTooLarge(Exception):
    """The body is longer than the bound (it was not read further)."""


async def read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body; BodyTooLarge as soon as more than `limit` bytes have come."""
    body = bytearray()
    while data := await content.read(limit + 1 - len(body)):
        body += data
        if len(body) > limit:
            raise BodyTooLarge(f"more than {limit} bytes")
    return bytes(body)
