"""Group commit of index additions: a real SQLite index, items added by concurrent callers."""

import asyncio
import dataclasses

import pytest

from p2pcache.cache.grouped_adds import GroupedAdds
from p2pcache.cache.index import CacheIndex, NewItem, Origin


def new_item(n: int) -> NewItem:
    hash_part = f"{n:032d}".replace("0", "a")
    return NewItem(
        hash_part=hash_part,
        store_path=f"/gnu/store/{hash_part}-item-{n}",
        nar_hash="sha256:" + "0" * 52,
        nar_size=1000 + n,
        references=(),
        deriver=None,
        origin=Origin.PEER,
    )


@pytest.fixture
async def index(tmp_path):
    async with CacheIndex(tmp_path / "index.sqlite") as idx:
        yield idx


async def test_a_lone_item_is_written_at_once_in_its_own_transaction(index):
    adds = GroupedAdds(index.add_items_and_read)
    item = await adds.add(new_item(1))
    assert item is not None and item.nar_size == 1001
    assert item == index.get(new_item(1).hash_part)
    assert adds.transactions == 1


async def test_items_arriving_together_share_a_transaction(index):
    adds = GroupedAdds(index.add_items_and_read)
    items = [new_item(n) for n in range(200)]
    held = await asyncio.gather(*(adds.add(i) for i in items))
    assert adds.transactions == 1
    for i, returned in zip(items, held, strict=True):
        found = index.get(i.hash_part)
        assert found is not None and found.store_path == i.store_path
        assert returned == found


async def test_groups_are_bounded(index):
    adds = GroupedAdds(index.add_items_and_read, max_group=10)
    await asyncio.gather(*(adds.add(new_item(n)) for n in range(41)))
    assert adds.transactions == 5
    assert (await index.stats()).items == 41


async def test_an_item_added_after_the_writer_stopped_starts_a_new_one(index):
    adds = GroupedAdds(index.add_items_and_read)
    await asyncio.gather(*(adds.add(new_item(n)) for n in range(5)))
    await adds.add(new_item(99))
    assert adds.transactions == 2
    assert index.get(new_item(99).hash_part) is not None


async def test_items_arriving_during_a_write_share_the_next_transaction(index):
    adds = GroupedAdds(index.add_items_and_read)
    first = asyncio.create_task(adds.add(new_item(0)))
    await asyncio.sleep(0)  # the writer has started on item 0, alone
    later = [asyncio.create_task(adds.add(new_item(n))) for n in range(1, 30)]
    await asyncio.gather(first, *later)
    assert adds.transactions == 2
    assert (await index.stats()).items == 30


async def test_a_failed_transaction_fails_its_own_callers_only(index):
    adds = GroupedAdds(index.add_items_and_read)
    first = asyncio.create_task(adds.add(new_item(0)))
    await asyncio.sleep(0)  # the writer is busy with item 0; the next three wait together
    broken = dataclasses.replace(new_item(2), nar_size=2**64)  # SQLite cannot store it
    together = [asyncio.create_task(adds.add(i)) for i in (new_item(1), broken, new_item(3))]
    await first
    results = await asyncio.gather(*together, return_exceptions=True)
    assert all(isinstance(r, OverflowError) for r in results), results
    # The whole transaction was rolled back; the writer goes on with later items.
    assert index.get(new_item(1).hash_part) is None
    await adds.add(new_item(4))
    assert index.get(new_item(4).hash_part) is not None
    assert index.get(new_item(0).hash_part) is not None


async def test_a_cancelled_caller_does_not_stop_the_write(index):
    adds = GroupedAdds(index.add_items_and_read)
    waiting = asyncio.create_task(adds.add(new_item(7)))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await adds.add(new_item(8))  # written after item 7's transaction
    assert index.get(new_item(7).hash_part) is not None
    assert index.get(new_item(8).hash_part) is not None
