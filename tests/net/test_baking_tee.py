"""The tee between a download and the cache: bounded hand-off, errors from either side, cleanup."""

import asyncio
import hashlib
import os
import threading

import pytest

from p2pcache.cache import baker
from p2pcache.cache.nar_store import NarStore
from p2pcache.net import baking_tee
from p2pcache.net.baking_tee import BakeAbandoned, BakingTee, NarHashMismatch

CHUNK = 100_000
CHUNKS = [bytes([i]) * CHUNK for i in range(40)]
NAR = b"".join(CHUNKS)
HASH_PART = "0" * 32


@pytest.fixture
def store(tmp_path):
    nar_store = NarStore(tmp_path / "nar")
    nar_store.prepare()
    return nar_store


def stored_nothing(store):
    return not list(store.iter_names()) and not any(store.temps.rglob("*.part"))


class Source:
    """An async stream of chunks that counts what was pulled and can fail part-way."""

    def __init__(self, chunks, fail_after=None):
        self.chunks = chunks
        self.fail_after = fail_after
        self.pulled = 0
        self.closed = False

    async def stream(self):
        try:
            for chunk in self.chunks:
                if self.pulled == self.fail_after:
                    raise ConnectionError("the upstream went away")
                self.pulled += 1
                yield chunk
                await asyncio.sleep(0)
        finally:
            self.closed = True


def tee(store, source, *, sha256=None, size=None, depth=4):
    return BakingTee(
        source.stream(),
        store,
        HASH_PART,
        expected_sha256=sha256 or hashlib.sha256(NAR).digest(),
        expected_size=len(NAR) if size is None else size,
        what="/gnu/store/test from a test",
        depth=depth,
    )


async def test_every_chunk_is_passed_on_and_the_nar_committed(store):
    source = Source(CHUNKS)
    async with tee(store, source) as t:
        received = [chunk async for chunk in t]
    assert received == CHUNKS
    result = await t.result()
    assert result.summary.size == len(NAR)
    assert list(store.iter_names()) == [result.nar_file]
    assert source.closed


async def test_mismatch_ends_the_iteration_with_an_error_and_stores_nothing(store):
    source = Source(CHUNKS)
    with pytest.raises(NarHashMismatch, match="nothing was stored"):
        async with tee(store, source, sha256=bytes(32)) as t:
            async for _ in t:
                pass
    with pytest.raises(NarHashMismatch):
        await t.result()
    assert stored_nothing(store)


async def test_source_error_abandons_the_bake(store):
    source = Source(CHUNKS, fail_after=5)
    with pytest.raises(ConnectionError):
        async with tee(store, source) as t:
            async for _ in t:
                pass
    with pytest.raises(ConnectionError):
        await t.result()
    assert stored_nothing(store)


async def test_baker_failure_stops_the_download(store):
    os.rmdir(store.temp_dir)  # the worker cannot create its temporary file
    source = Source(CHUNKS)
    with pytest.raises(FileNotFoundError):
        async with tee(store, source, depth=2) as t:
            async for _ in t:
                pass
    assert source.pulled <= 4
    assert source.closed


async def test_hand_off_holds_at_most_depth_chunks(store, monkeypatch):
    """A baker that is stuck makes the download wait, instead of queueing the whole NAR."""
    unblock = threading.Event()
    real_bake_stream = baker.bake_stream

    def stuck_bake_stream(chunks, *args, **kwargs):
        unblock.wait(10)
        return real_bake_stream(chunks, *args, **kwargs)

    monkeypatch.setattr(baking_tee, "bake_stream", stuck_bake_stream)
    source = Source(CHUNKS)
    async with tee(store, source, depth=3) as t:
        consumer = asyncio.create_task(_drain(t))
        async with asyncio.timeout(5):
            while source.pulled < 4:
                await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        # 3 chunks in the hand-off, 1 pulled and waiting for a credit.
        assert source.pulled == 4
        unblock.set()
        await consumer
    assert (await t.result()).summary.size == len(NAR)


async def _drain(t):
    async for _ in t:
        pass


async def test_result_needs_the_iteration_to_end(store):
    t = tee(store, Source(CHUNKS))
    with pytest.raises(RuntimeError, match="iterate"):
        await t.result()
    await t.aclose()
    with pytest.raises(BakeAbandoned):
        await t.result()
    assert stored_nothing(store)


async def test_a_tee_is_iterated_once(store):
    async with tee(store, Source(CHUNKS)) as t:
        aiter(t)
        with pytest.raises(RuntimeError, match="only once"):
            aiter(t)
