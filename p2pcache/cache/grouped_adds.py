"""Group commit for items added one at a time: those that arrive together share a transaction.

The miss path records every accepted item in the cache index as it is accepted. In a Guix
batch hundreds are accepted within milliseconds, and one `CacheIndex.add_items` per item
costs a write transaction each (BEGIN, INSERT, COMMIT: three round trips to aiosqlite's
thread, each a thread wake-up and a wake-up of the event loop), taken in turn under the
index's write lock. Here a write starts as soon as an item is handed over, so a lone miss
waits no longer than before; it takes every item handed over by then (up to `max_group`),
and the items that arrive while it runs are written together by the next one, and so on.
Each caller returns once its own item is committed, with the item as the index then holds
it (read in the same transaction), or gets the error of the transaction that carried it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from p2pcache.cache.index import IndexedItem, NewItem

AddItems = Callable[[Iterable[NewItem]], Awaitable[dict[str, IndexedItem]]]
"""`CacheIndex.add_items_and_read`: inserts the items not yet known, in one transaction, and
returns each as the index holds it."""


class GroupedAdds:
    def __init__(self, add_items: AddItems, *, max_group: int = 500) -> None:
        self._add_items = add_items
        self.max_group = max_group
        self._waiting: list[tuple[NewItem, asyncio.Future[IndexedItem | None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.transactions = 0
        """Transactions written so far (for tests and benchmarks)."""

    async def add(self, item: NewItem) -> IndexedItem | None:
        """Add `item` to the index; returns, when the transaction holding it is committed,
        the item as the index holds it (read in that transaction, so never None from
        `CacheIndex.add_items_and_read`).

        The write goes on if the caller is cancelled meanwhile (the item was accepted; other
        callers share the transaction): only the caller's own future is cancelled, which the
        writer skips.
        """
        future: asyncio.Future[IndexedItem | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all())
        return await future

    async def _write_all(self) -> None:
        try:
            while self._waiting:
                group = self._waiting[: self.max_group]
                del self._waiting[: self.max_group]
                await self._write_group(group)
        finally:
            # Only when this task itself is cancelled (the event loop closing) can items be
            # left: their callers are cancelled rather than left waiting forever.
            for _, future in self._waiting:
                future.cancel()
            self._waiting.clear()
            self._writer = None

    async def _write_group(
        self, group: list[tuple[NewItem, asyncio.Future[IndexedItem | None]]]
    ) -> None:
        """One transaction; its callers get its outcome (an error fails this group only)."""
        try:
            held = await self._add_items([item for item, _ in group])
        except BaseException as e:
            for _, future in group:
                _fail(future, e)
            if not isinstance(e, Exception):
                raise
        else:
            for item, future in group:
                if not future.done():
                    future.set_result(held.get(item.hash_part))
        finally:
            self.transactions += 1


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if future.done():
        return
    if isinstance(error, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(error)
        future.exception()  # retrieved: a cancelled caller leaves no "never retrieved" warning
