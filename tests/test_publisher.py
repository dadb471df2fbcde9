"""The publisher (p2pcache.publisher) on its own: following a real Guix store database.

Until now the publisher was only exercised through a whole node (tests/integration) or the
`publish` command (tests/cli). Here it runs with real parts and nothing else around it: a
generated Guix-like store with its real SQLite db.sqlite (written by the testing helpers the way
guix-daemon writes it), a real CacheIndex and NarStore in tmp_path, real zstd on thread pools.
The tests check its own contract: the first sync indexes every valid row (and skips what the
store database reader documents as malformed), later rows are noticed by the next poll, baking
records exactly the NAR of the store path or marks a changed item corrupt, the bake queue and
its metrics move as documented, and a missing, garbage, locked or unreadable database gives the
documented warning or retry rather than a crash.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard

from p2pcache import publisher as publisher_module
from p2pcache.cache.chunk_table import decode_chunk_table
from p2pcache.cache.index import CacheIndex, NewItem, Origin, State
from p2pcache.cache.nar_store import NarStore, nar_file_name
from p2pcache.guix import store_db as store_db_module
from p2pcache.guix.nar import dump_nar
from p2pcache.guix.narinfo import format_nar_hash, parse_nar_hash
from p2pcache.guix.store_db import GuixStoreDatabase, StoreItemInfo
from p2pcache.metrics import NodeMetrics
from p2pcache.publisher import (
    LAST_STORE_ID,
    BakeJob,
    Publisher,
    PublisherSettings,
    new_item_from_store,
)
from p2pcache.testing import TestStore, add_items
from p2pcache.testing.guix_db_writer import open_for_writing, register_valid_path

PUBLISHER_LOG = "p2pcache.publisher"


# -- helpers ------------------------------------------------------------------------------------


def hash_part(path: str) -> str:
    return path.rsplit("/", 1)[-1].partition("-")[0]


def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def nar_bytes(store: TestStore, info: StoreItemInfo) -> bytes:
    out = io.BytesIO()
    dump_nar(store.real_path(info.path), out)
    return out.getvalue()


def job_for(info: StoreItemInfo) -> BakeJob:
    return BakeJob(hash_part(info.path), info.path, info.nar_sha256, info.nar_size)


def largest(items: list[StoreItemInfo]) -> StoreItemInfo:
    return max(items, key=lambda i: i.nar_size or 0)


def corrupt_on_disk(store: TestStore, info: StoreItemInfo) -> None:
    """Change one byte of one regular file of the item (same size, different contents)."""
    source = store.real_path(info.path)
    files = [p for p in [source, *sorted(source.rglob("*"))] if p.is_file() and not p.is_symlink()]
    victim = files[0]
    data = victim.read_bytes()
    os.chmod(victim, 0o644)
    victim.write_bytes(bytes([data[0] ^ 0x01]) + data[1:])


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s")
        await asyncio.sleep(0.02)


def fake_path(letter: str, name: str, store_dir: str = "/gnu/store") -> str:
    return f"{store_dir}/{letter * 32}-{name}"


@dataclass
class Rig:
    """One publisher with its own real index, NAR store and metrics."""

    publisher: Publisher
    index: CacheIndex
    nar_store: NarStore
    metrics: NodeMetrics
    changed: list[str] = field(default_factory=list)
    gone: list[list[str]] = field(default_factory=list)
    closed: bool = False

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels or {})

    def baked_count(self, outcome: str) -> float:
        return self.sample("p2pcache_baked_items_total", {"outcome": outcome}) or 0.0

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.publisher.stop()
            await self.index.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Callable]:
    """Build publishers: `await rig(store_root, db_path, data_dir=..., poll=..., ...)`."""
    bake_pool = ThreadPoolExecutor(1, thread_name_prefix="test-bake")
    zstd_pool = ThreadPoolExecutor(2, thread_name_prefix="test-zstd")
    made: list[Rig] = []

    async def make(
        store_root: Path,
        db_path: Path,
        *,
        data_dir: Path | None = None,
        poll: float = 0.05,
        bake_new_items: bool = True,
        open_attempts: int = 1,
        retry_delay: float = 0.05,
    ) -> Rig:
        data = data_dir or tmp_path / "data"
        index = CacheIndex(data / "index.sqlite")
        await index.open()
        nar_store = NarStore(data / "nar")
        nar_store.prepare()
        metrics = NodeMetrics()
        changed: list[str] = []
        gone: list[list[str]] = []
        publisher = Publisher(
            PublisherSettings(store_root, poll, bake_new_items, 3),
            GuixStoreDatabase(db_path, open_attempts=open_attempts, retry_delay=retry_delay),
            index,
            nar_store,
            metrics,
            bake_executor=bake_pool,
            compress_executor=zstd_pool,
            on_changed=changed.append,
            on_gone=gone.append,
        )
        made.append(r := Rig(publisher, index, nar_store, metrics, changed, gone))
        return r

    yield make
    for r in reversed(made):
        await r.close()
    bake_pool.shutdown()
    zstd_pool.shutdown()


async def synced(r: Rig) -> None:
    await asyncio.wait_for(r.publisher.synced.wait(), 10)


# -- the first sync -----------------------------------------------------------------------------


async def test_first_sync_indexes_every_valid_item_as_the_database_records_it(
    rig, small_test_store, caplog
):
    caplog.set_level(logging.INFO, logger=PUBLISHER_LOG)
    store = small_test_store
    r = await rig(store.store_root, store.db_path)
    assert not r.publisher.synced.is_set()
    await r.publisher.start()
    await synced(r)
    assert r.publisher.available
    stats = await r.index.stats()
    assert stats.items == len(store.items)
    for info in store.items:
        item = r.index.get(hash_part(info.path))
        assert item is not None, info.path
        assert item.store_path == info.path
        assert item.nar_hash == format_nar_hash(info.nar_sha256)
        # The daemon's record is the real NAR of the files on disk.
        nar = nar_bytes(store, info)
        assert parse_nar_hash(item.nar_hash) == hashlib.sha256(nar).digest()
        assert item.nar_size == info.nar_size == len(nar)
        assert item.references == tuple(basename(p) for p in info.references)
        assert item.deriver == (basename(info.deriver) if info.deriver else None)
        assert item.origin is Origin.STORE
        assert item.state is State.UNBAKED
        assert item.store_id == info.id
    assert any(i.references for i in store.items) and any(i.deriver for i in store.items)
    assert r.index.get_state(LAST_STORE_ID) == store.items[-1].id
    assert r.sample("p2pcache_store_valid_paths") == len(store.items)
    # The store found on the very first start is not baked wholesale.
    assert r.publisher.queue_size == 0 and r.changed == []
    assert f"found {len(store.items)} new store items in the Guix database" in " ".join(
        messages(caplog)
    )


async def test_sync_returns_the_highest_id_and_a_second_sync_adds_nothing(
    rig, small_test_store, caplog
):
    caplog.set_level(logging.INFO, logger=PUBLISHER_LOG)
    store = small_test_store
    r = await rig(store.store_root, store.db_path)
    await r.publisher.store_db.open()
    last = await r.publisher.sync(after_id=0, bake_found=False)
    assert last == store.items[-1].id
    middle = store.items[len(store.items) // 2].id
    assert await r.publisher.sync(after_id=middle, bake_found=False) == last
    caplog.clear()
    assert await r.publisher.sync(after_id=last, bake_found=True) == last
    assert (await r.index.stats()).items == len(store.items)
    assert r.publisher.queue_size == 0
    assert not any("new store items" in m for m in messages(caplog))


async def test_sync_with_bake_found_queues_each_item_once(rig, small_test_store):
    store = small_test_store
    r = await rig(store.store_root, store.db_path)
    await r.publisher.store_db.open()
    first = store.items[4].id
    await r.publisher.sync(after_id=first, bake_found=True)
    newer = [i for i in store.items if i.id > first]
    assert r.publisher.queue_size == len(newer)
    assert r.sample("p2pcache_bake_queue_items") == len(newer)
    assert r.index.get(hash_part(store.items[0].path)) is None
    # Reading the same rows again does not queue them twice.
    await r.publisher.sync(after_id=first, bake_found=True)
    assert r.publisher.queue_size == len(newer)


async def test_sync_without_bake_new_items_queues_nothing(rig, small_test_store):
    store = small_test_store
    r = await rig(store.store_root, store.db_path, bake_new_items=False)
    await r.publisher.store_db.open()
    await r.publisher.sync(after_id=0, bake_found=True)
    assert (await r.index.stats()).items == len(store.items)
    assert r.publisher.queue_size == 0


async def test_malformed_rows_are_skipped_with_a_warning_and_the_rest_is_indexed(
    rig, small_test_store, caplog
):
    caplog.set_level(logging.WARNING)
    store = small_test_store
    sha = "sha256:" + "ab" * 32
    bad = {
        fake_path("a", "bad-hash"): ("md5:0123", 100),
        "/elsewhere/" + "b" * 32 + "-outside-the-store": (sha, 100),
        fake_path("c", "negative-size"): (sha, -5),
        fake_path("d", "dangling-reference"): (sha, 100),
    }
    # Plain connection, foreign keys off: a daemon bug or a damaged file could leave a
    # reference to a row that does not exist.
    conn = sqlite3.connect(store.db_path, isolation_level=None)
    try:
        for path, (db_hash, size) in bad.items():
            conn.execute(
                "INSERT INTO ValidPaths (path, hash, registrationTime, deriver, narSize)"
                " VALUES (?, ?, 1, NULL, ?)",
                (path, db_hash, size),
            )
        dangling = conn.execute(
            "SELECT id FROM ValidPaths WHERE path = ?", (fake_path("d", "dangling-reference"),)
        ).fetchone()[0]
        conn.execute("INSERT INTO Refs (referrer, reference) VALUES (?, 999999)", (dangling,))
    finally:
        conn.close()
    later = add_items(store, 3, seed=11)  # valid rows after the malformed ones
    r = await rig(store.store_root, store.db_path)
    await r.publisher.store_db.open()
    last = await r.publisher.sync(after_id=0, bake_found=False)
    assert last == later[-1].id
    assert (await r.index.stats()).items == len(store.items)
    for path in bad:
        assert r.index.get(path.rsplit("/", 1)[-1][:32]) is None
    for info in later:
        assert r.index.get(hash_part(info.path)).store_path == info.path
    skipped = [m for m in messages(caplog) if "skipping a malformed row" in m]
    assert len(skipped) == len(bad)
    # The valid-paths gauge counts every row, malformed ones included (store_db.count).
    assert r.sample("p2pcache_store_valid_paths") == len(store.items) + len(bad)


async def test_row_without_nar_size_is_baked_first_then_indexed_with_the_baked_size(
    rig, small_test_store
):
    store = small_test_store
    info = largest(store.items)
    with open_for_writing(store.db_path) as conn:
        conn.execute("UPDATE ValidPaths SET narSize = NULL WHERE id = ?", (info.id,))
    r = await rig(store.store_root, store.db_path, bake_new_items=False)
    await r.publisher.store_db.open()
    await r.publisher.sync(after_id=0, bake_found=False)
    h = hash_part(info.path)
    assert r.index.get(h) is None
    assert (await r.index.stats()).items == len(store.items) - 1
    # Queued even though nothing else is baked (first sync, bake_new_items off).
    assert r.publisher.queue_size == 1
    assert r.sample("p2pcache_bake_queue_items") == 1
    await r.publisher.start()
    await r.publisher.wait_idle(10)
    item = r.index.get(h)
    assert item is not None and item.is_baked
    assert item.nar_size == len(nar_bytes(store, info)) == info.nar_size
    assert item.nar_hash == format_nar_hash(info.nar_sha256)
    assert item.references == tuple(basename(p) for p in info.references)
    assert r.changed == [h]
    assert r.publisher.queue_size == 0
    assert r.sample("p2pcache_bake_queue_items") == 0


# -- following the database -----------------------------------------------------------------


async def test_items_added_later_are_noticed_by_the_next_poll_and_baked(rig, small_test_store):
    store = small_test_store
    r = await rig(store.store_root, store.db_path)
    await r.publisher.start()
    await synced(r)
    before = len(store.items)
    added = add_items(store, 3, seed=7)
    hashes = [hash_part(i.path) for i in added]

    def all_baked() -> bool:
        return all((it := r.index.get(h)) is not None and it.is_baked for h in hashes)

    await eventually(all_baked)
    await r.publisher.wait_idle(10)
    for info in added:
        item = r.index.get(hash_part(info.path))
        assert item.store_path == info.path and item.store_id == info.id
        assert item.nar_size == info.nar_size
    assert r.index.get_state(LAST_STORE_ID) == added[-1].id
    assert sorted(r.changed) == sorted(hashes)
    assert r.baked_count("ok") == 3
    assert r.sample("p2pcache_baked_nar_bytes_total") == sum(i.nar_size for i in added)
    assert r.sample("p2pcache_bake_duration_seconds_count") == 3
    assert r.sample("p2pcache_store_valid_paths") == before + 3
    assert r.sample("p2pcache_bake_queue_items") == 0
    # The items found at the first start stay unbaked.
    assert (await r.index.stats()).baked == 3


async def test_items_added_later_are_only_indexed_when_baking_new_items_is_off(
    rig, small_test_store
):
    store = small_test_store
    r = await rig(store.store_root, store.db_path, bake_new_items=False)
    await r.publisher.start()
    await synced(r)
    added = add_items(store, 3, seed=7)
    await eventually(lambda: all(r.index.get(hash_part(i.path)) for i in added))
    await asyncio.sleep(0.2)  # a few more polls
    assert r.publisher.queue_size == 0
    assert (await r.index.stats()).baked == 0
    assert r.baked_count("ok") == 0


async def test_restart_bakes_what_appeared_while_stopped_and_marks_corrupt_items(
    rig, small_test_store, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger=PUBLISHER_LOG)
    store = small_test_store
    data = tmp_path / "node-data"
    first = await rig(store.store_root, store.db_path, data_dir=data)
    await first.publisher.start()
    await synced(first)
    await first.close()

    added = add_items(store, 4, seed=9)
    bad = largest(added)
    corrupt_on_disk(store, bad)
    second = await rig(store.store_root, store.db_path, data_dir=data)
    await second.publisher.start()
    await synced(second)
    await second.publisher.wait_idle(10)
    for info in added:
        item = second.index.get(hash_part(info.path))
        if info is bad:
            assert item.state is State.CORRUPT and item.nar_file is None
        else:
            assert item.is_baked, info.path
    assert second.baked_count("ok") == len(added) - 1
    assert second.baked_count("corrupt") == 1
    assert second.sample("p2pcache_store_corrupt_items_total") == 1
    assert sorted(second.changed) == sorted(hash_part(i.path) for i in added)
    stats = await second.index.stats()
    assert (stats.baked, stats.corrupt) == (len(added) - 1, 1)
    assert nar_file_name(hash_part(bad.path)) not in set(second.nar_store.iter_names())
    assert any("refusing to publish a corrupt store item" in m for m in messages(caplog))


def leaves(store: TestStore) -> list[StoreItemInfo]:
    """Items no other item refers to: what `guix gc` may delete alone."""
    referenced = {ref for i in store.items for ref in i.references if ref != i.path}
    return [i for i in store.items if i.path not in referenced]


def collect_garbage(store: TestStore, info: StoreItemInfo) -> None:
    """What `guix gc` does to an item: its row goes (with its references), then its files."""
    with open_for_writing(store.db_path) as conn:
        conn.execute("DELETE FROM Refs WHERE referrer = ?", (info.id,))
        conn.execute("DELETE FROM ValidPaths WHERE id = ?", (info.id,))
    path = store.real_path(info.path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


async def test_a_poll_with_fewer_rows_forgets_the_store_items_collected_as_garbage(
    rig, small_test_store, caplog
):
    store = small_test_store
    r = await rig(store.store_root, store.db_path, bake_new_items=False)
    await r.publisher.start()
    await synced(r)
    leaf = leaves(store)[-1]
    h = hash_part(leaf.path)
    with caplog.at_level(logging.INFO, logger=PUBLISHER_LOG):
        collect_garbage(store, leaf)
        await eventually(lambda: r.index.get(h) is None)
    assert r.gone == [[h]]
    assert r.sample("p2pcache_store_valid_paths") == len(store.items) - 1
    assert any("forgot 1 store items that are no longer" in m for m in messages(caplog))
    assert all(r.index.get(hash_part(i.path)) for i in store.items if i is not leaf)


async def test_the_hourly_check_finds_what_new_rows_hid_and_keeps_what_is_still_backed(
    rig, small_test_store, monkeypatch
):
    """New builds may outnumber what `guix gc` deleted between two polls: the row count does
    not drop, and the periodic comparison finds them. Baked items, items queued for baking
    and paths registered again under a new id are kept."""
    store = small_test_store
    monkeypatch.setattr(publisher_module, "COLLECTED_CHECK_PAGE", 3)  # pages of 3 items
    r = await rig(store.store_root, store.db_path, bake_new_items=False)
    await r.publisher.store_db.open()  # polled by hand: no worker bakes the queued item
    last = await r.publisher.sync(after_id=0, bake_found=False)
    gone, baked, queued, again = leaves(store)[-4:]
    assert await r.publisher.bake(job_for(baked)) is not None
    collect_garbage(store, gone)
    with open_for_writing(store.db_path) as conn:
        for info in (baked, queued, again):
            conn.execute("DELETE FROM ValidPaths WHERE id = ?", (info.id,))
        new_id = register_valid_path(
            conn,
            path=again.path,
            nar_sha256=again.nar_sha256,
            nar_size=again.nar_size,
            registration_time=int(time.time()),
            deriver=again.deriver,
            references=tuple(ref for ref in again.references if ref != again.path),
        )
    assert new_id > again.id
    added = add_items(store, 5, seed=21)  # more rows than were deleted
    await r.publisher.sync(after_id=last, bake_found=False)
    assert all(r.index.get(hash_part(i.path)) for i in added)
    r.publisher.enqueue_item(r.index.get(hash_part(queued.path)))
    assert r.publisher.queue_size == 1
    forgotten = await r.publisher.forget_collected()
    assert forgotten == [hash_part(gone.path)]
    assert r.gone == [forgotten]
    assert r.index.get(hash_part(gone.path)) is None
    assert r.index.get(hash_part(baked.path)).is_baked  # its NAR is in the cache
    assert r.index.get(hash_part(queued.path)) is not None  # its bake checks the store
    assert r.index.get(hash_part(again.path)) is not None  # valid under its new id
    assert await r.publisher.forget_collected() == []


async def test_store_db_finds_an_item_the_poll_has_not_reached_yet(rig, small_test_store):
    store = small_test_store
    r = await rig(store.store_root, store.db_path, poll=60)
    await r.publisher.start()
    await synced(r)
    assert r.publisher.available
    added = add_items(store, 2, seed=5)
    info = added[-1]
    h = hash_part(info.path)
    assert r.index.get(h) is None  # the next poll is a minute away
    found = await r.publisher.store_db.find_by_hash_part(h)
    assert found == info
    assert await r.publisher.store_db.find_by_hash_part("0" * 32) is None
    new = new_item_from_store(found)
    assert new == NewItem(
        hash_part=h,
        store_path=info.path,
        nar_hash=format_nar_hash(info.nar_sha256),
        nar_size=info.nar_size,
        references=tuple(basename(p) for p in info.references),
        deriver=basename(info.deriver) if info.deriver else None,
        origin=Origin.STORE,
        store_id=info.id,
    )


# -- baking -------------------------------------------------------------------------------------


async def test_baked_item_decompresses_to_the_nar_of_the_store_path(rig, small_test_store):
    store = small_test_store
    r = await rig(store.store_root, store.db_path)
    await r.publisher.start()
    await synced(r)
    info = largest(store.items)
    h = hash_part(info.path)
    progress: list[int] = []
    result = await r.publisher.bake(job_for(info), progress.append)
    assert result is not None
    expected = nar_bytes(store, info)
    assert sum(progress) == len(expected) == info.nar_size
    item = r.index.get(h)
    assert item.state is State.BAKED and item.is_baked
    assert item.nar_file == result.nar_file == nar_file_name(h)
    blob = r.nar_store.path_of(item.nar_file).read_bytes()
    assert item.file_size == len(blob) == result.table.file_size
    assert item.chunk_table == result.table.encode()
    assert item.chunk_root == result.table.root
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read() == expected
    table = decode_chunk_table(item.chunk_table)
    assert b"".join(r.nar_store.read_nar(item.nar_file, table)) == expected
    assert r.changed == [h]
    assert r.baked_count("ok") == 1
    assert r.sample("p2pcache_baked_nar_bytes_total") == info.nar_size
    assert r.sample("p2pcache_bake_duration_seconds_count") == 1
    # Baking it again is a no-op.
    assert await r.publisher.bake(job_for(info)) is None
    assert r.baked_count("ok") == 1 and r.changed == [h]


async def test_item_changed_on_disk_is_marked_corrupt_and_never_baked(
    rig, small_test_store, caplog
):
    caplog.set_level(logging.INFO, logger=PUBLISHER_LOG)
    store = small_test_store
    r = await rig(store.store_root, store.db_path)
    await r.publisher.start()
    await synced(r)
    info = largest(store.items)
    h = hash_part(info.path)
    corrupt_on_disk(store, info)
    assert await r.publisher.bake(job_for(info)) is None
    item = r.index.get(h)
    assert item.state is State.CORRUPT
    assert (item.nar_file, item.file_size, item.chunk_table) == (None, None, None)
    assert list(r.nar_store.iter_names()) == []
    assert list(r.nar_store.temps.rglob("*.part")) == []
    assert r.changed == [h]
    assert r.baked_count("corrupt") == 1 and r.baked_count("ok") == 0
    assert r.sample("p2pcache_store_corrupt_items_total") == 1
    errors = [m for m in messages(caplog, logging.ERROR) if "corrupt store item" in m]
    assert len(errors) == 1 and str(store.real_path(info.path)) in errors[0]
    # Asked again, it is checked again and refused again.
    assert await r.publisher.bake(job_for(info)) is None
    assert r.index.get(h).state is State.CORRUPT
    assert r.sample("p2pcache_store_corrupt_items_total") == 2
    assert (await r.index.stats()).baked == 0
    # Not queued again for baking: it would only be checked and refused again.
    r.publisher.enqueue_item(r.index.get(h))
    assert r.publisher.queue_size == 0


async def test_enqueue_item_queues_unbaked_store_items_once_and_the_worker_drains_them(
    rig, small_test_store
):
    store = small_test_store
    r = await rig(store.store_root, store.db_path)
    await r.publisher.store_db.open()
    await r.publisher.sync(after_id=0, bake_found=False)
    info, other = store.items[-1], store.items[-2]
    item = r.index.get(hash_part(info.path))
    r.publisher.enqueue_item(item)
    r.publisher.enqueue_item(item)
    assert r.publisher.queue_size == 1
    assert r.sample("p2pcache_bake_queue_items") == 1
    # Not from the store: nothing to bake it from.
    peer = NewItem("a" * 32, fake_path("a", "from-a-peer"), item.nar_hash, 1, (), None, Origin.PEER)
    await r.index.add_items([peer])
    r.publisher.enqueue_item(r.index.get("a" * 32))
    # Already baked.
    assert await r.publisher.bake(job_for(other)) is not None
    r.publisher.enqueue_item(r.index.get(hash_part(other.path)))
    assert r.publisher.queue_size == 1
    # No worker runs before start(): waiting for the queue times out.
    with pytest.raises(TimeoutError, match="1 items still baking"):
        await r.publisher.wait_idle(0.1)
    await r.publisher.start()
    await r.publisher.wait_idle(10)
    assert r.index.get(hash_part(info.path)).is_baked
    assert r.publisher.queue_size == 0
    assert r.sample("p2pcache_bake_queue_items") == 0
    assert r.baked_count("ok") == 2


async def test_store_item_missing_on_disk_is_an_error_not_corruption(
    rig, small_test_store, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger=PUBLISHER_LOG)
    store = small_test_store
    empty_root = tmp_path / "empty-store-root"
    empty_root.mkdir()
    r = await rig(empty_root, store.db_path)
    await r.publisher.start()
    await synced(r)
    # The database alone is enough to index the store.
    assert r.publisher.available
    assert (await r.index.stats()).items == len(store.items)
    info = store.items[0]
    h = hash_part(info.path)
    assert await r.publisher.bake(job_for(info)) is None
    assert r.index.get(h).state is State.UNBAKED
    assert r.baked_count("error") == 1 and r.baked_count("corrupt") == 0
    assert r.changed == []
    assert any(m.startswith(f"could not bake {info.path}") for m in messages(caplog))


# -- no store, or a database that cannot be read ------------------------------------------------


async def test_missing_database_publishes_nothing_with_a_warning(rig, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    r = await rig(tmp_path / "no-store", tmp_path / "no-db" / "db.sqlite")
    await r.publisher.start()
    assert r.publisher.synced.is_set()
    assert not r.publisher.available
    warnings = [m for m in messages(caplog, logging.WARNING) if "publishes nothing" in m]
    assert len(warnings) == 1
    assert warnings[0].startswith("this node publishes nothing from a local store: ")
    assert "does not exist" in warnings[0]
    assert (await r.index.stats()).items == 0
    assert r.sample("p2pcache_store_valid_paths") == 0
    await r.close()


async def test_garbage_database_file_publishes_nothing_with_a_warning(rig, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    db = tmp_path / "db" / "db.sqlite"
    db.parent.mkdir()
    db.write_bytes(b"this is not an SQLite database, only garbage\n" * 200)
    r = await rig(tmp_path / "store", db, open_attempts=3)
    await r.publisher.start()
    assert r.publisher.synced.is_set()
    assert not r.publisher.available
    found = messages(caplog, logging.WARNING)
    assert len(found) == 1  # not transient: no retry
    assert found[0].startswith(
        "this node publishes nothing from a local store: the Guix store database cannot be read"
    )
    assert "is not a readable Guix store database" in found[0]


async def test_database_locked_at_start_is_retried_then_publishes_nothing(
    rig, small_test_store, caplog, monkeypatch
):
    # Waiting a minute for the lock (the production busy timeout) would make a slow test.
    monkeypatch.setattr(store_db_module, "BUSY_TIMEOUT", 0.1)
    caplog.set_level(logging.WARNING)
    store = small_test_store
    holder = sqlite3.connect(store.db_path, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        r = await rig(store.store_root, store.db_path, open_attempts=3, retry_delay=0.02)
        await r.publisher.start()
    finally:
        holder.close()
    assert r.publisher.synced.is_set()
    assert not r.publisher.available
    found = messages(caplog, logging.WARNING)
    retries = [m for m in found if "read-only yet" in m and "database is locked" in m]
    assert len(retries) == 2  # attempts 1 and 2 of 3
    final = [m for m in found if "publishes nothing" in m]
    assert len(final) == 1 and "stayed locked" in final[0]
    assert (await r.index.stats()).items == 0


async def test_writer_holding_the_lock_does_not_block_polling(rig, small_test_store, caplog):
    caplog.set_level(logging.WARNING)
    store = small_test_store
    r = await rig(store.store_root, store.db_path, bake_new_items=False)
    await r.publisher.start()
    await synced(r)
    path = fake_path("f", "being-registered")
    with open_for_writing(store.db_path) as conn:  # BEGIN ... COMMIT, as the daemon does
        row = register_valid_path(
            conn,
            path=path,
            nar_sha256=hashlib.sha256(b"x").digest(),
            nar_size=120,
            registration_time=2_000_000_000,
            deriver=None,
            references=(),
        )
        await asyncio.sleep(0.3)  # several polls while the write transaction is open
        assert r.index.get("f" * 32) is None
        assert r.index.get_state(LAST_STORE_ID) == store.items[-1].id
    await eventually(lambda: r.index.get("f" * 32) is not None)
    assert r.index.get("f" * 32).store_id == row
    assert r.index.get_state(LAST_STORE_ID) == row
    assert messages(caplog, logging.WARNING) == []


async def test_unreadable_database_while_following_is_retried_at_the_next_poll(
    rig, small_test_store, caplog
):
    caplog.set_level(logging.WARNING)
    store = small_test_store
    r = await rig(store.store_root, store.db_path)
    await r.publisher.store_db.open()
    # The file stops being a store database after it was opened (its main table is gone).
    with open_for_writing(store.db_path) as conn:
        conn.execute("ALTER TABLE ValidPaths RENAME TO ValidPathsAway")
    await r.publisher.start()
    await synced(r)
    assert r.publisher.available
    await eventually(lambda: any("will retry" in m for m in messages(caplog)))
    failed = [m for m in messages(caplog, logging.WARNING) if "will retry" in m]
    assert failed[0].startswith("reading the Guix store database failed: ")
    assert "no such table: ValidPaths" in failed[0]
    assert (await r.index.stats()).items == 0
    with open_for_writing(store.db_path) as conn:
        conn.execute("ALTER TABLE ValidPathsAway RENAME TO ValidPaths")
    await eventually(lambda: r.index.get_state(LAST_STORE_ID) == store.items[-1].id)
    assert (await r.index.stats()).items == len(store.items)
    # The first successful read is still the first start: nothing is baked wholesale.
    await asyncio.sleep(0.1)
    assert r.publisher.queue_size == 0 and (await r.index.stats()).baked == 0
