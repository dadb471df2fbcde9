"""Last-access times for LRU eviction, gathered in memory and written to the index in batches.

Writing the index on every hit would cost a thread hop and a transaction per request; instead
hits are noted in a dict and flushed periodically, or as soon as the dict holds `limit`
entries, so that memory stays bounded however many distinct items are requested (a node with
a million items under random load would otherwise collect them all between two flushes).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class AccessLog:
    def __init__(self, limit: int = 20_000, on_full: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.on_full = on_full
        self._times: dict[str, int] = {}

    def record(self, hash_part: str) -> None:
        times = self._times
        times[hash_part] = int(time.time())
        if len(times) >= self.limit and self.on_full is not None:
            self.on_full()

    def drain(self) -> dict[str, int]:
        """Everything recorded since the last drain (the caller writes it to the index)."""
        times, self._times = self._times, {}
        return times

    def __len__(self) -> int:
        return len(self._times)
