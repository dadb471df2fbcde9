"""Who provides an item: DHT lookups, remembered briefly, and the narinfos providers offer.

The miss path and the NAR fetch of the same item follow each other within seconds; the
directory keeps a lookup's answer for `ttl` so the fetch does not repeat the DHT walk. Lookups
of the same item at the same time share one walk. A lookup that learnt nothing (nobody
answered, or it was cut short before finding anyone) raises ProvidersUnknown and is not
kept: to the miss path it means "could not tell", not "nobody has it", so no 404 is
remembered for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from p2pcache.cache.index import Origin
from p2pcache.errors import P2PCacheError
from p2pcache.net.peer_client import PeerError, PeerMisbehaved
from p2pcache.net.peer_ranking import PeerRanking
from p2pcache.resolver import Candidate, NarinfoSource

FindProviders = Callable[[str], Awaitable[list[str]]]
"""The providers' endpoints; raises ProvidersUnknown when the search could not tell."""


class NarinfoFetcher(Protocol):
    """`PeerClient`, or `NarinfoBatcher` (several requests to one peer sent as one)."""

    async def narinfo(self, base: str, hash_part: str) -> bytes | None: ...


class ProvidersUnknown(P2PCacheError):
    """The search for an item's providers learnt nothing (no peer answered, or it was cut
    short): whether anyone holds the item is unknown."""


class ProviderDirectory:
    def __init__(self, find: FindProviders, *, ttl: float = 300.0, max_items: int = 50_000) -> None:
        self.find = find
        self.ttl = ttl
        self.max_items = max_items
        self._known: dict[str, tuple[float, list[str]]] = {}
        self._inflight: dict[str, asyncio.Future[list[str]]] = {}

    async def providers(self, hash_part: str, *, fresh: bool = False) -> list[str]:
        """The item's providers; none when they are unknown (see `lookup`)."""
        try:
            return await self.lookup(hash_part, fresh=fresh)
        except ProvidersUnknown:
            return []

    async def lookup(self, hash_part: str, *, fresh: bool = False) -> list[str]:
        """The item's providers, remembered for `ttl`; raises ProvidersUnknown (and remembers
        nothing) when the search could not tell."""
        now = time.monotonic()
        known = self._known.get(hash_part)
        if known is not None and not fresh and known[0] > now and known[1]:
            return known[1]
        running = self._inflight.get(hash_part)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._inflight[hash_part] = future
        try:
            found = await self.find(hash_part)
        except BaseException as e:
            future.set_exception(e)
            future.exception()
            raise
        finally:
            del self._inflight[hash_part]
        future.set_result(found)
        if len(self._known) >= self.max_items:
            self._known = {h: v for h, v in self._known.items() if v[0] > now}
            if len(self._known) >= self.max_items:
                self._known.clear()
        self._known[hash_part] = (now + self.ttl, found)
        return found

    def add(self, hash_part: str, provider: str) -> None:
        """Remember a provider learned otherwise (e.g. the peer whose narinfo was accepted)."""
        expiry, known = self._known.get(hash_part, (time.monotonic() + self.ttl, []))
        if provider not in known:
            self._known[hash_part] = (expiry, [provider, *known])


def peer_narinfo_source(
    directory: ProviderDirectory,
    client: NarinfoFetcher,
    ranking: PeerRanking,
    *,
    fanout: int = 3,
) -> NarinfoSource:
    """Ask the best `fanout` providers at once for the narinfo, then the next ones."""

    async def source(hash_part: str) -> AsyncIterator[Candidate]:
        providers = ranking.order(await directory.lookup(hash_part))
        pending: set[asyncio.Task[tuple[str, bytes | None]]] = set()
        unavailable: list[str] = []

        async def ask(provider: str) -> tuple[str, bytes | None]:
            try:
                return provider, await client.narinfo(provider, hash_part)
            except PeerMisbehaved:
                ranking.record_misbehaved(provider)
            except PeerError:
                ranking.record_unavailable(provider)
                unavailable.append(provider)
            return provider, None

        try:
            queue = list(providers)
            while queue or pending:
                while queue and len(pending) < fanout:
                    pending.add(asyncio.create_task(ask(queue.pop(0))))
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    provider, data = task.result()
                    if data is not None:
                        yield Candidate(Origin.PEER, provider, data)
            if providers and len(unavailable) == len(providers):
                # Every provider was down or too slow: that says nothing about the item.
                raise ProvidersUnknown(
                    f"none of the {len(providers)} provider(s) of {hash_part} could answer"
                )
        finally:
            for task in pending:
                task.cancel()

    return source
