"""Who provides an item: DHT lookups, remembered briefly, and the narinfos providers offer.

The miss path and the NAR fetch of the same item follow each other within seconds; the
directory keeps a lookup's answer for `ttl` so the fetch does not repeat the DHT walk. Lookups
of the same item at the same time share one walk. A lookup that learnt nothing (nobody
answered, or it was cut short before finding anyone) raises ProvidersUnknown and is not
kept: to the miss path it means "could not tell", not "nobody has it", so no 404 is
remembered for it.

A miss's narinfo is first asked of the peers that provided lately (net/recent_providers),
and the DHT is searched only when they do not have it, so a Guix batch for a closure held by
one seeder costs that seeder a few narinfo lists and the DHT nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import NamedTuple, Protocol

from p2pcache.cache.index import Origin
from p2pcache.errors import P2PCacheError
from p2pcache.net.peer_client import PeerError, PeerMisbehaved
from p2pcache.net.peer_ranking import PeerRanking
from p2pcache.net.recent_providers import RecentProviders
from p2pcache.resolver import Candidate, NarinfoSource

log = logging.getLogger(__name__)

FindProviders = Callable[[str], Awaitable[list[str]]]
"""The providers' endpoints; raises ProvidersUnknown when the search could not tell."""


class NarinfoFetcher(Protocol):
    """`NarinfoBatcher`: several requests to one peer sent as one list."""

    def request(self, base: str, hash_part: str) -> asyncio.Future[bytes | None]: ...


class ProvidersUnknown(P2PCacheError):
    """The search for an item's providers learnt nothing (no peer answered, or it was cut
    short): whether anyone holds the item is unknown."""


class _Known(NamedTuple):
    expiry: float
    providers: list[str]
    searched: bool
    """Whether a search found them, or they were only `add`ed."""


class ProviderDirectory:
    def __init__(self, find: FindProviders, *, ttl: float = 300.0, max_items: int = 50_000) -> None:
        self.find = find
        self.ttl = ttl
        self.max_items = max_items
        self._known: dict[str, _Known] = {}
        self._inflight: dict[str, asyncio.Future[list[str]]] = {}

    async def providers(self, hash_part: str, *, fresh: bool = False) -> list[str]:
        """The item's providers; none when they are unknown (see `lookup`)."""
        try:
            return await self.lookup(hash_part, fresh=fresh)
        except ProvidersUnknown:
            return []

    def _current(self, hash_part: str, now: float) -> _Known | None:
        known = self._known.get(hash_part)
        return known if known is not None and known.expiry > now else None

    def searched(self, hash_part: str) -> bool:
        """Whether a search's providers for the item are at hand (a lookup costs nothing)."""
        known = self._current(hash_part, time.monotonic())
        return known is not None and known.searched and bool(known.providers)

    async def lookup(self, hash_part: str, *, fresh: bool = False) -> list[str]:
        """The item's providers, remembered for `ttl`; raises ProvidersUnknown (and remembers
        nothing) when the search could not tell. Providers only `add`ed (the peer whose
        narinfo was accepted without a search) come first, but a search still runs: a NAR
        download wants every provider there is."""
        now = time.monotonic()
        known = self._current(hash_part, now)
        if known is not None and not fresh and known.searched and known.providers:
            return known.providers
        added = known.providers if known is not None and not known.searched else []
        running = self._inflight.get(hash_part)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._inflight[hash_part] = future
        try:
            found = await self.find(hash_part)
        except BaseException as e:
            if not (added and isinstance(e, ProvidersUnknown)):
                future.set_exception(e)
                future.exception()
                raise
            found = []  # the added providers stand
        finally:
            del self._inflight[hash_part]
        found = list(dict.fromkeys([*added, *found]))
        future.set_result(found)
        if len(self._known) >= self.max_items:
            self._known = {h: v for h, v in self._known.items() if v.expiry > now}
            if len(self._known) >= self.max_items:
                self._known.clear()
        self._known[hash_part] = _Known(now + self.ttl, found, True)
        return found

    def add(self, hash_part: str, provider: str) -> None:
        """Remember a provider learned otherwise (the peer whose narinfo was accepted)."""
        known = self._known.get(hash_part) or _Known(time.monotonic() + self.ttl, [], False)
        if provider not in known.providers:
            self._known[hash_part] = known._replace(providers=[provider, *known.providers])


def peer_narinfo_source(
    directory: ProviderDirectory,
    client: NarinfoFetcher,
    ranking: PeerRanking,
    *,
    fanout: int = 3,
    recent: RecentProviders | None = None,
    recent_fanout: int = 2,
    counts: Counter[str] | None = None,
) -> NarinfoSource:
    """Ask the item's providers for its narinfo: first the peers that provided recently
    (net/recent_providers), then, when they do not hold it, fail or go quiet, the providers a
    DHT search finds, the best `fanout` at once and then the next ones.

    `counts` (for metrics) gets one of `recent` (answered by recent peers, no search), `dht`
    (a search, the recent peers not asked or without the item) or `hedged` (a search started
    while recent peers were still being asked) per item, and per ask of a recent peer one of
    `held`, `not-held` or `failed`, plus `refused` when the narinfo it held was refused.
    """
    tally: Counter[str] = counts if counts is not None else Counter()

    def source(hash_part: str) -> AsyncGenerator[Candidate, None]:
        asks = _ProviderAsks(
            hash_part, directory, client, ranking, fanout, recent, recent_fanout, tally
        )
        return asks.candidates()

    return source


class _ProviderAsks:
    """One miss's asks of providers, in the order `peer_narinfo_source` describes.

    Everything it waits for (asks, the search, a newcomer among the recent providers, the
    hedge deadline) wakes one future; the asks are the batcher's own futures, not tasks. In
    a Guix batch this runs a thousand times within milliseconds, and a task per ask plus an
    `asyncio.wait` per round were a sixth of the event loop's work.
    """

    def __init__(
        self,
        hash_part: str,
        directory: ProviderDirectory,
        client: NarinfoFetcher,
        ranking: PeerRanking,
        fanout: int,
        recent: RecentProviders | None,
        recent_fanout: int,
        tally: Counter[str],
    ) -> None:
        self.hash_part = hash_part
        self.directory = directory
        self.client = client
        self.ranking = ranking
        self.fanout = fanout
        self.recent = recent
        self.recent_fanout = recent_fanout
        self.tally = tally
        self.clock = recent.clock if recent is not None else time.monotonic
        self.asked: set[str] = set()
        self.unavailable: set[str] = set()
        # ask -> (provider, when asked, whether asked as a recent provider)
        self.pending: dict[asyncio.Future, tuple[str, float, bool]] = {}
        self.queue: list[str] = []
        self.found: list[str] = []
        self.search: asyncio.Task[list[str]] | None = None
        self.searched = False
        self.newcomer: asyncio.Future[None] | None = None
        self.offered_before_search = False
        self.completed: list[asyncio.Future] = []
        self.wake: asyncio.Future[None] | None = None

    def _done(self, future: asyncio.Future) -> None:
        self.completed.append(future)
        self._wake_up()

    def _wake_up(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    def _watch(self, future: asyncio.Future) -> None:
        future.add_done_callback(self._done)

    def start(self, provider: str, first: bool) -> None:
        self.asked.add(provider)
        ask = self.client.request(provider, self.hash_part)
        self.pending[ask] = (provider, self.clock(), first)
        self._watch(ask)

    def _start_recent(self) -> None:
        assert self.recent is not None
        for provider in self.recent.to_ask(self.recent_fanout, self.ranking.order):
            if provider not in self.asked:
                self.start(provider, True)

    async def candidates(self) -> AsyncGenerator[Candidate, None]:
        """The narinfos providers offer, one at a time; closing it ends every ask."""
        try:
            recent = self.recent
            if recent is not None and not self.directory.searched(self.hash_part):
                self._start_recent()
            while (hedge_at := self._ask_more()) is not None:
                if not self.completed:
                    await self._wait(hedge_at)
                done, self.completed = self.completed, []
                for future in done:
                    offered = self._settle(future)
                    if offered is None:
                        continue
                    candidate, first = offered
                    # The resolver resumes this generator only when it refused the narinfo;
                    # when it accepts one, it closes the generator at the yield.
                    self.offered_before_search = first and self.search is None
                    yield candidate
                    self.offered_before_search = False
                    if first and recent is not None:
                        # Refused (untrusted key, bad signature, wrong item): a peer whose
                        # narinfos the node does not take is not worth asking first.
                        self.tally["refused"] += 1
                        recent.failed(candidate.source)
            if self.found and self.unavailable.issuperset(self.found):
                # Every provider was down or too slow: that says nothing about the item.
                raise ProvidersUnknown(
                    f"none of the {len(self.found)} provider(s) of {self.hash_part} could answer"
                )
        finally:
            self.close()

    def _ask_more(self) -> float | None:
        """Start what is due: the search (when no recent peer is being asked, or they have
        taken too long), providers it found, the watch for newcomers. Returns when the recent
        peers' asks will have taken too long (0 when none is out), or None when nothing is
        left to wait for."""
        recent, clock = self.recent, self.clock
        first_asks = [(p, t) for p, t, first in self.pending.values() if first]
        hedge_at = 0.0
        if first_asks:
            assert recent is not None
            hedge_at = min(recent.hedge_at(p, t) for p, t in first_asks)
        if self.search is None and (not first_asks or clock() >= hedge_at):
            self.tally["hedged" if first_asks else "dht"] += 1
            self.search = asyncio.create_task(self.directory.lookup(self.hash_part))
            self._watch(self.search)
        while self.queue and self._later_asks() < self.fanout:
            self.start(self.queue.pop(0), False)
        searching = self.search is not None and not self.searched
        if searching and recent is not None:
            # While the search runs (or waits for its turn), a peer that starts providing is
            # asked too.
            newcomer = recent.next_added()
            if newcomer is not self.newcomer:
                self._forget_newcomer()
                self.newcomer = newcomer
                self._watch(newcomer)
        if not self.pending and not searching:
            return None
        return hedge_at

    async def _wait(self, hedge_at: float) -> None:
        """Until something watched is done or, before any search, the hedge is due."""
        loop = asyncio.get_running_loop()
        timer = None
        if self.search is None:
            timer = loop.call_later(max(0.0, hedge_at - self.clock()), self._wake_up)
        self.wake = loop.create_future()
        try:
            await self.wake
        finally:
            self.wake = None
            if timer is not None:
                timer.cancel()

    def _settle(self, future: asyncio.Future) -> tuple[Candidate, bool] | None:
        """Take in one finished thing; a candidate (and whether a recent peer offered it)
        when it was an ask answered with a narinfo."""
        if future is self.newcomer:
            self.newcomer = None
            self._start_recent()
        elif future is self.search:
            self.searched = True
            self._forget_newcomer()  # newcomers matter only while searching
            self.found = self.ranking.order(future.result())  # ProvidersUnknown goes up
            self.queue.extend(p for p in self.found if p not in self.asked)
        elif future in self.pending:
            return self._answered(future)
        return None

    def _later_asks(self) -> int:
        return sum(not first for _, _, first in self.pending.values())

    def _answered(self, ask: asyncio.Future) -> tuple[Candidate, bool] | None:
        """Book an ask's answer; the candidate (and whether it was a first ask) if it held
        the narinfo."""
        provider, asked_at, first = self.pending.pop(ask)
        data, error = self._outcome(provider, ask)
        recent = self.recent
        if error is not None and not isinstance(error, PeerMisbehaved):
            self.unavailable.add(provider)
        if first and recent is not None:
            if error is not None:
                self.tally["failed"] += 1
                recent.failed(provider)
            else:
                self.tally["held" if data is not None else "not-held"] += 1
                recent.answered(provider, data is not None, self.clock() - asked_at)
        if data is None:
            return None
        return Candidate(Origin.PEER, provider, data), first

    def _outcome(
        self, provider: str, ask: asyncio.Future[bytes | None]
    ) -> tuple[bytes | None, PeerError | None]:
        error = ask.exception()
        if error is None:
            return ask.result(), None
        if isinstance(error, PeerMisbehaved):
            if self.ranking.record_misbehaved(provider):
                log.warning("banning peer %s for a while: %s", provider, error)
            else:
                log.info(
                    "peer %s sent a bad answer for the narinfo of %s: %s",
                    provider,
                    self.hash_part,
                    error,
                )
            return None, error
        if isinstance(error, PeerError):
            self.ranking.record_unavailable(provider)
            log.debug("peer %s could not answer for %s: %s", provider, self.hash_part, error)
            return None, error
        raise error

    def _forget_newcomer(self) -> None:
        if self.newcomer is not None:
            self.newcomer.remove_done_callback(self._done)
            self.newcomer = None

    def close(self) -> None:
        """The lookup is over: stop what still runs and let go of shared futures."""
        if self.offered_before_search:
            self.tally["recent"] += 1
        for ask in self.pending:
            ask.remove_done_callback(self._done)
            ask.cancel()
        if self.search is not None and not self.search.done():
            self.search.remove_done_callback(self._done)
            self.search.cancel()
        self._forget_newcomer()
