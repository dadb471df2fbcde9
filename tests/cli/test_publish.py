"""`p2pcache publish` and `p2pcache cache stats|gc` on a generated store."""

import asyncio
import os

from p2pcache.cache.index import CacheIndex
from tests.cli.run import p2pcache


def node_args(tmp_path, store):
    return [
        "--data-dir", str(tmp_path / "data"),
        "--store-root", str(store.store_root),
        "--db", str(store.db_path),
    ]  # fmt: skip


async def baked_count(data_dir):
    async with CacheIndex(data_dir / "index.sqlite") as index:
        return (await index.stats()).baked


def test_publish_all_bakes_every_item_and_reports_progress(tmp_path, small_test_store):
    r = p2pcache("publish", "--all", *node_args(tmp_path, small_test_store))
    assert r.returncode == 0, r.stderr
    assert asyncio.run(baked_count(tmp_path / "data")) == len(small_test_store.items)
    assert b"publishing: " in r.stderr  # the progress line (a sentence when not a terminal)
    again = p2pcache("publish", "--all", *node_args(tmp_path, small_test_store))
    assert again.returncode == 0
    assert b"are already in the cache" in again.stderr
    stats = p2pcache("cache", "stats", *node_args(tmp_path, small_test_store))
    assert stats.returncode == 0
    assert f"{len(small_test_store.items)} cached".encode() in stats.stdout


def test_publish_named_paths_and_refuse_unknown(tmp_path, small_test_store):
    item = small_test_store.items[3]
    r = p2pcache("publish", item.path, *node_args(tmp_path, small_test_store))
    assert r.returncode == 0, r.stderr
    assert asyncio.run(baked_count(tmp_path / "data")) == 1
    bad = p2pcache(
        "publish", "/gnu/store/" + "0" * 32 + "-nope", *node_args(tmp_path, small_test_store)
    )
    assert bad.returncode == 1 and b"is not a valid path" in bad.stderr
    assert bad.stderr.count(b"\n") == 1


def test_publish_refuses_a_corrupt_item_and_exits_1(tmp_path, small_test_store):
    item = max(small_test_store.items, key=lambda i: i.nar_size)
    source = small_test_store.real_path(item.path)
    files = [p for p in [source, *source.rglob("*")] if p.is_file() and not p.is_symlink()]
    os.chmod(files[0], 0o644)
    files[0].write_bytes(files[0].read_bytes() + b"!")
    r = p2pcache("publish", "--all", *node_args(tmp_path, small_test_store))
    assert r.returncode == 1
    assert b"corrupt" in r.stderr
    assert asyncio.run(baked_count(tmp_path / "data")) == len(small_test_store.items) - 1


def test_cache_gc_evicts_to_a_size_and_removes_unknown_files(tmp_path, small_test_store):
    assert p2pcache("publish", "--all", *node_args(tmp_path, small_test_store)).returncode == 0
    stray = tmp_path / "data" / "nar" / "00" / ("0" * 32 + ".zst")
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"left behind")
    fresh = stray.with_name("1" * 32 + ".zst")
    fresh.write_bytes(b"just renamed into place by a running node")
    os.utime(stray, (1_000_000_000, 1_000_000_000))
    r = p2pcache("cache", "gc", "--max-size", "1000", *node_args(tmp_path, small_test_store))
    assert r.returncode == 0, r.stderr
    assert not stray.exists()
    assert fresh.exists()
    assert b"removed 1 files" in r.stdout
    assert asyncio.run(baked_count(tmp_path / "data")) < len(small_test_store.items)
