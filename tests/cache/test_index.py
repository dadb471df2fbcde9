"""The cache index: migrations, synchronous reads beside asynchronous writes, LRU order."""

import asyncio
import contextlib
import dataclasses
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcache.cache.index import (
    MIGRATIONS,
    CacheIndex,
    CacheIndexError,
    IndexStats,
    NewItem,
    Origin,
    State,
    row_key,
    sql_statements,
)

HASH_A = "a" * 31 + "0"
HASH_B = "b" * 31 + "0"


def new_item(hash_part: str, origin: Origin = Origin.STORE) -> NewItem:
    return NewItem(
        hash_part=hash_part,
        store_path=f"/gnu/store/{hash_part}-x",
        nar_hash="sha256:" + "0" * 52,
        nar_size=1234,
        references=(f"{hash_part}-x", f"{HASH_B}-y"),
        deriver=f"{hash_part}-x.drv",
        origin=origin,
        store_id=7,
    )


@pytest.fixture
async def index(tmp_path):
    async with CacheIndex(tmp_path / "index.sqlite") as idx:
        yield idx


async def test_schema_is_migrated_and_recorded(index):
    assert index.schema_version() == max(m[0] for m in MIGRATIONS)


async def test_reopening_does_not_migrate_twice(tmp_path):
    path = tmp_path / "i.sqlite"
    async with CacheIndex(path) as idx:
        await idx.add_items([new_item(HASH_A)])
    async with CacheIndex(path) as idx:
        assert idx.get(HASH_A) is not None
    rows = sqlite3.connect(path).execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert rows[0] == len(MIGRATIONS)


async def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "i.sqlite"
    async with CacheIndex(path):
        pass
    db = sqlite3.connect(path)
    db.execute("INSERT INTO schema_migrations VALUES (999, 'x', 'future', 0)")
    db.commit()
    db.close()
    with pytest.raises(CacheIndexError, match="newer than this"):
        await CacheIndex(path).open()


async def test_add_get_and_idempotence(index):
    assert await index.add_items([new_item(HASH_A), new_item(HASH_B)]) == 2
    assert await index.add_items([new_item(HASH_A)]) == 0
    item = index.get(HASH_A)
    assert item.store_path == f"/gnu/store/{HASH_A}-x"
    assert item.references == (f"{HASH_A}-x", f"{HASH_B}-y")
    assert item.deriver == f"{HASH_A}-x.drv"
    assert item.state is State.UNBAKED and not item.is_baked
    assert item.basename == f"{HASH_A}-x"
    assert index.get("c" * 32) is None


async def test_signature_and_baking_are_seen_by_the_synchronous_reader(index):
    await index.add_items([new_item(HASH_A)])
    await index.set_signature(HASH_A, b"StorePath: x\n", b"Signature: 1;h;x\n")
    await index.mark_baked(HASH_A, "aa/x.zst", 99, b"table", b"r" * 32)
    item = index.get(HASH_A)
    assert item.signed_part == b"StorePath: x\n"
    assert item.signature == b"Signature: 1;h;x\n"
    assert item.is_baked and item.file_size == 99 and item.chunk_table == b"table"
    stats = await index.stats()
    assert (stats.items, stats.baked, stats.cached_bytes) == (1, 1, 99)
    await index.mark_unbaked(HASH_A)
    assert not index.get(HASH_A).is_baked
    await index.mark_corrupt(HASH_A)
    assert index.get(HASH_A).state is State.CORRUPT
    assert (await index.stats()).corrupt == 1


async def test_least_recently_used_order(index):
    await index.add_items([new_item(HASH_A), new_item(HASH_B)])
    await index.mark_baked(HASH_A, "aa/a.zst", 1, b"t", b"r")
    await index.mark_baked(HASH_B, "bb/b.zst", 1, b"t", b"r")
    await index.touch({HASH_A: 2_000_000_000, HASH_B: 1_900_000_000})
    assert [i.hash_part for i in await index.least_recently_used(10)] == [HASH_B, HASH_A]
    await index.touch({HASH_B: 2_100_000_000})
    assert [i.hash_part for i in await index.least_recently_used(10)] == [HASH_A, HASH_B]
    assert await index.baked_files() == {"aa/a.zst", "bb/b.zst"}


def backdate(index: CacheIndex, hash_parts: list[str], added_at: int) -> None:
    """Items as if found at `added_at` (another connection, as a past run would have)."""
    with contextlib.closing(sqlite3.connect(index.path)) as db, db:
        db.executemany(
            "UPDATE items SET added_at = ? WHERE hash_part = ?", [(added_at, h) for h in hash_parts]
        )


async def test_only_old_unfetched_items_found_for_misses_expire(index):
    hashes = [f"{n:02d}" + "0" * 30 for n in range(8)]
    store_item, baked_peer, upstream_item, kept_peer, *young = hashes
    await index.add_items(
        [new_item(store_item, Origin.STORE)]
        + [new_item(h, Origin.UPSTREAM if h == upstream_item else Origin.PEER) for h in hashes[1:]]
    )
    await index.mark_baked(baked_peer, "aa/a.zst", 1, b"t", b"r")
    backdate(index, hashes[:4], 1_000)
    for n, h in enumerate(reversed(young)):
        backdate(index, [h], 5_000 + n)  # the last one is the oldest
    # Being fetched (kept), fetched (baked), from the store: never forgotten for age.
    gone = await index.expire_promises(2_000, 100, keep={kept_peer})
    assert gone == [upstream_item]
    assert index.get(upstream_item) is None
    assert all(index.get(h) is not None for h in hashes if h != upstream_item)
    # Oldest first, `limit` at a time.
    assert await index.expire_promises(6_000, 2) == [kept_peer, young[-1]]
    assert await index.expire_promises(6_000, 100) == young[-2::-1]
    assert index.get(kept_peer) is None
    assert (await index.stats()).items == 2


async def test_unbaked_store_ids_are_the_store_items_served_from_the_store(index):
    store_a, store_b, peer = "a" * 32, "b" * 32, "c" * 32
    await index.add_items(
        [
            dataclasses.replace(new_item(store_a), store_id=11),
            dataclasses.replace(new_item(store_b), store_id=12),
            new_item(peer, Origin.PEER),
        ]
    )
    await index.mark_baked(store_b, "bb/b.zst", 1, b"t", b"r")
    store_c = "d" * 32
    await index.add_items([dataclasses.replace(new_item(store_c), store_id=13)])
    assert await index.unbaked_store_ids(0, 10) == [(11, store_a), (13, store_c)]
    assert await index.unbaked_store_ids(0, 1) == [(11, store_a)]  # a page at a time
    assert await index.unbaked_store_ids(11, 10) == [(13, store_c)]
    assert await index.unbaked_store_ids(13, 10) == []


async def test_remove_and_node_state(index):
    await index.add_items([new_item(HASH_A, Origin.PEER)])
    await index.remove([HASH_A])
    assert index.get(HASH_A) is None
    await index.set_state("last_store_id", 42)
    assert index.get_state("last_store_id") == 42
    await index.set_state("last_store_id", 43)
    assert index.get_state("last_store_id") == 43


async def test_unopened_index_says_so(tmp_path):
    with pytest.raises(CacheIndexError, match="not open"):
        CacheIndex(tmp_path / "x").get(HASH_A)


async def test_concurrent_writers_on_one_connection_take_turns(index):
    """Coroutines share the writer connection: transactions must not interleave."""
    hashes = [f"{n:032d}".replace("e", "f") for n in range(200)]
    await asyncio.gather(
        *(index.add_items([new_item(h)]) for h in hashes),
        *(index.set_state(f"k{n}", n) for n in range(50)),
        *(index.touch({h: 5}) for h in hashes[:50]),
    )
    assert (await index.stats()).items == 200
    assert index.get_state("k49") == 49


async def test_add_items_and_read_returns_each_item_as_held(index):
    """New items as inserted; an item known before as it was, not as offered again."""
    await index.add_items([new_item(HASH_A)])
    before = index.get(HASH_A)
    offered_again = dataclasses.replace(new_item(HASH_A), nar_size=999_999)
    held = await index.add_items_and_read([offered_again, new_item(HASH_B)])
    assert held == {HASH_A: before, HASH_B: index.get(HASH_B)}
    assert held[HASH_A].nar_size != 999_999
    assert await index.add_items_and_read([]) == {}


async def test_add_items_and_read_with_hashes_sharing_the_row_key(index):
    first = "abcdfghijklm" + "0" * 20
    second = "abcdfghijklm" + "1" * 20
    held = await index.add_items_and_read([new_item(first), new_item(second)])
    assert set(held) == {first, second}
    assert held[second] == index.get(second)


async def test_hashes_sharing_the_row_key_are_both_kept(index):
    """The rowid is the first 60 bits of the hash; two items may share it and must not clash."""
    first = "abcdfghijklm" + "0" * 20
    second = "abcdfghijklm" + "1" * 20
    assert row_key(first) == row_key(second)
    assert await index.add_items([new_item(first)]) == 1
    assert await index.add_items([new_item(second), new_item(first)]) == 1
    assert index.get(first).hash_part == first
    assert index.get(second).hash_part == second
    assert index.get("abcdfghijklm" + "2" * 20) is None
    assert index.narinfo_fields(first).hash_part == first
    assert index.narinfo_fields(second).hash_part == second
    assert index.narinfo_fields("abcdfghijklm" + "2" * 20) is None


async def test_narinfo_fields_are_the_items_columns_as_stored(index):
    await index.add_items([new_item(HASH_A)])
    fields = index.narinfo_fields(HASH_A)
    assert fields == (HASH_A, f"/gnu/store/{HASH_A}-x", 1234, "unbaked", None, None, None, None)
    await index.set_signature(HASH_A, b"StorePath: x\n", b"Signature: 1;h;x\n")
    await index.mark_baked(HASH_A, "aa/x.zst", 99, b"table", b"r" * 32)
    fields = index.narinfo_fields(HASH_A)
    item = index.get(HASH_A)
    assert fields.state == State.BAKED and (fields.nar_file, fields.file_size) == ("aa/x.zst", 99)
    assert (fields.signed_part, fields.signature) == (item.signed_part, item.signature)
    assert (fields.store_path, fields.nar_size) == (item.store_path, item.nar_size)
    assert index.narinfo_fields(HASH_B) is None


async def test_a_cancelled_writer_leaves_no_transaction_open(index):
    """A node stopping cancels writers mid-way; the next transaction must still work."""
    for step in range(6):
        task = asyncio.create_task(index.add_items([new_item(HASH_A)]))
        for _ in range(step):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await index.set_state("after", step)
        assert index.get_state("after") == step
    assert index.get(HASH_A) is not None


def write_elsewhere(index: CacheIndex, sql: str, params: tuple) -> None:
    """A write committed by another connection (another process, such as `p2pcache publish`)."""
    db = sqlite3.connect(index.path, isolation_level=None)
    try:
        db.execute(sql, params)
    finally:
        db.close()


async def test_the_shared_snapshot_lasts_one_loop_iteration_or_until_ended(index):
    await index.add_items([new_item(HASH_A)])
    await index.set_signature(HASH_A, b"StorePath: x\n", b"Signature: 1;h;x\n")
    mark = "UPDATE items SET state = ? WHERE hash_part = ?"
    assert index.servable_narinfo_in_snapshot(HASH_A) is not None
    write_elsewhere(index, mark, ("corrupt", HASH_A))
    assert index.servable_narinfo_in_snapshot(HASH_A) is not None  # same iteration
    assert index.narinfo_fields(HASH_A).state == "corrupt"  # the other reader is fresh
    index.end_snapshot()
    assert index.servable_narinfo_in_snapshot(HASH_A) is None
    write_elsewhere(index, mark, ("unbaked", HASH_A))
    await asyncio.sleep(0)  # the iteration ends, and the snapshot with it
    assert index.servable_narinfo_in_snapshot(HASH_A) is not None
    await index.add_items([new_item(HASH_B)])  # our own writer, across iterations too
    await index.set_signature(HASH_B, b"StorePath: y\n", b"Signature: 1;h;y\n")
    assert index.servable_narinfo_in_snapshot(HASH_B).hash_part == HASH_B


async def test_a_servable_narinfo_is_a_signed_item_that_is_not_corrupt(index):
    first = "abcdfghijklm" + "0" * 20
    second = "abcdfghijklm" + "1" * 20  # same row key: an ordinary rowid
    await index.add_items([new_item(first), new_item(second), new_item(HASH_A)])
    assert index.servable_narinfo_in_snapshot(first) is None  # not signed yet
    for h in (first, second, HASH_A):
        await index.set_signature(h, b"StorePath: %s\n" % h.encode(), b"Signature: 1;h;s\n")
    index.end_snapshot()
    servable = index.servable_narinfo_in_snapshot(second)
    assert servable == (
        second,
        b"StorePath: %s\nSignature: 1;h;s\n" % second.encode(),
        f"{second}-x",
        1234,
        None,
    )
    await index.mark_baked(first, "aa/x.zst", 99, b"table", b"r" * 32)
    await index.mark_corrupt(HASH_A)
    index.end_snapshot()
    assert index.servable_narinfo_in_snapshot(first).zstd_size == 99
    assert index.servable_narinfo_in_snapshot(second).zstd_size is None
    assert index.servable_narinfo_in_snapshot(HASH_A) is None
    assert index.servable_narinfo_in_snapshot(HASH_B) is None  # unknown


# -- the totals that `stats` reads -----------------------------------------------------------

# Six hashes, two of them sharing their first 60 bits (one of those gets an ordinary rowid).
TOTALS_HASHES = [c * 31 + "0" for c in "abcdf"] + ["a" * 12 + "b" * 19 + "0"]

_RECOUNT = (
    "SELECT count(*), count(nar_file), coalesce(sum(state = 'corrupt'), 0),"
    " coalesce(sum(file_size) FILTER (WHERE nar_file IS NOT NULL), 0) FROM items"
)

_operation = st.tuples(
    st.sampled_from(["add", "bake", "unbake", "corrupt", "remove", "touch"]),
    st.sampled_from(TOTALS_HASHES),
    st.integers(min_value=0, max_value=10**12),
)


async def _apply(index: CacheIndex, operation: tuple[str, str, int]) -> None:
    name, hash_part, size = operation
    if name == "add":
        await index.add_items([new_item(hash_part)])
    elif name == "bake":
        await index.mark_baked(hash_part, f"{hash_part[:2]}/{hash_part}.zst", size, b"t", b"r")
    elif name == "unbake":
        await index.mark_unbaked(hash_part)
    elif name == "corrupt":
        await index.mark_corrupt(hash_part)
    elif name == "remove":
        await index.remove([hash_part])
    else:
        await index.touch({hash_part: size})


@settings(max_examples=40, deadline=None)
@given(st.lists(_operation, max_size=25))
def test_the_totals_always_equal_a_full_count(operations: list[tuple[str, str, int]]) -> None:
    """Whatever the writes, the trigger-kept totals are what counting every row gives."""
    assert row_key(TOTALS_HASHES[0]) == row_key(TOTALS_HASHES[-1])

    async def run(path: Path) -> None:
        async with CacheIndex(path) as index:
            for operation in operations:
                await _apply(index, operation)
                stats = await index.stats()
                counted = sqlite3.connect(path).execute(_RECOUNT).fetchone()
                assert (stats.items, stats.baked, stats.corrupt, stats.cached_bytes) == counted

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(Path(tmp) / "index.sqlite"))


async def test_an_index_of_the_first_schema_gets_its_totals_counted_once(tmp_path):
    """Migration 2 counts what an existing index holds; the triggers take over from there."""
    path = tmp_path / "v1.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, dated TEXT NOT NULL,"
        " description TEXT NOT NULL, applied_at INTEGER NOT NULL);" + MIGRATIONS[0][3]
    )
    db.execute("INSERT INTO schema_migrations VALUES (1, ?, ?, 0)", MIGRATIONS[0][1:3])
    for n, (hash_part, state, nar_file, size) in enumerate(
        [
            (HASH_A, "baked", "aa/a.zst", 100),
            (HASH_B, "unbaked", None, None),
            ("c" * 31 + "0", "corrupt", None, None),
            ("d" * 31 + "0", "baked", "dd/d.zst", 23),
        ]
    ):
        db.execute(
            "INSERT INTO items (key, hash_part, store_path, nar_hash, nar_size, refs, origin,"
            " state, nar_file, file_size, added_at, last_access)"
            " VALUES (?, ?, ?, 'sha256:x', 1, '', 'store', ?, ?, ?, 0, 0)",
            (n, hash_part, f"/gnu/store/{hash_part}-x", state, nar_file, size),
        )
    db.commit()
    db.close()
    async with CacheIndex(path) as index:
        assert index.schema_version() == max(m[0] for m in MIGRATIONS)
        assert await index.stats() == IndexStats(items=4, baked=2, corrupt=1, cached_bytes=123)
        await index.remove([HASH_A])
        assert await index.stats() == IndexStats(items=3, baked=1, corrupt=1, cached_bytes=23)


def test_migration_scripts_split_into_whole_statements():
    script = (
        "CREATE TABLE t (x);\n"
        "CREATE TRIGGER g AFTER INSERT ON t BEGIN UPDATE t SET x = 1; UPDATE t SET x = 2; END;\n"
        "  ;\n"
    )
    assert sql_statements(script) == [
        "CREATE TABLE t (x);",
        "CREATE TRIGGER g AFTER INSERT ON t BEGIN UPDATE t SET x = 1; UPDATE t SET x = 2; END;",
    ]
    with pytest.raises(ValueError, match="incomplete"):
        sql_statements("CREATE TRIGGER g AFTER INSERT ON t BEGIN UPDATE t SET x = 1;")
    for _version, _dated, _description, sql in MIGRATIONS:
        assert all(sqlite3.complete_statement(s) for s in sql_statements(sql))


async def test_narinfo_changes_are_logged_by_trigger_and_pruned(index):
    """Every change to what a narinfo shows is logged (whoever writes); access times are not."""
    await index.add_items([new_item(HASH_A), new_item(HASH_B)])
    await index.set_signature(HASH_A, b"StorePath: x\n", b"Signature: 1;h;x\n")
    await index.touch({HASH_A: 10**9, HASH_B: 10**9})
    await index.mark_baked(HASH_B, "bb/b.zst", 9, b"t", b"r")
    db = sqlite3.connect(index.path, isolation_level=None)
    db.execute("UPDATE items SET state = 'corrupt' WHERE hash_part = ?", (HASH_A,))
    await index.remove([HASH_B])
    log = "SELECT seq, hash_part FROM narinfo_changes ORDER BY seq"
    rows = db.execute(log).fetchall()
    assert [h for _, h in rows] == [HASH_A, HASH_B, HASH_A, HASH_B]
    await index.prune_narinfo_changes(rows[1][0])
    assert db.execute(log).fetchall() == rows[2:]
    await index.prune_narinfo_changes(rows[-1][0])
    await index.mark_unbaked(HASH_A)
    (seq,) = db.execute("SELECT seq FROM narinfo_changes").fetchone()
    assert seq > rows[-1][0]  # never reused once the log was emptied
