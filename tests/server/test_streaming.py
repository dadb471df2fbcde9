"""Streams of response bytes: blocking iterators in a thread, the held-back last piece, and the
first piece awaited before a head is chosen."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from p2pcache.errors import P2PCacheError
from p2pcache.server.streaming import first_piece, hold_back_last, iterate_in_thread


async def collect(pieces) -> list[bytes]:
    return [piece async for piece in pieces]


class Source:
    """An async source of pieces that may fail after some, and records how it ended."""

    def __init__(self, pieces: list[bytes], *, fail_after: int | None = None) -> None:
        self.pieces = pieces
        self.fail_after = fail_after
        self.closed = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def stream(self):
        try:
            for n, piece in enumerate(self.pieces):
                if n == self.fail_after:
                    raise P2PCacheError("the provider went away")
                await self.gate.wait()
                yield piece
            if self.fail_after == len(self.pieces):
                raise P2PCacheError("the NAR hashed to something else")
        finally:
            self.closed = True


async def test_iterate_in_thread_runs_every_step_off_the_loop():
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def pieces():
        for n in range(3):
            seen.append(threading.get_ident())
            yield b"%d" % n

    with ThreadPoolExecutor(1) as executor:
        assert await collect(iterate_in_thread(pieces, executor)) == [b"0", b"1", b"2"]
    assert seen and loop_thread not in seen


async def test_iterate_in_thread_closes_the_iterator_when_the_consumer_stops():
    closed = threading.Event()

    def pieces():
        try:
            while True:
                yield b"x"
        finally:
            closed.set()

    stream = iterate_in_thread(pieces)
    assert await anext(stream) == b"x"
    await stream.aclose()
    assert closed.is_set()


async def test_hold_back_last_withholds_the_last_piece_of_a_failed_stream():
    assert await collect(hold_back_last(Source([b"a", b"b"]).stream())) == [b"a", b"b"]
    got: list[bytes] = []
    with pytest.raises(P2PCacheError, match="hashed"):
        async for piece in hold_back_last(Source([b"a", b"b"], fail_after=2).stream()):
            got.append(piece)
    assert got == [b"a"]


async def test_first_piece_gives_the_whole_stream_back():
    source = Source([b"a", b"b", b"c"])
    first, pieces = await first_piece(source.stream())
    assert first == b"a"
    assert await collect(pieces) == [b"a", b"b", b"c"]
    assert source.closed


async def test_first_piece_of_an_empty_stream_is_none():
    first, pieces = await first_piece(Source([]).stream())
    assert first is None and await collect(pieces) == []


async def test_a_failure_before_the_first_piece_is_raised_to_the_caller():
    source = Source([b"a"], fail_after=0)
    with pytest.raises(P2PCacheError, match="went away"):
        await first_piece(source.stream())
    assert source.closed


async def test_a_consumer_that_stops_after_the_first_piece_closes_the_source():
    source = Source([b"a", b"b"])
    _, pieces = await first_piece(source.stream())
    assert await anext(pieces) == b"a"
    await pieces.aclose()
    assert source.closed


async def test_waiting_for_the_first_piece_cancelled_closes_the_source():
    source = Source([b"a"])
    source.gate.clear()  # the first piece never comes
    waiting = asyncio.create_task(first_piece(source.stream()))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert source.closed
