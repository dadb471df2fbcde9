"""Narinfo requests to the same peer, made at the same moment, sent as one narinfo list.

In a Guix batch of misses, hundreds of narinfos are wanted from the same few providers within
milliseconds; one HTTP request each is most of the CPU both nodes spend on them besides the
signature checks. Here a request goes out on the next turn of the event loop with every
narinfo asked of that peer by then (up to MAX_NARINFOS_PER_REQUEST per list); while
`max_in_flight` requests to a peer are running, further ones wait and go out together when
one ends. A lone request goes out at once, as the plain `GET /p2p/v1/narinfo/<hash>` every
node answers. A peer that does not answer lists (an older node) is asked one item at a time.

Each caller gets its own narinfo, None (the peer does not hold it), or the PeerError of the
request that carried it (a malformed list counts against the peer for every item in it).
"""

from __future__ import annotations

import asyncio

from p2pcache.net.narinfo_list import MAX_NARINFOS_PER_REQUEST
from p2pcache.net.peer_client import PeerClient, PeerError

_Waiting = dict[str, list[asyncio.Future[bytes | None]]]
_Answer = bytes | None | PeerError


class NarinfoBatcher:
    """`max_in_flight`: with round trips of 50-100 ms, a batch of 1000 narinfos is 16 lists,
    and 4 at a time made it wait for 4 round trips (measured in loadtest/bench_miss_batch.py
    with --what-if-rtt-ms); 8 is half the connections the node's HTTP client opens to one
    peer, leaving the rest for chunk transfers."""

    def __init__(
        self, client: PeerClient, *, max_in_flight: int = 8, max_peers_without_lists: int = 4096
    ) -> None:
        self.client = client
        self.max_in_flight = max_in_flight
        self._waiting: dict[str, _Waiting] = {}
        self._scheduled: set[str] = set()
        self._in_flight: dict[str, int] = {}
        self._without_lists: set[str] = set()
        self._max_without_lists = max_peers_without_lists
        self._tasks: set[asyncio.Task] = set()
        self.requests = 0
        """HTTP requests sent so far (for tests and benchmarks)."""

    async def narinfo(self, base: str, hash_part: str) -> bytes | None:
        """The narinfo `base` offers for `hash_part` (None when it does not hold it)."""
        return await self.request(base, hash_part)

    def request(self, base: str, hash_part: str) -> asyncio.Future[bytes | None]:
        """`narinfo` as a future, for a caller that waits on several things at once without
        a task per request. A list whose callers have all cancelled theirs is not sent."""
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(base, {}).setdefault(hash_part, []).append(future)
        self._schedule(base)
        return future

    def _schedule(self, base: str) -> None:
        if base in self._scheduled or self._in_flight.get(base, 0) >= self.max_in_flight:
            return  # a send is due, or one of the running requests will send when it ends
        self._scheduled.add(base)
        asyncio.get_running_loop().call_soon(self._send, base)

    def _send(self, base: str) -> None:
        self._scheduled.discard(base)
        waiting = self._waiting.get(base)
        while waiting and self._in_flight.get(base, 0) < self.max_in_flight:
            hash_parts = list(waiting)[:MAX_NARINFOS_PER_REQUEST]
            group = {h: waiting.pop(h) for h in hash_parts}
            self._in_flight[base] = self._in_flight.get(base, 0) + 1
            task = asyncio.create_task(self._fetch(base, group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not waiting:
            self._waiting.pop(base, None)

    async def _fetch(self, base: str, group: _Waiting) -> None:
        try:
            if all(f.done() for futures in group.values() for f in futures):
                return  # every caller gave up (answered by another source, or timed out)
            answers = await self._ask(base, list(group))
            for hash_part, futures in group.items():
                answer = answers[hash_part]
                for future in futures:
                    if future.done():
                        continue
                    if isinstance(answer, PeerError):
                        future.set_exception(answer)
                        future.exception()  # a caller that gave up leaves no warning
                    else:
                        future.set_result(answer)
        finally:
            self._in_flight[base] -= 1
            if not self._in_flight[base]:
                del self._in_flight[base]
            if base in self._waiting:
                self._schedule(base)

    async def _ask(self, base: str, hash_parts: list[str]) -> dict[str, _Answer]:
        if len(hash_parts) > 1 and base not in self._without_lists:
            self.requests += 1
            try:
                found = await self.client.narinfos(base, hash_parts)
            except PeerError as e:
                return dict.fromkeys(hash_parts, e)
            if found is not None:
                return dict(found)
            if len(self._without_lists) >= self._max_without_lists:
                self._without_lists.clear()
            self._without_lists.add(base)
        self.requests += len(hash_parts)
        answers = await asyncio.gather(*(self._one(base, h) for h in hash_parts))
        return dict(zip(hash_parts, answers, strict=True))

    async def _one(self, base: str, hash_part: str) -> _Answer:
        try:
            return await self.client.narinfo(base, hash_part)
        except PeerError as e:
            return e
