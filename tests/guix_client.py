"""A client that talks to a substitute server the way `guix substitute` does (spec §1.2, §8).

All narinfo requests of a batch are written at once on one connection (`GET /<hash>.narinfo
HTTP/1.1`, Host, `User-Agent: GNU Guile`, nothing else), then the responses are read back in
order, each framed by its Content-Length. NARs are fetched one at a time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

HEAD_LIMIT = 64 * 1024


@dataclass
class HTTPReply:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool = True
    """False when the connection ended before Content-Length bytes arrived."""


def request(path: str, host: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: GNU Guile\r\n\r\n".encode()


async def read_reply(reader: asyncio.StreamReader, *, head_only: bool = False) -> HTTPReply:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > HEAD_LIMIT:
        raise AssertionError("response head too large")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" not in headers:
        raise AssertionError(f"response without Content-Length: {lines[0]}")
    length = int(headers["content-length"])
    if head_only:
        return HTTPReply(status, headers, b"")
    try:
        body = await reader.readexactly(length)
        return HTTPReply(status, headers, body)
    except asyncio.IncompleteReadError as e:
        return HTTPReply(status, headers, e.partial, complete=False)


async def pipelined_get(
    host: str, port: int, paths: list[str], *, method: str = "GET", timeout: float = 60
) -> list[HTTPReply]:
    """Write every request at once, then read every reply in order."""

    async def run() -> list[HTTPReply]:
        reader, writer = await asyncio.open_connection(host, port, limit=HEAD_LIMIT)
        try:
            writer.write(b"".join(request(p, f"{host}:{port}", method) for p in paths))
            await writer.drain()
            return [await read_reply(reader, head_only=method == "HEAD") for _ in paths]
        finally:
            writer.close()

    return await asyncio.wait_for(run(), timeout)


async def narinfos(host: str, port: int, hash_parts: list[str]) -> list[HTTPReply]:
    return await pipelined_get(host, port, [f"/{h}.narinfo" for h in hash_parts])


async def get(host: str, port: int, path: str, timeout: float = 60) -> HTTPReply:
    return (await pipelined_get(host, port, [path], timeout=timeout))[0]
