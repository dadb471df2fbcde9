"""What the HTTP server tests share: a raw HTTP/1.1 client, a running server, a loop runner.

The tests talk to a real server on 127.0.0.1 through real sockets. The client is deliberately
dumb, as Guix's pipelined reader is: it writes bytes, and reads answers back one after another
by Content-Length, so it cannot hide a framing mistake the way a full HTTP client would.

Every test runs on uvloop (what the node runs on); the core ones also on the default loop.
`on_loops` runs an async test on a fresh loop of each kind, bounded by `TEST_TIMEOUT`, without
pytest-asyncio, so the loop choice stays in these files.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import pytest
import uvloop

from p2pcache.server.http_server import FastAnswer, Handler, HTTPServer, Observer, ServerLimits

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}
TEST_TIMEOUT = 20.0  # a hung test fails after this instead of hanging the suite
READ_TIMEOUT = 5.0  # any single read from the server


def on_loops(*names: str) -> Callable[[Callable[..., Coroutine[Any, Any, None]]], Any]:
    """Run an async test once on each named event loop."""

    def decorate(test: Callable[..., Coroutine[Any, Any, None]]) -> Any:
        def run(loop_name: str, **kwargs: Any) -> None:
            with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
                runner.run(asyncio.wait_for(test(**kwargs), TEST_TIMEOUT))

        signature = inspect.signature(test)
        loop_param = inspect.Parameter("loop_name", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[loop_param, *signature.parameters.values()]
        )
        run.__name__ = test.__name__
        run.__qualname__ = test.__qualname__
        run.__doc__ = test.__doc__
        run.__module__ = test.__module__
        return pytest.mark.parametrize("loop_name", names)(run)

    return decorate


uvloop_only = on_loops("uvloop")
both_loops = on_loops("uvloop", "asyncio")


@asynccontextmanager
async def serving(
    handler: Handler,
    limits: ServerLimits | None = None,
    observer: Observer | None = None,
    fast_answer: FastAnswer | None = None,
) -> AsyncIterator[HTTPServer]:
    server = HTTPServer(handler, limits, observer, fast_answer)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


def request(
    target: str | bytes,
    method: str = "GET",
    version: str = "1.1",
    headers: tuple[tuple[str, str], ...] = (("Host", "localhost"), ("User-Agent", "GNU Guile")),
) -> bytes:
    """One request as Guix writes it (Host and User-Agent, nothing else) unless told."""
    if isinstance(target, str):
        target = target.encode()
    lines = [b"%s %s HTTP/%s" % (method.encode(), target, version.encode())]
    lines += [f"{name}: {value}".encode() for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; the last value wins
    body: bytes

    @property
    def content_length(self) -> int:
        return int(self.headers["content-length"])


class RawClient:
    """A TCP connection that writes raw bytes and reads responses by Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, server: HTTPServer, receive_buffer: int | None = None) -> RawClient:
        """Connect; `receive_buffer` fixes the kernel's receive buffer (no autotuning)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        return cls(reader, writer)

    def stop_reading(self) -> None:
        """Leave what the server sends in the kernel's buffers, as a stalled client does."""
        self.writer.transport.pause_reading()  # type: ignore[attr-defined]

    async def send(self, data: bytes) -> None:
        if self.writer.transport.is_closing():  # uvloop raises RuntimeError on a closed one
            raise ConnectionResetError("the server closed the connection")
        self.writer.write(data)
        await self.writer.drain()

    async def read_answer(self, head_only: bool = False) -> Answer:
        """The next response; with `head_only` (answers to HEAD) no body is read."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        version, status, _reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        assert "content-length" in headers, f"no Content-Length in {head!r}"
        body = b""
        if not head_only:
            body = await asyncio.wait_for(
                self.reader.readexactly(int(headers["content-length"])), READ_TIMEOUT
            )
        return Answer(int(status), headers, body)

    async def get(self, target: str | bytes, **kwargs: Any) -> Answer:
        await self.send(request(target, **kwargs))
        return await self.read_answer(head_only=kwargs.get("method") == "HEAD")

    async def read_to_eof(self) -> bytes:
        """What the server still sends before it closes; fails if it does not close in time."""
        return await asyncio.wait_for(self.reader.read(), READ_TIMEOUT)

    async def read_until_closed(self) -> bytes:
        """Like read_to_eof, but a reset counts as closed (with nothing more read)."""
        try:
            return await self.read_to_eof()
        except ConnectionResetError:
            return b""

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def eventually(condition: Callable[[], bool], timeout: float = READ_TIMEOUT) -> None:
    """Wait until `condition()` holds, polling; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)
