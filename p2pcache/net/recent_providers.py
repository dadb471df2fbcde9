"""Peers that recently provided accepted narinfos: asked first for the next misses.

A Guix batch asks for a closure, hundreds of items that usually sit on the same few seeders.
A DHT walk per item is the largest part of the asking node's CPU per miss and costs every node
on the way a FIND_VALUE, while the peer that held the previous items most likely holds the
next ones. So, like Bitswap asking the peers it is connected to before it searches the DHT, a
miss is first offered to the peers whose narinfos the node accepted in the last minutes, and
the DHT walk starts only when none of them holds the item, they fail, or they go quiet for
longer than they usually take to answer (the hedge). What they send is judged exactly like a
narinfo found through the DHT: this changes where the node asks first, not what it accepts.

A peer that mostly answers "not held" stops being asked (its hit rate falls under
`min_hit_rate`) until it provides an accepted narinfo again; one that fails is dropped, and
one that provided nothing for `ttl` is forgotten. This class only keeps the bookkeeping; the
asking is in net/providers.peer_narinfo_source.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

SMOOTHING = 0.2
"""Weight of the newest observation in the hit rate and answer-time averages."""


@dataclass
class RecentPeer:
    last_accepted: float
    """When a narinfo from this peer was last accepted (membership runs `ttl` from here)."""
    last_answer: float
    """When this peer last answered any ask (progress: it is not stuck)."""
    hit_rate: float = 1.0
    """Smoothed share of asks it answered with a narinfo."""
    answer_seconds: float | None = None
    """Smoothed time from an ask to its answer (queueing behind other asks included)."""


class RecentProviders:
    def __init__(
        self,
        *,
        max_peers: int = 8,
        ttl: float = 600.0,
        min_hit_rate: float = 0.25,
        hedge_floor: float = 0.5,
        hedge_factor: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_peers = max_peers
        self.ttl = ttl
        self.min_hit_rate = min_hit_rate
        self.hedge_floor = hedge_floor
        self.hedge_factor = hedge_factor
        self.clock = clock
        self.peers: dict[str, RecentPeer] = {}
        self._added: asyncio.Future[None] | None = None

    def next_added(self) -> asyncio.Future[None]:
        """Done when the next peer is added. A fresh node's first batch starts with nobody to
        ask and searches the DHT for every miss, at most MAX_CONCURRENT_SEARCHES at a time;
        the misses still waiting can ask the first peer that provided instead."""
        if self._added is None or self._added.done():
            self._added = asyncio.get_running_loop().create_future()
        return self._added

    def accepted(self, peer: str) -> None:
        """A narinfo from `peer` was accepted: keep asking it first (and again, if it had
        fallen under the hit rate)."""
        now = self.clock()
        known = self.peers.get(peer)
        if known is None:
            self._forget_expired(now)
            if len(self.peers) >= self.max_peers:
                oldest = min(self.peers, key=lambda p: self.peers[p].last_accepted)
                del self.peers[oldest]
            self.peers[peer] = RecentPeer(last_accepted=now, last_answer=now)
            if self._added is not None and not self._added.done():
                self._added.set_result(None)
            return
        known.last_accepted = now
        known.hit_rate = max(known.hit_rate, self.min_hit_rate * 2)

    def to_ask(self, limit: int, usable: Callable[[list[str]], list[str]]) -> list[str]:
        """Up to `limit` peers worth asking first, by hit rate; `usable` filters and orders
        them further (the peer ranking: banned peers are left out)."""
        if limit <= 0 or not self.peers:
            return []
        self._forget_expired(self.clock())
        worth = [p for p, s in self.peers.items() if s.hit_rate >= self.min_hit_rate]
        worth.sort(key=lambda p: -self.peers[p].hit_rate)
        return usable(worth)[:limit]

    def answered(self, peer: str, held: bool, seconds: float) -> None:
        """`peer` answered an ask, with a narinfo (`held`) or "not held", after `seconds`."""
        state = self.peers.get(peer)
        if state is None:
            return
        state.last_answer = self.clock()
        state.hit_rate = (1 - SMOOTHING) * state.hit_rate + SMOOTHING * (1.0 if held else 0.0)
        state.answer_seconds = (
            seconds
            if state.answer_seconds is None
            else (1 - SMOOTHING) * state.answer_seconds + SMOOTHING * seconds
        )

    def failed(self, peer: str) -> None:
        """`peer` could not be asked (down, misbehaving): the DHT finds it again if it is back."""
        self.peers.pop(peer, None)

    def hedge_at(self, peer: str, asked_at: float) -> float:
        """When an ask made at `asked_at` has waited too long and the DHT walk should start:
        `hedge_factor` times the peer's usual answer time (at least `hedge_floor`) after the ask
        or after the peer's latest answer, whichever is later. A peer answering other asks of
        the batch is making progress; its queued asks are not stuck. The floor covers a peer
        not yet timed (found through the DHT, then asked first for the next batch): half a
        second is more than most round trips, so its first batch does not hedge at once."""
        state = self.peers.get(peer)
        if state is None:
            return asked_at
        usual = state.answer_seconds or 0.0
        return max(asked_at, state.last_answer) + max(self.hedge_floor, self.hedge_factor * usual)

    def _forget_expired(self, now: float) -> None:
        expired = [p for p, s in self.peers.items() if now - s.last_accepted > self.ttl]
        for peer in expired:
            del self.peers[peer]
