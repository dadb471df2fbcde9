"""The Guix endpoint's narinfo answers from the cache index: signed items, unsigned ones,
corrupt and unknown ones, and pre-rendered (hot) answers that never outlive a change."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import pytest

from p2pcache.cache.index import CacheIndex, IndexedItem, NewItem, Origin
from p2pcache.cache.nar_store import NarStore
from p2pcache.cache.rendered_narinfos import RenderedNarinfos
from p2pcache.metrics import NodeMetrics
from p2pcache.server.guix_endpoint import HOT_ADMISSION_ONE_IN, EndpointSettings, GuixEndpoint
from p2pcache.server.http_response import FastReply, RawResponse
from p2pcache.server.http_server import _new_request

SIGNED = "a" * 31 + "0"
UNSIGNED = "b" * 31 + "0"
UNKNOWN = "c" * 31 + "0"


def new_item(hash_part: str, signed: bool) -> NewItem:
    return NewItem(
        hash_part=hash_part,
        store_path=f"/gnu/store/{hash_part}-hello-2.12",
        nar_hash="sha256:" + "0" * 52,
        nar_size=4321,
        references=(),
        deriver=None,
        origin=Origin.PEER,
        signed_part=f"StorePath: /gnu/store/{hash_part}-hello-2.12\n".encode() if signed else None,
        signature=b"Signature: 1;h;sig\n" if signed else None,
    )


@pytest.fixture
async def index(tmp_path: Path):
    async with CacheIndex(tmp_path / "index.sqlite") as idx:
        await idx.add_items([new_item(SIGNED, True), new_item(UNSIGNED, False)])
        yield idx


def endpoint(index: CacheIndex, tmp_path: Path, signed: list[str]) -> GuixEndpoint:
    def sign(item: IndexedItem) -> IndexedItem:
        signed.append(item.hash_part)
        part = f"StorePath: {item.store_path}\n".encode()
        return dataclasses.replace(item, signed_part=part, signature=b"Signature: 1;me;x\n")

    settings = EndpointSettings("/gnu/store", tmp_path / "store", 600, 60, 100)
    return GuixEndpoint(
        settings, index, NarStore(tmp_path / "nar"), b"(public-key)", sign, NodeMetrics()
    )


def get(ep: GuixEndpoint, hash_part: str) -> RawResponse:
    target = f"/{hash_part}.narinfo"
    response = ep.handle(_new_request("GET", target.encode(), target, True, ()))
    assert isinstance(response, RawResponse)
    return response


def body(response: RawResponse) -> bytes:
    return response.data[response.head_length :]


async def test_a_signed_item_is_answered_then_served_hot_until_forgotten(index, tmp_path):
    signed: list[str] = []
    ep = endpoint(index, tmp_path, signed)
    first = get(ep, SIGNED)
    base = f"{SIGNED}-hello-2.12"
    assert first.status == 200 and signed == []
    assert (
        body(first)
        == (
            f"StorePath: /gnu/store/{base}\nSignature: 1;h;sig\n"
            f"URL: nar/{base}\nCompression: none\nFileSize: 4321\n"
        ).encode()
    )
    assert b"Cache-Control: max-age=600\r\n" in first.data[: first.head_length]
    assert b"Content-Length: %d\r\n" % len(body(first)) in first.data[: first.head_length]
    target = f"/{SIGNED}.narinfo".encode()
    assert ep.fast_answer(target) is first
    await index.mark_baked(SIGNED, "aa/x.zst", 99, b"table", b"r" * 32)
    assert ep.fast_answer(target) is first  # until the node says it changed
    ep.forget(SIGNED)
    # Read from the index again (admitted to the hot table one answer in eight), every
    # answer rendered from the change.
    answers = [ep.fast_answer(target) for _ in range(HOT_ADMISSION_ONE_IN)]
    fresh = answers[-1]
    assert isinstance(fresh, RawResponse) and all(a is not first for a in answers)
    assert all(isinstance(a, FastReply) for a in answers[:-1])
    assert {a.data for a in answers} == {fresh.data}
    assert get(ep, SIGNED) is fresh  # the fresh rendering is the hot one now
    baked = body(fresh)
    assert f"URL: nar/zstd/{base}\nCompression: zstd\nFileSize: 99\n".encode() in baked
    assert baked.endswith(f"URL: nar/{base}\nCompression: none\nFileSize: 4321\n".encode())
    lookups = ep.metrics.narinfo_lookups
    assert (lookups.hits, lookups.misses) == (4 + HOT_ADMISSION_ONE_IN, 0)


async def test_one_answer_from_the_index_in_eight_enters_the_hot_table(index, tmp_path):
    """Items asked once do not each push an entry into the bounded hot table; the answers
    that stay out are the very bytes the handler sends."""
    hashes = [f"{n:02d}" + "x" * 30 for n in range(10 * HOT_ADMISSION_ONE_IN)]
    await index.add_items([new_item(h, True) for h in hashes])
    ep = endpoint(index, tmp_path, [])
    targets = [f"/{h}.narinfo".encode() for h in hashes]
    first = [ep.fast_answer(t) for t in targets]
    again = [ep.fast_answer(t) for t in targets]
    kept = [a for a, b in zip(first, again, strict=True) if a is b]
    assert len(kept) == 10 and all(isinstance(a, RawResponse) for a in kept)
    for h, answer in zip(hashes, first, strict=True):
        assert answer is not None and answer.status == 200 and answer.label == "narinfo"
        assert answer.data == get(ep, h).data


async def test_the_fast_answer_leaves_misses_unsigned_and_corrupt_items_to_the_handler(
    index, tmp_path
):
    ep = endpoint(index, tmp_path, [])
    await index.add_items([new_item(UNKNOWN, True)])
    await index.mark_corrupt(UNKNOWN)
    for target in (
        f"/{UNSIGNED}.narinfo",
        f"/{UNKNOWN}.narinfo",
        f"/{'d' * 32}.narinfo",
        f"/{SIGNED}.narinfo.x",
        f"/nar/{SIGNED}-hello-2.12",
        "/nix-cache-info",
    ):
        assert ep.fast_answer(target.encode()) is None, target
    lookups = ep.metrics.narinfo_lookups
    assert (lookups.hits, lookups.misses) == (0, 0)  # the handler counts them
    assert ep.fast_answer(f"/{SIGNED}.narinfo".encode()).status == 200
    assert (lookups.hits, lookups.misses) == (1, 0)


async def test_an_unsigned_item_is_signed_on_demand(index, tmp_path):
    signed: list[str] = []
    ep = endpoint(index, tmp_path, signed)
    answer = get(ep, UNSIGNED)
    assert signed == [UNSIGNED]
    assert body(answer).startswith(b"StorePath: /gnu/store/%s-hello-2.12\n" % UNSIGNED.encode())
    assert b"Signature: 1;me;x\n" in body(answer)


async def test_corrupt_and_unknown_items_are_404_misses(index, tmp_path):
    ep = endpoint(index, tmp_path, [])
    get(ep, SIGNED)
    await index.mark_corrupt(SIGNED)
    ep.forget(SIGNED)
    for hash_part in (SIGNED, UNKNOWN):
        answer = get(ep, hash_part)
        assert answer.status == 404 and b"max-age=60\r\n" in answer.data
        assert ep.fast_answer(f"/{hash_part}.narinfo".encode()) is None
    lookups = ep.metrics.narinfo_lookups
    assert (lookups.hits, lookups.misses) == (1, 2)


async def test_forgetting_an_item_drops_the_index_snapshot_too(index, tmp_path):
    """A change committed while the fast path's snapshot is open is served once the node
    reports it (forget), not one loop iteration later."""
    ep = endpoint(index, tmp_path, [])
    target = f"/{SIGNED}.narinfo".encode()
    ep.fast_answer(f"/{UNSIGNED}.narinfo".encode())  # opens this iteration's snapshot
    db = sqlite3.connect(index.path, isolation_level=None)
    db.execute(
        "UPDATE items SET state = 'baked', nar_file = 'aa/x.zst', file_size = 77"
        " WHERE hash_part = ?",
        (SIGNED,),
    )
    db.close()
    ep.forget(SIGNED)
    assert b"Compression: zstd\nFileSize: 77\n" in body(ep.fast_answer(target))


async def test_rendered_narinfos_answer_what_the_index_would_until_forgotten(index, tmp_path):
    """With the rendered narinfos built, a hit is read from them, byte for byte what the
    index gives; a change the node reports is answered from the index again, then kept."""
    ep = endpoint(index, tmp_path, [])
    from_index = ep.fast_answer(f"/{SIGNED}.narinfo".encode()).data
    ep._hot.clear()
    rendered = RenderedNarinfos(tmp_path / "rendered", index.path, ep.render_servable)
    ep.rendered = rendered
    rendered.start()
    try:
        while not rendered.ready:
            await asyncio.sleep(0.01)
        target = f"/{SIGNED}.narinfo".encode()
        assert rendered.get(SIGNED) == from_index
        assert ep.fast_answer(target).data == from_index
        assert ep.fast_answer(f"/{UNSIGNED}.narinfo".encode()) is None  # left to the handler
        ep._hot.clear()
        await index.mark_baked(SIGNED, "aa/x.zst", 99, b"table", b"r" * 32)
        ep.forget(SIGNED)  # the node reports the change: no waiting for the change log
        assert rendered.get(SIGNED) is None
        fresh = ep.fast_answer(target).data
        assert b"Compression: zstd\nFileSize: 99\n" in fresh
        assert rendered.get(SIGNED) == fresh  # kept again, as rendered from the change
        assert get(ep, SIGNED).data == fresh  # the handler's own rendering
    finally:
        await rendered.close()


async def test_a_hot_narinfo_changed_by_another_process_is_dropped(index, tmp_path):
    """`p2pcache cache gc` beside the node: the change log reaches the hot narinfos too."""
    ep = endpoint(index, tmp_path, [])
    rendered = RenderedNarinfos(
        tmp_path / "rendered", index.path, ep.render_servable, on_change=ep.forget_hot
    )
    ep.rendered = rendered
    rendered.start()
    try:
        target = f"/{SIGNED}.narinfo".encode()
        hot = get(ep, SIGNED)  # answered from the index and remembered as hot
        assert ep.fast_answer(target) is hot
        db = sqlite3.connect(index.path, isolation_level=None)
        db.execute("UPDATE items SET state = 'corrupt' WHERE hash_part = ?", (SIGNED,))
        db.close()
        await asyncio.sleep(0)
        assert ep.fast_answer(f"/{UNSIGNED}.narinfo".encode()) is None  # reads the log
        assert ep.fast_answer(target) is None  # corrupt: left to the handler, which refuses
        assert get(ep, SIGNED).status == 404
    finally:
        await rendered.close()
