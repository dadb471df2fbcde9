"""Run a blocking byte-producing iterator in a worker thread and consume it asynchronously.

Reading a store tree, hashing and decompressing are blocking work that must never run on the
event loop, yet their output is sent by the loop. One chunk is produced ahead while the loop
sends the previous one, so the thread and the socket overlap; the iterator is never advanced
by two threads at once, and it is closed (in the worker) when the consumer stops early.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor

_END = object()


async def iterate_in_thread(
    make_iterator: Callable[[], Iterator[bytes]], executor: Executor | None = None
) -> AsyncIterator[bytes]:
    """Yield what `make_iterator()` yields, with every step run in `executor`."""
    loop = asyncio.get_running_loop()
    state: dict[str, Iterator[bytes]] = {}

    def step() -> object:
        iterator = state.get("it")
        if iterator is None:
            iterator = state["it"] = make_iterator()
        return next(iterator, _END)

    def close() -> None:
        iterator = state.get("it")
        close_it = getattr(iterator, "close", None)
        if close_it is not None:
            close_it()

    pending = loop.run_in_executor(executor, step)
    try:
        while True:
            item = await pending
            if item is _END:
                return
            pending = loop.run_in_executor(executor, step)
            yield item  # type: ignore[misc]
    finally:
        # The consumer is gone: let the step in flight finish (its result or error is moot),
        # then close the iterator in the worker, where its cleanup may block.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.shield(pending)
            await loop.run_in_executor(executor, close)


async def hold_back_last(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Pass `pieces` on, but the last one only once the source has ended without error.

    For a stream whose final check (the whole NAR's hash) happens when it ends: a client must
    never receive a complete-looking body that failed that check, so the last piece waits
    for it; if the source raises, the stream fails short of its declared length.
    """
    held: bytes | None = None
    async for piece in pieces:
        if held is not None:
            yield held
        held = piece
    if held is not None:
        yield held


async def first_piece(
    pieces: AsyncIterator[bytes],
) -> tuple[bytes | None, AsyncIterator[bytes]]:
    """The first piece of `pieces` (None if there is none), and the whole stream again.

    For a response whose source may fail before it yields anything (a NAR still to be
    brought in from peers or upstream): the caller can still answer with an error status
    then, instead of a 200 head followed by a cut connection. If waiting is cancelled (the
    client went away), `pieces` is closed.
    """
    try:
        first = await anext(pieces)
    except StopAsyncIteration:
        return None, pieces
    except BaseException:
        with contextlib.suppress(Exception):
            await pieces.aclose()  # type: ignore[attr-defined]
        raise
    return first, _prepend(first, pieces)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(rest):  # type: ignore[type-var]
        yield first
        async for piece in rest:
            yield piece
