"""Narinfo requests to one peer grouped into lists, against real peer API servers."""

import asyncio
from collections import Counter
from typing import ClassVar

import aiohttp
import pytest
from aiohttp import web

from p2pcache.guix.signing_key import generate_key_pair
from p2pcache.net.narinfo_batcher import NarinfoBatcher
from p2pcache.net.peer_client import PeerClient, PeerMisbehaved
from p2pcache.server.peer_app import PeerAPI
from tests.net.peer_servers import app_server, peer_server
from tests.seeded_cache import seed_cache

UNKNOWN = [f"{n:032d}".replace("0", "b") for n in range(130)]


class CountingPeerAPI(PeerAPI):
    """Counts the requests of each narinfo route."""

    served: ClassVar[Counter] = Counter()

    async def narinfo(self, request):
        self.served["narinfo"] += 1
        return await super().narinfo(request)

    async def narinfos(self, request):
        self.served["narinfos"] += 1
        return await super().narinfos(request)


@pytest.fixture
async def seeded(tmp_path, small_test_store):
    items = sorted(small_test_store.items, key=lambda i: -i.nar_size)[:3]
    cache = await seed_cache(tmp_path / "seed", small_test_store, generate_key_pair(), items)
    CountingPeerAPI.served = Counter()
    yield cache
    await cache.index.close()


async def test_narinfos_asked_together_go_in_one_list(seeded):
    async with (
        peer_server(seeded, "127.0.21.1", CountingPeerAPI) as url,
        aiohttp.ClientSession() as session,
    ):
        client = PeerClient(session)
        batcher = NarinfoBatcher(client)
        asked = [*seeded.hash_parts, *UNKNOWN[:5]]
        answers = await asyncio.gather(*(batcher.narinfo(url, h) for h in asked))
        assert CountingPeerAPI.served == {"narinfos": 1}
        assert batcher.requests == 1
        for hash_part, answer in zip(asked, answers, strict=True):
            assert answer == await client.narinfo(url, hash_part)  # as asked alone
        assert all(answers[:3]) and answers[3:] == [None] * 5


async def test_a_lone_narinfo_is_a_plain_request(seeded):
    async with (
        peer_server(seeded, "127.0.21.2", CountingPeerAPI) as url,
        aiohttp.ClientSession() as session,
    ):
        batcher = NarinfoBatcher(PeerClient(session))
        assert await batcher.narinfo(url, seeded.hash_parts[0]) is not None
        assert await batcher.narinfo(url, UNKNOWN[0]) is None
        assert CountingPeerAPI.served == {"narinfo": 2}


async def test_long_lists_are_split_and_the_same_item_is_asked_once(seeded):
    async with (
        peer_server(seeded, "127.0.21.3", CountingPeerAPI) as url,
        aiohttp.ClientSession() as session,
    ):
        batcher = NarinfoBatcher(PeerClient(session))
        asked = [*UNKNOWN, seeded.hash_parts[0], seeded.hash_parts[0]]
        answers = await asyncio.gather(*(batcher.narinfo(url, h) for h in asked))
        assert CountingPeerAPI.served == {"narinfos": 3}  # 131 distinct: 64 + 64 + 3
        assert answers[-1] == answers[-2] is not None
        assert answers[:130] == [None] * 130


async def test_requests_made_while_the_peer_is_busy_wait_and_go_together(seeded):
    async with (
        peer_server(seeded, "127.0.21.4", CountingPeerAPI) as url,
        aiohttp.ClientSession() as session,
    ):
        batcher = NarinfoBatcher(PeerClient(session), max_in_flight=1)
        first = asyncio.create_task(batcher.narinfo(url, seeded.hash_parts[0]))
        await asyncio.sleep(0.001)  # the first request has gone out alone
        later = [asyncio.create_task(batcher.narinfo(url, h)) for h in UNKNOWN[:20]]
        assert await first is not None
        assert await asyncio.gather(*later) == [None] * 20
        assert CountingPeerAPI.served == {"narinfo": 1, "narinfos": 1}


async def test_a_peer_without_lists_is_asked_one_by_one(seeded):
    """An older node: only the single-narinfo route (any other path is a 404)."""
    api = CountingPeerAPI(seeded.index, seeded.nar_store, None, "")
    app = web.Application()
    app.router.add_get("/p2p/v1/narinfo/{hash}", api.narinfo)
    async with app_server(app, "127.0.21.5") as url, aiohttp.ClientSession() as session:
        batcher = NarinfoBatcher(PeerClient(session))
        asked = [*seeded.hash_parts, UNKNOWN[0]]
        answers = await asyncio.gather(*(batcher.narinfo(url, h) for h in asked))
        assert all(answers[:3]) and answers[3] is None
        assert CountingPeerAPI.served == {"narinfo": 4}
        assert batcher.requests == 1 + 4  # the list that got a 404, then each alone
        await asyncio.gather(*(batcher.narinfo(url, h) for h in asked))
        assert batcher.requests == 5 + 4  # remembered: no list asked again


async def test_a_malformed_list_counts_against_the_peer_for_every_item_in_it():
    async def wrong_order(request):
        hashes = request.match_info["hashes"].split(",")
        body = b"p2pcache-narinfos/v1 %d\n" % len(hashes)
        body += b"".join(h.encode() + b" 0\n" for h in reversed(hashes))
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/p2p/v1/narinfos/{hashes}", wrong_order)
    async with app_server(app, "127.0.21.6") as url, aiohttp.ClientSession() as session:
        batcher = NarinfoBatcher(PeerClient(session))
        answers = await asyncio.gather(
            *(batcher.narinfo(url, h) for h in UNKNOWN[:3]), return_exceptions=True
        )
        assert all(isinstance(a, PeerMisbehaved) for a in answers), answers
