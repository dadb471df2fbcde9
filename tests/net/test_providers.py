"""Who is asked for a miss's narinfo: recent providers first, then a DHT search's providers.

The peers are real peer API servers on loopback over real caches; the DHT search is the
directory's `find` function, which here returns the second server and counts its calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import aiohttp
import pytest
from aiohttp import web

from p2pcache.cache.index import CacheIndex
from p2pcache.guix.signing_key import generate_key_pair
from p2pcache.net.narinfo_batcher import NarinfoBatcher
from p2pcache.net.peer_client import PeerClient
from p2pcache.net.peer_ranking import PeerRanking
from p2pcache.net.providers import ProviderDirectory, ProvidersUnknown, peer_narinfo_source
from p2pcache.net.recent_providers import RecentProviders
from p2pcache.resolver import MissResolver
from tests.net.peer_servers import app_server, peer_server
from tests.seeded_cache import seed_cache

STORE = "/gnu/store"


@pytest.fixture
async def caches(tmp_path, small_test_store):
    """Cache `a` holds items 0 and 1; cache `b` holds items 0, 1 and 2, under another key."""
    items = sorted(small_test_store.items, key=lambda i: i.path)[:3]
    a_key, b_key = generate_key_pair(), generate_key_pair()
    a = await seed_cache(tmp_path / "a", small_test_store, a_key, items[:2])
    b = await seed_cache(tmp_path / "b", small_test_store, b_key, items)
    yield a, b, a_key, b_key
    await a.index.close()
    await b.index.close()


class Search:
    """The directory's DHT search: answers `providers`, and counts how often it ran."""

    def __init__(self, *providers: str) -> None:
        self.providers = list(providers)
        self.calls: list[str] = []

    async def __call__(self, hash_part: str) -> list[str]:
        self.calls.append(hash_part)
        return self.providers


@contextlib.asynccontextmanager
async def two_peers(caches):
    a, b, _, _ = caches
    async with (
        peer_server(a, "127.0.23.1") as a_url,
        peer_server(b, "127.0.23.2") as b_url,
        aiohttp.ClientSession() as session,
    ):
        yield a_url, b_url, NarinfoBatcher(PeerClient(session))


class Asker:
    """A peer narinfo source that offers misses to `recent_peer` first, then to what the
    search finds (`found`), with its bookkeeping at hand for the checks."""

    def __init__(self, client, recent_peer: str, found: str, **recent_settings) -> None:
        self.search = Search(found)
        self.recent = RecentProviders(**recent_settings)
        self.recent.accepted(recent_peer)
        self.counts: Counter[str] = Counter()
        self.ranking = PeerRanking()
        self.directory = ProviderDirectory(self.search)
        self.source = peer_narinfo_source(
            self.directory, client, self.ranking, recent=self.recent, counts=self.counts
        )


async def candidates(source, hash_part: str, wanted: int = 1) -> list:
    """The first `wanted` candidates, then the source is closed (as the resolver closes it
    when it accepts one)."""
    found = []
    generator = source(hash_part)
    try:
        async for candidate in generator:
            found.append(candidate)
            if len(found) == wanted:
                break
    finally:
        await generator.aclose()
    return found


async def test_a_recent_provider_holding_the_item_answers_without_a_dht_search(caches):
    a, _, _, _ = caches
    async with two_peers(caches) as (a_url, b_url, client):
        asker = Asker(client, a_url, b_url)
        (candidate,) = await candidates(asker.source, a.hash_parts[0])
        assert candidate.source == a_url
        assert asker.search.calls == []
        assert asker.counts == {"held": 1, "recent": 1}
        assert asker.recent.peers[a_url].answer_seconds is not None


async def test_a_recent_provider_without_the_item_is_followed_by_a_search(caches):
    _, b, _, _ = caches
    async with two_peers(caches) as (a_url, b_url, client):
        asker = Asker(client, a_url, b_url)
        only_at_b = b.hash_parts[2]
        (candidate,) = await candidates(asker.source, only_at_b)
        assert candidate.source == b_url
        assert asker.search.calls == [only_at_b]
        assert asker.counts == {"not-held": 1, "dht": 1}
        assert asker.recent.peers[a_url].hit_rate < 1.0


async def test_a_search_is_hedged_when_a_recent_provider_goes_quiet(caches):
    a, _, _, _ = caches
    stalled, release = asyncio.Event(), asyncio.Event()

    async def never_answers(request: web.Request) -> web.Response:
        stalled.set()
        await release.wait()  # until the test is over
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/p2p/v1/narinfo/{hash}", never_answers)
    async with two_peers(caches) as (_, b_url, client), app_server(app, "127.0.23.3") as quiet:
        asker = Asker(client, quiet, b_url, hedge_floor=0.1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            (candidate,) = await candidates(asker.source, a.hash_parts[0])
        finally:
            release.set()
        assert candidate.source == b_url
        assert stalled.is_set()
        assert 0.1 <= loop.time() - started < 5  # the hedge, not the peer client's timeout
        assert asker.counts == {"hedged": 1}


async def test_a_recent_provider_that_is_down_is_dropped(caches):
    a, _, _, _ = caches
    async with app_server(web.Application(), "127.0.23.4") as gone:
        pass  # its port is closed now: connections are refused
    async with two_peers(caches) as (_, b_url, client):
        asker = Asker(client, gone, b_url)
        (candidate,) = await candidates(asker.source, a.hash_parts[0])
        assert candidate.source == b_url
        assert asker.counts == {"failed": 1, "dht": 1}
        assert gone not in asker.recent.peers
        assert asker.ranking.scores[gone].unavailable == 1


async def test_a_peer_that_starts_providing_during_a_search_is_asked_at_once(caches):
    """A fresh node's first batch searches for every miss; a miss whose search is still
    waiting asks the first peer that provided instead of waiting for its turn."""
    a, _, _, _ = caches
    async with two_peers(caches) as (a_url, b_url, client):
        turn = asyncio.Event()

        class WaitingSearch(Search):
            dropped = False

            async def __call__(self, hash_part: str) -> list[str]:
                self.calls.append(hash_part)
                try:
                    await turn.wait()  # as behind the bound on searches at once
                except asyncio.CancelledError:
                    self.dropped = True
                    raise
                return self.providers

        search, recent, counts = WaitingSearch(b_url), RecentProviders(), Counter()
        source = peer_narinfo_source(
            ProviderDirectory(search), client, PeerRanking(), recent=recent, counts=counts
        )
        waiting = asyncio.create_task(candidates(source, a.hash_parts[0]))
        while not search.calls:
            await asyncio.sleep(0.01)
        recent.accepted(a_url)  # another miss of the batch was accepted from a
        (candidate,) = await asyncio.wait_for(waiting, 5)
        assert candidate.source == a_url
        await asyncio.sleep(0)  # the source's cleanup has cancelled the search
        assert search.dropped  # it never got its turn
        assert counts == {"dht": 1, "held": 1}


async def test_providers_already_searched_are_asked_without_recent_ones(caches):
    a, _, _, _ = caches
    async with two_peers(caches) as (a_url, b_url, client):
        asker = Asker(client, a_url, b_url)
        await asker.directory.lookup(a.hash_parts[0])  # e.g. the NAR fetch of an earlier miss
        (candidate,) = await candidates(asker.source, a.hash_parts[0])
        assert candidate.source == b_url
        assert asker.search.calls == [a.hash_parts[0]]  # the one above, not another
        assert asker.counts == {"dht": 1}


async def test_when_nobody_holds_the_item_the_source_ends_without_candidates(caches):
    async with two_peers(caches) as (a_url, b_url, client):
        asker = Asker(client, a_url, b_url)
        assert await candidates(asker.source, "a" * 32) == []
        assert asker.counts == {"not-held": 1, "dht": 1}


async def test_a_refused_narinfo_from_a_recent_provider_leads_to_the_search(tmp_path, caches):
    """The resolver resumes the source only after refusing its candidate: the search then
    starts, and the narinfo signed by a trusted key is accepted from the provider it finds."""
    a, _, _, b_key = caches
    index = CacheIndex(tmp_path / "asker.sqlite")
    await index.open()
    try:
        async with two_peers(caches) as (a_url, b_url, client):
            asker = Asker(client, a_url, b_url)  # a's key is not in the ACL below
            refused: list[str] = []
            resolver = MissResolver(
                index, [b_key.public], [asker.source], on_rejected=refused.append
            )
            resolution = await resolver.resolution(a.hash_parts[0])
            assert resolution is not None and resolution.provenance.source == b_url
            assert refused == ["unauthorized-key"]  # a's narinfo, judged and refused
            assert asker.counts == {"held": 1, "refused": 1, "dht": 1}
            assert a_url not in asker.recent.peers  # not asked first any more
    finally:
        await index.close()


async def test_added_providers_come_first_yet_a_search_still_runs():
    search = Search("http://found", "http://added")
    directory = ProviderDirectory(search)
    directory.add("h" * 32, "http://added")
    assert not directory.searched("h" * 32)
    assert await directory.lookup("h" * 32) == ["http://added", "http://found"]
    assert directory.searched("h" * 32)
    assert await directory.lookup("h" * 32) == ["http://added", "http://found"]
    assert search.calls == ["h" * 32]  # remembered after the search


async def test_an_added_provider_stands_when_the_search_cannot_tell():
    async def cannot_tell(hash_part: str) -> list[str]:
        raise ProvidersUnknown("nobody answered")

    directory = ProviderDirectory(cannot_tell)
    with pytest.raises(ProvidersUnknown):
        await directory.lookup("h" * 32)
    directory.add("h" * 32, "http://added")
    assert await directory.providers("h" * 32) == ["http://added"]
