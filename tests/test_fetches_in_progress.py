"""One download per item: later askers wait and read the cache, or take over a failed one.

The index is a real SQLite file; downloads are async generators that mark the item cached in
it when they finish, as the node's fetches do.
"""

from __future__ import annotations

import asyncio

import pytest

from p2pcache.cache.index import CacheIndex, IndexedItem, Origin
from p2pcache.errors import P2PCacheError
from p2pcache.fetches_in_progress import FetchesInProgress
from tests.cache.test_index import new_item

HASH = "a" * 31 + "0"
NAR = [b"first piece ", b"second piece"]


@pytest.fixture
async def index(tmp_path):
    async with CacheIndex(tmp_path / "index.sqlite") as idx:
        await idx.add_items([new_item(HASH, Origin.PEER)])
        yield idx


class Downloads:
    """Downloads that count themselves, wait at a gate mid-way, and may fail there."""

    def __init__(self, index: CacheIndex) -> None:
        self.index = index
        self.started = 0
        self.gate = asyncio.Event()
        self.fail_first = False
        self.closed = 0

    async def download(self, item: IndexedItem):
        self.started += 1
        try:
            yield NAR[0]
            await self.gate.wait()
            if self.fail_first and self.started == 1:
                raise P2PCacheError("the provider went away")
            await self.index.mark_baked(item.hash_part, "aa/a.zst", 10, b"t", b"r")
            yield NAR[1]
        finally:
            self.closed += 1


async def read_cached(item: IndexedItem):
    assert item.is_baked
    yield b"".join(NAR)


async def collect(stream) -> bytes:
    return b"".join([piece async for piece in stream])


async def askers(index: CacheIndex, count: int, *, fail_first: bool = False):
    """`count` askers of HASH at once, each collecting what it is given, and their downloads
    (held at the gate mid-way)."""
    fetches = FetchesInProgress(index, read_cached)
    downloads = Downloads(index)
    downloads.fail_first = fail_first
    item = index.get(HASH)
    tasks = [
        asyncio.create_task(collect(fetches.stream(item, downloads.download))) for _ in range(count)
    ]
    await asyncio.sleep(0.01)
    return fetches, downloads, tasks


async def test_a_second_asker_waits_and_reads_the_cache(index):
    fetches, downloads, (first, second) = await askers(index, 2)
    assert downloads.started == 1 and len(fetches) == 1
    assert not second.done()
    downloads.gate.set()
    assert await first == await second == b"".join(NAR)
    assert downloads.started == 1 and len(fetches) == 0


async def test_a_failed_download_is_taken_over_by_a_waiter(index):
    _, downloads, (first, second, third) = await askers(index, 3, fail_first=True)
    downloads.gate.set()
    with pytest.raises(P2PCacheError, match="went away"):
        await first
    assert await second == await third == b"".join(NAR)
    assert downloads.started == 2  # the second took it on; the third read the cache


async def test_an_asker_that_stops_reading_leaves_the_download_to_a_waiter(index):
    fetches = FetchesInProgress(index, read_cached)
    downloads = Downloads(index)
    item = index.get(HASH)
    stream = fetches.stream(item, downloads.download)
    assert await anext(stream) == NAR[0]
    waiter = asyncio.create_task(collect(fetches.stream(item, downloads.download)))
    await asyncio.sleep(0.01)
    await stream.aclose()  # the client went away mid-way
    assert downloads.closed == 1  # its download let go at once
    downloads.gate.set()
    assert await waiter == b"".join(NAR)
    assert downloads.started == 2


async def test_a_waiter_hears_when_the_item_is_withdrawn_meanwhile(index):
    _, downloads, (first, second) = await askers(index, 2, fail_first=True)
    await index.remove([HASH])
    downloads.gate.set()
    with pytest.raises(P2PCacheError):
        await first
    with pytest.raises(P2PCacheError, match="no longer offered"):
        await second
    assert downloads.started == 1


async def test_different_items_download_side_by_side(index):
    other = "b" * 31 + "0"
    await index.add_items([new_item(other, Origin.PEER)])
    fetches = FetchesInProgress(index, read_cached)
    downloads = Downloads(index)
    streams = [fetches.stream(index.get(h), downloads.download) for h in (HASH, other)]
    tasks = [asyncio.create_task(collect(s)) for s in streams]
    await asyncio.sleep(0.01)
    assert downloads.started == 2 and len(fetches) == 2
    downloads.gate.set()
    assert await asyncio.gather(*tasks) == [b"".join(NAR)] * 2
