"""One download of an item at a time, whoever asks for it and wherever it comes from.

Several Guix clients behind one node (a LAN's machines, or `guix build` and `guix pull` at
once) may ask for the same NAR while the node is still bringing it in, from peers or from an
upstream. Without this each would download it, and each commit would replace the last one's
file. With it the later ones wait for the first download and then read the cached NAR; if
that download did not end in the cache (its client went away, a provider failed), the first
waiter downloads it itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Collection

from p2pcache.cache.index import CacheIndex, IndexedItem
from p2pcache.errors import P2PCacheError

Download = Callable[[IndexedItem], AsyncIterator[bytes]]
"""The item's NAR, uncompressed, brought into the cache as it is yielded."""
ReadCached = Callable[[IndexedItem], AsyncIterator[bytes]]
"""The NAR of an item the cache holds, uncompressed."""


class FetchesInProgress:
    def __init__(self, index: CacheIndex, read_cached: ReadCached) -> None:
        self.index = index
        self.read_cached = read_cached
        self._running: dict[str, asyncio.Event] = {}

    def __len__(self) -> int:
        return len(self._running)

    def running(self) -> Collection[str]:
        """The hash parts being downloaded now (a live view)."""
        return self._running.keys()

    async def stream(self, item: IndexedItem, download: Download) -> AsyncIterator[bytes]:
        """The NAR of `item`: downloaded by `download`, unless a download of it is running,
        in which case it is read from the cache once that download is done."""
        running = self._running.get(item.hash_part)
        while running is not None:
            await running.wait()
            current = self.index.get(item.hash_part)
            if current is None:
                raise P2PCacheError(f"{item.store_path} is no longer offered")
            if current.is_baked:
                async for piece in self.read_cached(current):
                    yield piece
                return
            item = current
            running = self._running.get(item.hash_part)  # another waiter took it on
        done = self._running[item.hash_part] = asyncio.Event()
        try:
            # Closed here if this asker goes away, not later by the garbage collector: the
            # next waiter starts only once this download has let go of its files.
            async with contextlib.aclosing(download(item)) as pieces:
                async for piece in pieces:
                    yield piece
        finally:
            del self._running[item.hash_part]
            done.set()
