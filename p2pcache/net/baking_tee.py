"""A tee between an async NAR download and the cache: every chunk goes on, and into the cache.

The node streams a NAR to a Guix client while it is still arriving, and keeps it for the next
client. `BakingTee` passes each uncompressed chunk of an async stream on to its consumer at
once (it holds nothing back; whether to wait for the hash check is the consumer's call) and
hands the same chunk to `bake_stream` running in a worker thread, which cuts the NAR into
protocol chunks, compresses, hashes, and commits it only if NarHash and NarSize match.

Why a thread and a bounded hand-off: hashing and zstd compression are blocking work that would
stall the event loop for milliseconds per MiB. The hand-off holds at most `depth` chunks; a
download faster than the baker waits for credits instead of filling memory. The worker is a
thread of its own, not the loop's default executor, because it lives as long as the download
and a few slow downloads must not starve the executor's few threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from concurrent.futures import Executor
from typing import Any

from p2pcache.cache.baker import BakeResult, CorruptStoreItem, bake_stream
from p2pcache.cache.nar_store import NarStore
from p2pcache.errors import P2PCacheError
from p2pcache.guix.narinfo import format_nar_hash

log = logging.getLogger(__name__)

# Chunks waiting between the download and the baker (memory bound: this many chunks).
DEFAULT_DEPTH = 8

_END = object()
_ABORT = object()


class NarHashMismatch(P2PCacheError):
    """Downloaded NAR bytes do not hash to the NarHash (or NarSize) they were fetched for."""


class BakeAbandoned(P2PCacheError):
    """The download stopped before the NAR ended, so nothing was stored."""


class BakingTee:
    """Pass an async stream of uncompressed NAR chunks on, while baking it into `store`.

    Iterate it once (`async for chunk in tee`); the iteration ends normally only after the NAR
    was verified and committed, and raises NarHashMismatch instead when the bytes were wrong
    (nothing is stored then). Breaking out early, or an error from the source, abandons the
    bake: the worker stops and its temporary file is removed. `result()` gives the outcome.
    Use it as an async context manager so an abandoned iteration is cleaned up at once.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        store: NarStore,
        hash_part: str,
        *,
        expected_sha256: bytes,
        expected_size: int,
        what: str,
        level: int = 3,
        executor: Executor | None = None,
        depth: int = DEFAULT_DEPTH,
    ) -> None:
        self._chunks = chunks
        self._store = store
        self._hash_part = hash_part
        self._expected_sha256 = expected_sha256
        self._expected_size = expected_size
        self._what = what
        self._level = level
        self._executor = executor
        self._handoff: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._credits = asyncio.Semaphore(max(1, depth))
        self._iteration: AsyncGenerator[bytes, None] | None = None
        self._done: asyncio.Future[BakeResult] | None = None
        self._failure: BaseException | None = None
        self._has_ended = False

    async def __aenter__(self) -> BakingTee:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncGenerator[bytes, None]:
        if self._iteration is not None:
            raise RuntimeError("a BakingTee can be iterated only once")
        self._iteration = self._run()
        return self._iteration

    async def aclose(self) -> None:
        """Abandon the bake if the iteration has not ended; close the source."""
        if self._iteration is not None:
            await self._iteration.aclose()
        if self._done is None:  # never started: the source is still open
            await _close(self._chunks)
            self._failure = BakeAbandoned(self._abandoned())
            self._has_ended = True

    async def result(self) -> BakeResult:
        """The committed item, or the error that stopped the download or the bake.

        Only once the iteration has ended (or was closed): before, the bake is still waiting
        for chunks that only iterating brings.
        """
        if not self._has_ended:
            raise RuntimeError("iterate the BakingTee to its end before asking for its result")
        if self._failure is not None:
            raise self._failure
        return await self._done

    async def _run(self) -> AsyncGenerator[bytes, None]:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        # A daemon: a tee dropped without being closed must not keep the process alive (its
        # temporary file is removed by the next `NarStore.prepare`).
        worker = threading.Thread(
            target=self._bake_in_thread,
            args=(loop,),
            name=f"bake-{self._hash_part[:8]}",
            daemon=True,
        )
        started = time.monotonic()
        worker.start()
        try:
            async for chunk in self._chunks:
                await self._hand_off(chunk)
                yield chunk
            self._handoff.put(_END)
            result = await self._done
        except BaseException as e:
            self._failure = e if isinstance(e, Exception) else BakeAbandoned(self._abandoned())
            self._handoff.put(_ABORT)
            # Wait for the worker so its temporary file is gone when this returns; it stops
            # at its next chunk.
            await asyncio.wait({self._done})
            raise
        finally:
            self._has_ended = True
            await _close(self._chunks)
        seconds = max(time.monotonic() - started, 1e-6)
        megabytes = result.summary.size / 1e6
        log.info(
            "fetched %s (%.1f MB, %.0f MB/s), hash verified",
            self._what,
            megabytes,
            megabytes / seconds,
            extra={
                "hash_part": self._hash_part,
                "nar_size": result.summary.size,
                "seconds": round(seconds, 3),
            },
        )

    async def _hand_off(self, chunk: bytes) -> None:
        self._raise_if_worker_ended()
        await self._credits.acquire()
        self._raise_if_worker_ended()
        self._handoff.put(chunk)

    def _raise_if_worker_ended(self) -> None:
        # The worker only ends early by failing (a full disk, say); its error is the answer.
        assert self._done is not None
        if self._done.done():
            error = self._done.exception()
            raise error if error is not None else RuntimeError("the baker ended early")

    def _bake_in_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        outcome: tuple[str, Any]
        try:
            outcome = ("result", self._bake(loop))
        except CorruptStoreItem:
            outcome = ("exception", NarHashMismatch(self._mismatch()))
        except BaseException as e:
            outcome = ("exception", e)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(self._settle, *outcome)

    def _settle(self, kind: str, value: Any) -> None:
        assert self._done is not None
        if kind == "result":
            self._done.set_result(value)
        else:
            self._done.set_exception(value)
            self._done.exception()  # mark it retrieved: `result()` may never be awaited
        self._credits.release()  # wakes a download waiting for credits, to see the outcome

    def _bake(self, loop: asyncio.AbstractEventLoop) -> BakeResult:
        return bake_stream(
            self._chunks_from_loop(loop),
            self._store,
            self._hash_part,
            expected_sha256=self._expected_sha256,
            expected_size=self._expected_size,
            what=self._what,
            level=self._level,
            executor=self._executor,
        )

    def _chunks_from_loop(self, loop: asyncio.AbstractEventLoop) -> Iterator[bytes]:
        while True:
            item = self._handoff.get()
            if item is _END:
                return
            if item is _ABORT:
                raise BakeAbandoned(self._abandoned())
            loop.call_soon_threadsafe(self._credits.release)
            yield item  # type: ignore[misc]

    def _mismatch(self) -> str:
        return (
            f"the NAR of {self._what} does not hash to its expected NarHash "
            f"{format_nar_hash(self._expected_sha256)} ({self._expected_size} bytes); "
            "nothing was stored"
        )

    def _abandoned(self) -> str:
        return f"the download of {self._what} stopped before the NAR ended; nothing was stored"


async def _close(chunks: AsyncIterator[bytes]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()
