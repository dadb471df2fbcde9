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
from collections.abc import AsyncIterator, Awaitable, Callable
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
    """`PeerClient`, or `NarinfoBatcher` (several requests to one peer sent as one)."""

    async def narinfo(self, base: str, hash_part: str) -> bytes | None: ...


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

    async def ask(provider: str, hash_part: str) -> tuple[bytes | None, PeerError | None]:
        try:
            return await client.narinfo(provider, hash_part), None
        except PeerMisbehaved as e:
            if ranking.record_misbehaved(provider):
                log.warning("banning peer %s for a while: %s", provider, e)
            else:
                log.info(
                    "peer %s sent a bad answer for the narinfo of %s: %s", provider, hash_part, e
                )
            return None, e
        except PeerError as e:
            ranking.record_unavailable(provider)
            log.debug("peer %s could not answer for %s: %s", provider, hash_part, e)
            return None, e

    async def source(hash_part: str) -> AsyncIterator[Candidate]:
        clock = recent.clock if recent is not None else time.monotonic
        asked: set[str] = set()
        unavailable: set[str] = set()
        # task -> (provider, when asked, whether asked as a recent provider)
        pending: dict[asyncio.Task, tuple[str, float, bool]] = {}
        queue: list[str] = []
        found: list[str] = []
        search: asyncio.Task[list[str]] | None = None
        searched = False
        offered_before_search = False
        newcomer: asyncio.Future[None] | None = None

        def start(provider: str, first: bool) -> None:
            asked.add(provider)
            pending[asyncio.create_task(ask(provider, hash_part))] = (provider, clock(), first)

        if recent is not None and not directory.searched(hash_part):
            for provider in recent.to_ask(recent_fanout, ranking.order):
                start(provider, True)
        try:
            while True:
                first_asks = [(p, t) for p, t, first in pending.values() if first]
                hedge_at = min((recent.hedge_at(p, t) for p, t in first_asks), default=0.0)
                if search is None and (not first_asks or clock() >= hedge_at):
                    tally["hedged" if first_asks else "dht"] += 1
                    search = asyncio.create_task(directory.lookup(hash_part))
                while queue and sum(not first for _, _, first in pending.values()) < fanout:
                    start(queue.pop(0), False)
                waiting: set[asyncio.Future] = set(pending)
                if search is not None and not searched:
                    waiting.add(search)
                    if recent is not None:
                        # While the search runs (or waits for its turn), a peer that starts
                        # providing is asked too.
                        newcomer = recent.next_added()
                        waiting.add(newcomer)
                if not waiting:
                    break
                timeout = None if search is not None else max(0.0, hedge_at - clock())
                done, _ = await asyncio.wait(
                    waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    if task is newcomer:
                        assert recent is not None
                        for provider in recent.to_ask(recent_fanout, ranking.order):
                            if provider not in asked:
                                start(provider, True)
                        continue
                    if task is search:
                        searched = True
                        found = ranking.order(task.result())  # ProvidersUnknown goes up
                        queue.extend(p for p in found if p not in asked)
                        continue
                    provider, asked_at, first = pending.pop(task)
                    data, error = task.result()
                    if error is not None and not isinstance(error, PeerMisbehaved):
                        unavailable.add(provider)
                    if first and recent is not None:
                        if error is not None:
                            tally["failed"] += 1
                            recent.failed(provider)
                        else:
                            tally["held" if data is not None else "not-held"] += 1
                            recent.answered(provider, data is not None, clock() - asked_at)
                    if data is not None:
                        # The resolver resumes this generator only when it refused the
                        # narinfo; when it accepts one, it closes the generator at the yield.
                        offered_before_search = first and search is None
                        yield Candidate(Origin.PEER, provider, data)
                        offered_before_search = False
                        if first and recent is not None:
                            # Refused (untrusted key, bad signature, wrong item): a peer whose
                            # narinfos the node does not take is not worth asking first.
                            tally["refused"] += 1
                            recent.failed(provider)
            if found and unavailable.issuperset(found):
                # Every provider was down or too slow: that says nothing about the item.
                raise ProvidersUnknown(
                    f"none of the {len(found)} provider(s) of {hash_part} could answer"
                )
        finally:
            if offered_before_search:
                tally["recent"] += 1
            for task in pending:
                task.cancel()
            if search is not None and not search.done():
                search.cancel()

    return source
