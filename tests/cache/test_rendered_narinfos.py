"""Rendered narinfos: built from the index, never staler than the index's own snapshot, whoever
writes the index, and bounded in table load and file garbage."""

import asyncio
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcache.cache import rendered_narinfos
from p2pcache.cache.index import CacheIndex, ServableNarinfo, State, row_key
from p2pcache.cache.rendered_narinfos import RenderedNarinfos, slot_count
from tests.cache.test_index import new_item

HASHES = [c * 31 + "0" for c in "abcdf"] + ["a" * 12 + "b" * 19 + "0"]  # two share a row key


def render(item: ServableNarinfo) -> bytes:
    return b"answer %s %s %d %r" % (
        item.signed,
        item.basename.encode(),
        item.nar_size,
        item.zstd_size,
    )


async def add_signed(index: CacheIndex, hash_part: str) -> None:
    await index.add_items([new_item(hash_part)])
    await index.set_signature(hash_part, b"StorePath: %s\n" % hash_part.encode(), b"Sig: 1\n")


def expected(index: CacheIndex, hash_part: str) -> bytes | None:
    """What the endpoint renders from the index now, read the ordinary way (the snapshot's
    servable lookup leaves an item behind another of the same row key to that way)."""
    item = index.get(hash_part)
    if item is None or item.state is State.CORRUPT or item.signature is None:
        return None
    return render(
        ServableNarinfo(
            hash_part,
            item.signed_part + item.signature,
            item.basename,
            item.nar_size,
            item.file_size if item.is_baked else None,
        )
    )


def answer(rendered: RenderedNarinfos, index: CacheIndex, hash_part: str) -> bytes | None:
    """As the endpoint answers: from the rendered file, else from the index, then kept."""
    data = rendered.get(hash_part)
    if data is None:
        found = index.servable_narinfo_in_snapshot(hash_part)
        if found is None:
            return None
        data = render(found)
        rendered.add(hash_part, data)
    return data


async def built(rendered: RenderedNarinfos) -> None:
    """Wait for the build in progress (and any it asked for) to be in place."""
    for _ in range(500):
        if rendered.ready and rendered._build is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the rendered narinfos were never built")


@pytest.fixture
async def index(tmp_path):
    async with CacheIndex(tmp_path / "index.sqlite") as idx:
        yield idx


@pytest.fixture
async def rendered(index, tmp_path):
    r = RenderedNarinfos(tmp_path / "rendered", index.path, render)
    yield r
    await r.close()


async def test_a_build_holds_every_servable_item_and_nothing_else(index, rendered):
    for h in HASHES[:4]:
        await add_signed(index, h)
    await index.add_items([new_item(HASHES[4])])  # not signed: not servable
    await index.mark_corrupt(HASHES[3])
    await index.mark_baked(HASHES[0], "aa/a.zst", 99, b"t", b"r")
    rendered.start()
    assert rendered.get(HASHES[0]) is None  # not built yet: the caller asks the index
    await built(rendered)
    assert rendered.items == 3
    for h in HASHES[:3]:
        assert rendered.get(h) == expected(index, h) is not None
    for h in HASHES[3:]:
        assert rendered.get(h) is None
    assert b"99" in rendered.get(HASHES[0])


async def test_items_sharing_a_row_key_are_told_apart_by_their_hash(index, rendered):
    first, second = HASHES[0], HASHES[5]
    assert row_key(first) == row_key(second)
    await add_signed(index, first)
    rendered.start()
    await built(rendered)
    assert rendered.get(second) is None  # the probe meets `first`, whose hash differs
    await add_signed(index, second)
    assert answer(rendered, index, second) == expected(index, second)
    assert rendered.get(second) == expected(index, second)
    assert rendered.get(first) == expected(index, first)
    rendered.drop(first)
    assert rendered.get(first) is None
    assert rendered.get(second) == expected(index, second)  # found past the deleted slot


async def test_a_change_by_this_node_is_seen_at_the_next_iteration(index, rendered):
    await add_signed(index, HASHES[0])
    rendered.start()
    await built(rendered)
    before = rendered.get(HASHES[0])
    await index.mark_baked(HASHES[0], "aa/a.zst", 77, b"t", b"r")
    await asyncio.sleep(0)
    assert rendered.get(HASHES[0]) is None
    assert answer(rendered, index, HASHES[0]) == expected(index, HASHES[0]) != before
    await index.touch({HASHES[0]: 10**9})  # an access time is not a narinfo change
    await asyncio.sleep(0)
    assert rendered.get(HASHES[0]) == expected(index, HASHES[0])


async def test_a_change_by_another_process_is_seen_at_the_next_iteration(index, rendered):
    """`p2pcache cache gc` may evict while the node serves: the triggers tell the node."""
    for h in HASHES[:2]:
        await add_signed(index, h)
    rendered.start()
    await built(rendered)
    assert rendered.get(HASHES[0]) is not None
    script = (
        "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]);"
        "db.execute('DELETE FROM items WHERE hash_part = ?', (sys.argv[2],));"
        "db.execute('UPDATE items SET state = \"corrupt\" WHERE hash_part = ?', (sys.argv[3],));"
        "db.commit()"
    )
    subprocess.run([sys.executable, "-c", script, str(index.path), *HASHES[:2]], check=True)
    await asyncio.sleep(0)
    assert rendered.get(HASHES[0]) is None
    assert rendered.get(HASHES[1]) is None
    assert rendered.changes_seen >= 2


async def test_changes_made_during_a_build_are_applied_to_what_it_built(index, rendered):
    for h in HASHES[:3]:
        await add_signed(index, h)
    rendered.start()
    await index.mark_baked(HASHES[1], "bb/b.zst", 55, b"t", b"r")  # while it may be building
    await built(rendered)
    await asyncio.sleep(0)
    for h in HASHES[:3]:
        assert answer(rendered, index, h) == expected(index, h)


async def test_a_full_table_is_built_again_bigger(index, rendered, monkeypatch):
    sizes = iter([4])  # the first build gets a table of 4 slots, the next ones their due
    monkeypatch.setattr(
        rendered_narinfos, "slot_count", lambda items: next(sizes, 0) or slot_count(items)
    )
    rendered.start()
    await built(rendered)
    hashes = [f"{n:02d}" + "0" * 30 for n in range(10)]
    for h in hashes:
        await add_signed(index, h)
        answer(rendered, index, h)
    assert rendered._build is not None or rendered.builds > 1  # 3 of 4 slots: build asked
    await built(rendered)
    assert rendered.builds >= 2
    await asyncio.sleep(0)
    # Items added while the build ran are not in it: answered from the index, then kept.
    assert all(answer(rendered, index, h) == expected(index, h) for h in hashes)
    assert all(rendered.get(h) == expected(index, h) for h in hashes)
    assert len(rendered._table.tags) == slot_count(10) == 1024


async def test_a_file_of_mostly_replaced_answers_is_written_anew(index, rendered, monkeypatch):
    await add_signed(index, HASHES[0])
    rendered.start()
    await built(rendered)
    monkeypatch.setattr(rendered_narinfos, "_GARBAGE_FLOOR", 0)
    for size in range(1, 6):
        await index.mark_baked(HASHES[0], "aa/a.zst", size, b"t", b"r")
        await asyncio.sleep(0)
        answer(rendered, index, HASHES[0])
    await built(rendered)
    assert rendered.builds >= 2
    assert rendered.file_bytes <= 2 * (32 + len(expected(index, HASHES[0])))
    await asyncio.sleep(0)
    # The last build's snapshot may predate the last change (its thread races the loop): then
    # the log drops the item at this lookup and it is answered from the index, then kept.
    assert answer(rendered, index, HASHES[0]) == expected(index, HASHES[0])
    assert rendered.get(HASHES[0]) == expected(index, HASHES[0])


async def test_an_answer_too_long_for_a_slot_is_left_to_the_index(index, rendered):
    rendered.start()
    await built(rendered)
    rendered.add(HASHES[0], b"x" * 70_000)
    assert rendered.get(HASHES[0]) is None
    assert rendered.items == 0


async def test_a_build_that_cannot_write_leaves_lookups_to_the_index(index, tmp_path, caplog):
    await add_signed(index, HASHES[0])
    rendered = RenderedNarinfos(tmp_path / "missing-dir" / "rendered", index.path, render)
    rendered.start()
    for _ in range(100):
        if rendered._build is None:
            break
        await asyncio.sleep(0.01)
    assert not rendered.ready
    assert rendered.get(HASHES[0]) is None
    assert "could not build the rendered narinfos" in caplog.text
    await rendered.close()


async def test_the_file_is_removed_on_close_and_a_crashed_builds_file_replaced(index, tmp_path):
    path = tmp_path / "rendered"
    leftover = tmp_path / "rendered.new"
    leftover.write_bytes(b"half a build from a crash")
    path.write_bytes(b"the file of a crashed node")
    await add_signed(index, HASHES[0])
    rendered = RenderedNarinfos(path, index.path, render)
    rendered.start()
    await built(rendered)
    assert not leftover.exists()
    assert path.read_bytes() == HASHES[0].encode() + expected(index, HASHES[0])
    await rendered.close()
    assert not path.exists()


_operation = st.tuples(
    st.sampled_from(["sign", "bake", "unbake", "corrupt", "remove", "touch", "ask", "outside"]),
    st.sampled_from(HASHES),
    st.integers(min_value=1, max_value=10**6),
)


@settings(max_examples=30, deadline=None)
@given(st.lists(_operation, max_size=30))
def test_an_answer_is_never_staler_than_the_index(operations) -> None:
    """Whatever is written, by this node or another process's connection, every answer from
    the rendered narinfos, from the next iteration on, is what the index renders now."""

    async def run(tmp: Path) -> None:
        async with CacheIndex(tmp / "index.sqlite") as index:
            rendered = RenderedNarinfos(tmp / "rendered", index.path, render)
            outside = sqlite3.connect(index.path, isolation_level=None)
            try:
                rendered.start()
                await built(rendered)
                for name, h, size in operations:
                    if name == "sign":
                        await add_signed(index, h)
                    elif name == "bake":
                        await index.mark_baked(h, "aa/a.zst", size, b"t", b"r")
                    elif name == "unbake":
                        await index.mark_unbaked(h)
                    elif name == "corrupt":
                        await index.mark_corrupt(h)
                    elif name == "remove":
                        await index.remove([h])
                    elif name == "touch":
                        await index.touch({h: size})
                    elif name == "outside":
                        outside.execute(
                            "UPDATE items SET file_size = ? WHERE hash_part = ?", (size, h)
                        )
                    else:
                        answer(rendered, index, h)
                    await asyncio.sleep(0)
                    for each in HASHES:
                        got = rendered.get(each)
                        assert got is None or got == expected(index, each), (name, h)
            finally:
                outside.close()
                await rendered.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(Path(tmp)))


async def test_too_many_changes_at_once_make_a_new_build(index, rendered, monkeypatch):
    """An idle node that baked a lot does not drop the changes one by one in an iteration."""
    monkeypatch.setattr(rendered_narinfos, "MAX_CHANGES_APPLIED", 2)
    for h in HASHES[:4]:
        await add_signed(index, h)
    rendered.start()
    await built(rendered)
    for h in HASHES[:3]:
        await index.mark_baked(h, "aa/a.zst", 5, b"t", b"r")
    rendered.apply_changes()  # as the node's housekeeping does
    assert not rendered.ready  # dropped whole, nothing stale answered meanwhile
    assert rendered.get(HASHES[0]) is None
    await built(rendered)
    assert rendered.builds == 2
    await asyncio.sleep(0)
    for h in HASHES[:4]:
        assert rendered.get(h) == expected(index, h) is not None
    assert rendered.changes_seen == 0 or rendered.changes_seen >= 3


async def test_the_table_stops_growing_at_its_largest_size(index, rendered, monkeypatch):
    """An index bigger than the largest table keeps the rest in SQLite, without building
    again and again."""
    monkeypatch.setattr(rendered_narinfos, "MAX_SLOTS", 1024)
    rendered.start()
    await built(rendered)
    hashes = [f"{n:04d}" + "0" * 28 for n in range(900)]
    for h in hashes:
        rendered.add(h, b"answer " + h.encode())
    assert rendered._build is None and rendered.builds == 1
    assert rendered.items == int(rendered_narinfos.MAX_LOAD * 1024)
    assert rendered.get(hashes[0]) == b"answer " + hashes[0].encode()
    assert rendered.get(hashes[-1]) is None  # answered from the index
    assert slot_count(10**9) == 1024


async def test_other_caches_of_answers_hear_of_every_change(index, tmp_path, monkeypatch):
    """The endpoint's hot narinfos learn of a change by any process through on_change; a
    flood of changes tells them to forget everything."""
    heard: list[str | None] = []
    await add_signed(index, HASHES[0])
    rendered = RenderedNarinfos(tmp_path / "r", index.path, render, on_change=heard.append)
    outside = sqlite3.connect(index.path, isolation_level=None)
    try:
        rendered.start()
        outside.execute("UPDATE items SET file_size = 5 WHERE hash_part = ?", (HASHES[0],))
        await asyncio.sleep(0)
        rendered.get(HASHES[1])  # the first lookup of an iteration reads the log
        assert heard == [HASHES[0]]  # heard even while the first build may be running
        await built(rendered)
        monkeypatch.setattr(rendered_narinfos, "MAX_CHANGES_APPLIED", 1)
        for size in (6, 7):
            outside.execute("UPDATE items SET file_size = ? WHERE hash_part = ?", (size, HASHES[0]))
        await asyncio.sleep(0)
        rendered.get(HASHES[1])
        assert heard[-1] is None
        await built(rendered)
        await asyncio.sleep(0)
        assert answer(rendered, index, HASHES[0]) == expected(index, HASHES[0])
    finally:
        outside.close()
        await rendered.close()
