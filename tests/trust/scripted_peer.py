"""A real loopback peer for the gossip and witness service tests, answering what a test sets.

The log-watching services talk to peers over four routes of the peer API: `/p2p/v1/node`,
`/p2p/v1/log/checkpoint`, `/p2p/v1/log/consistency/<old>/<new>` and `/p2p/v1/checkpoints`.
A `ScriptedPeer` is an aiohttp application on 127.0.0.1 whose answer on each route is set by
the test: real bytes (signed notes, proofs from a real Merkle log, signed node information)
for an honest or lying builder, or a fault (a status, a body that never ends, a hang, an
oversized body). It counts what it was asked, so a test can see what a service fetched.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from p2pcache import __version__
from p2pcache.net.identity import NodeIdentity
from p2pcache.net.node_info import sign_node_info
from p2pcache.net.peer_client import PeerClient, PeerLimits
from p2pcache.trust.merkle_log import LogRangeError, MerkleLog
from p2pcache.trust.periodic_rounds import PeriodicRounds
from tests.net.peer_servers import app_server


@dataclass(frozen=True)
class Status:
    """Answer with this HTTP status and a short body."""

    code: int


@dataclass(frozen=True)
class Chunked:
    """Answer 200 with `data`, chunked (no Content-Length), in pieces of 64 KiB."""

    data: bytes


class Hang:
    """Never answer (until the peer is stopped): a client's time bound must end the wait."""


HANG = Hang()
Answer = bytes | Status | Chunked | Hang
Route = Answer | Callable[["ScriptedPeer", web.Request], Answer] | None
"""What a route answers: fixed, computed per request, or None for 404."""


def proofs_of(log: MerkleLog) -> Callable[[ScriptedPeer, web.Request], Answer]:
    """Consistency proofs computed from a real log (404 for sizes it cannot prove)."""

    def answer(peer: ScriptedPeer, request: web.Request) -> Answer:
        try:
            old, new = int(request.match_info["old"]), int(request.match_info["new"])
            return b"".join(log.consistency_proof(old, new))
        except (ValueError, LogRangeError):
            return Status(404)

    return answer


def node_info_of(identity: NodeIdentity) -> Callable[[ScriptedPeer, web.Request], Answer]:
    """Node information signed by `identity`, naming the URL this peer answers at."""

    def answer(peer: ScriptedPeer, request: web.Request) -> Answer:
        return sign_node_info(identity, f"p2pcache {__version__}", peer.url, 1_790_000_000)

    return answer


class ScriptedPeer:
    def __init__(self) -> None:
        self.url = ""
        self.node: Route = None
        self.checkpoint: Route = None
        self.consistency: Route = None
        self.checkpoints: Route = None
        self.asked: Counter[str] = Counter()
        """Requests received, by path."""
        self._released = asyncio.Event()

    def application(self) -> web.Application:
        app = web.Application()
        for path, name in (
            ("/p2p/v1/node", "node"),
            ("/p2p/v1/log/checkpoint", "checkpoint"),
            ("/p2p/v1/log/consistency/{old}/{new}", "consistency"),
            ("/p2p/v1/checkpoints", "checkpoints"),
        ):
            app.router.add_get(path, self._handler(name))
        return app

    def asked_for(self, prefix: str) -> int:
        """How many requests had a path starting with `prefix`."""
        return sum(n for path, n in self.asked.items() if path.startswith(prefix))

    def _handler(self, name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            self.asked[request.path] += 1
            route = getattr(self, name)
            answer = route(self, request) if callable(route) else route
            return await self._respond(request, answer)

        return handle

    async def _respond(self, request: web.Request, answer: Answer | None) -> web.StreamResponse:
        if answer is None:
            return web.Response(status=404, text="nothing here\n")
        if isinstance(answer, bytes):
            return web.Response(body=answer, content_type="application/octet-stream")
        if isinstance(answer, Status):
            return web.Response(status=answer.code, text=f"status {answer.code}\n")
        if isinstance(answer, Chunked):
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            try:
                for start in range(0, len(answer.data), 1 << 16):
                    await response.write(answer.data[start : start + (1 << 16)])
                await response.write_eof()
            except ConnectionError:  # the client stopped reading at its bound
                pass
            return response
        await self._released.wait()  # HANG
        return web.Response(status=503)

    def release(self) -> None:
        self._released.set()


@contextlib.asynccontextmanager
async def scripted_peer() -> AsyncIterator[ScriptedPeer]:
    """A ScriptedPeer listening on 127.0.0.1 (every route 404 until the test sets it)."""
    peer = ScriptedPeer()
    async with app_server(peer.application(), "127.0.0.1") as url:
        peer.url = url
        try:
            yield peer
        finally:
            peer.release()


@contextlib.asynccontextmanager
async def scripted_peers(count: int) -> AsyncIterator[list[ScriptedPeer]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(scripted_peer()) for _ in range(count)]


def padded_note(note: bytes, size: int) -> bytes:
    """`note` with one more signature line, by a key nobody knows (verifiers ignore it), making
    it exactly `size` bytes: a signed note at a size bound that still verifies."""
    # "— " is 4 bytes, then the name, a space, the base64 blob and a newline.
    room = size - len(note) - 6
    blocks = (room - 1) // 4  # base64 of 3 * blocks bytes; the name takes what is left (1-4)
    if blocks < 2:
        raise ValueError(f"cannot pad a note of {len(note)} bytes to {size}")
    blob = base64.b64encode(bytes(3 * blocks)).decode("ascii")
    line = f"\u2014 {'p' * (room - len(blob))} {blob}\n".encode()
    padded = note + line
    assert len(padded) == size
    return padded


TIMEOUT = 0.3
"""The peer client's time bound in these tests: a hanging peer costs a round this much."""


@pytest.fixture(name="client")
async def client_fixture():
    """A real peer client with short time bounds (imported by the test modules)."""
    async with aiohttp.ClientSession() as session:
        yield PeerClient(session, PeerLimits(connect_timeout=TIMEOUT, small_timeout=TIMEOUT))


async def rounds_until(name: str, one_round: Callable[[], Awaitable[object]], done) -> None:
    """Run `one_round` under PeriodicRounds, every 20 ms, until `done()` (5 s at most)."""
    rounds = PeriodicRounds(name, one_round, 0.02)
    await rounds.start()
    try:
        async with asyncio.timeout(5):
            while not done():
                await asyncio.sleep(0.01)
    finally:
        await rounds.stop()
