"""Checkpoint gossip between real nodes: a split view shown to two peers is caught by gossip.

One builder key, two logs (the builder shows one tree to some and another to others, from two
addresses). Each peer first follows one of them; gossip then brings the other view and the
fork is found, counted and kept. Hostile peers (oversized lists, garbage, strangers' logs)
cost bounded work and change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp import web

from p2pcache.net.peer_client import PeerClient
from p2pcache.trust.checkpoint import Checkpoint, builder_origin, sign_checkpoint
from p2pcache.trust.checkpoint_list import MAX_CHECKPOINT_LIST_SIZE, render_checkpoint_list
from p2pcache.trust.merkle_proof import consistency_proof_length
from tests.integration.conftest import running_node
from tests.integration.log_watch_nodes import attest_items, make_builder_dir, peer_config
from tests.integration.test_node_metrics import scrape
from tests.trust.builders import builder_key

SEED = b"s" * 32


def gossip_of(node):
    return node.network.log_watching.gossip_service


@contextlib.asynccontextmanager
async def split_builder(tmp_path, sizes: tuple[int, int]):
    """The same builder key serving two different logs from two addresses."""
    views = []
    for n, size in enumerate(sizes):
        data_dir = tmp_path / f"view-{n}"
        key = make_builder_dir(data_dir, SEED)
        attest_items(data_dir, key, range(size), f"view{n}-1.0")
        views.append(peer_config(data_dir, f"127.0.7{n}.1"))
    async with running_node(views[0]) as one, running_node(views[1]) as two:
        yield bytes(key.verify_key), one.network.peer_url, two.network.peer_url


async def test_gossip_carries_a_split_view_from_one_peer_to_another(tmp_path):
    async with split_builder(tmp_path, (4, 4)) as (public, view_a, view_b):
        track = {"gossip_builders": (public,)}
        config_1 = peer_config(tmp_path / "p1", "127.0.81.1", gossip_peers=(view_a,), **track)
        async with running_node(config_1) as p1:
            config_2 = peer_config(
                tmp_path / "p2", "127.0.82.1", gossip_peers=(p1.network.peer_url,), **track
            )
            async with running_node(config_2) as p2:
                assert await gossip_of(p1).pull_from(view_a) == ["first-seen"]
                assert await gossip_of(p2).pull_from(view_b) == ["first-seen"]
                origin = builder_origin(public)
                assert p1.network.trust.checkpoints.latest(origin).root != (
                    p2.network.trust.checkpoints.latest(origin).root
                )
                # p2 pulls from its configured peer p1 (the only one it knows): the split shows.
                assert await gossip_of(p2).pull_once() == {p1.network.peer_url: ["fork-detected"]}
                assert p2.network.trust.checkpoints.is_forked(origin)
                (evidence,) = p2.network.trust.checkpoints.fork_evidence(origin)
                assert evidence.kind == "same-size"
                metrics = await asyncio.to_thread(scrape, p2.admin_port)
                assert metrics["p2pcache_trust_forks_detected_total"][()] == 1
                gossiped = metrics["p2pcache_gossip_checkpoints_total"]
                assert gossiped[(("outcome", "fork-detected"),)] == 1
                # And the other way round: p1 learns it from p2 too.
                assert await gossip_of(p1).pull_from(p2.network.peer_url) == ["fork-detected"]


async def test_a_failing_proof_from_the_builder_itself_is_fork_evidence(tmp_path):
    async with split_builder(tmp_path, (3, 6)) as (public, view_a, view_b):
        track = {"gossip_builders": (public,)}
        config = peer_config(tmp_path / "p", "127.0.83.1", **track)
        async with running_node(config) as peer:
            assert await gossip_of(peer).pull_from(view_a) == ["first-seen"]
            # The builder's other view is newer: the proof it serves from size 3 cannot hold.
            assert await gossip_of(peer).pull_from(view_b) == ["fork-detected"]
            (evidence,) = peer.network.trust.checkpoints.fork_evidence(builder_origin(public))
            assert evidence.kind == "inconsistent" and evidence.proof


@contextlib.asynccontextmanager
async def builder_grown_after_first_gossip(tmp_path, hosts: tuple[str, str]):
    """An honest builder (2 items) and a peer that gossiped its first checkpoint; then the
    builder attests 5 more. Yields (builder public key, builder URL, peer node)."""
    data_dir = tmp_path / "builder"
    key = make_builder_dir(data_dir, SEED)
    attest_items(data_dir, key, range(2), "honest-1.0")
    public = bytes(key.verify_key)
    async with running_node(peer_config(data_dir, hosts[0])) as builder:
        url = builder.network.peer_url
        config = peer_config(tmp_path / "p", hosts[1], gossip_builders=(public,))
        async with running_node(config) as peer:
            assert await gossip_of(peer).pull_from(url) == ["first-seen"]
            attest_items(data_dir, key, range(2, 7), "honest-1.0")
            yield public, url, peer


async def test_an_honest_builder_advances_by_its_own_proof_and_peers_pass_it_on(tmp_path):
    hosts = ("127.0.84.1", "127.0.85.1")
    async with builder_grown_after_first_gossip(tmp_path, hosts) as (public, url, peer):
        assert await gossip_of(peer).pull_from(url) == ["advanced"]
        latest = peer.network.trust.checkpoints.latest(builder_origin(public))
        assert latest.size == 7
        # The peer serves what it accepted; a third node gets it from there, unchanged.
        async with aiohttp.ClientSession() as session:
            notes = await PeerClient(session).fetch_checkpoint_list(peer.network.peer_url)
        assert latest.note in notes


def answer(body: bytes):
    """An aiohttp handler that always answers `body`."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body)

    return handler


async def serve(app: web.Application, host: str) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://{host}:{port}"


async def test_hostile_gossip_is_bounded_and_changes_nothing(tmp_path):
    tracked = builder_key("tracked builder")
    public = bytes(tracked.verify_key)
    stranger = builder_key("stranger")
    stranger_note = sign_checkpoint(
        Checkpoint(builder_origin(bytes(stranger.verify_key)), 5, b"\x05" * 32), stranger
    )
    forged = sign_checkpoint(Checkpoint(builder_origin(public), 5, b"\x06" * 32), stranger)
    garbage = [b"garbage", b"\x00\x01", forged, stranger_note]
    bodies = {
        "oversized": b"p2pcache-checkpoints/v1 1\n" + b"x" * (MAX_CHECKPOINT_LIST_SIZE + 10),
        "malformed": b"p2pcache-checkpoints/v1 9\n1\nx",
        "garbage": render_checkpoint_list(garbage),
    }

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=bodies[request.match_info["kind"]])

    app = web.Application()
    app.router.add_get("/{kind}/p2p/v1/checkpoints", handler)
    runner, base = await serve(app, "127.0.86.1")
    try:
        config = peer_config(tmp_path / "p", "127.0.87.1", gossip_builders=(public,))
        async with running_node(config) as peer:
            gossip = gossip_of(peer)
            assert await gossip.pull_from(f"{base}/oversized") == []
            assert await gossip.pull_from(f"{base}/malformed") == []
            outcomes = await gossip.pull_from(f"{base}/garbage")
            assert outcomes == ["invalid", "invalid", "invalid", "unknown-origin"]
            assert await gossip.pull_from("http://127.0.86.2:9") == []  # nobody there
            store = peer.network.trust.checkpoints
            assert store.latest(builder_origin(public)) is None
            assert store.latest(builder_origin(bytes(stranger.verify_key))) is None
            metrics = await asyncio.to_thread(scrape, peer.admin_port)
            pulls = metrics["p2pcache_gossip_pulls_total"]
            assert pulls[(("result", "misbehaved"),)] == 2
            assert pulls[(("result", "unavailable"),)] == 1
            assert metrics["p2pcache_trust_forks_detected_total"][()] == 0
            # A node that accepted nothing has nothing to gossip.
            async with aiohttp.ClientSession() as session:
                assert await PeerClient(session).fetch_checkpoint_list(peer.network.peer_url) == []
    finally:
        await runner.cleanup()


async def test_a_round_asks_at_most_fanout_peers(tmp_path):
    config = peer_config(
        tmp_path / "p",
        "127.0.88.1",
        gossip_fanout=2,
        gossip_peers=tuple(f"http://127.0.89.{n}:9" for n in range(1, 6)),
    )
    async with running_node(config) as peer:
        asked = await gossip_of(peer).pull_once()
        assert len(asked) == 2 and all(v == [] for v in asked.values())


async def test_a_replayed_node_document_cannot_frame_an_honest_builder(tmp_path):
    """A peer replaying the builder's signed /p2p/v1/node and serving a bogus proof is not
    the builder: its proof is as good as none, and the builder is not found forked."""
    hosts = ("127.0.90.1", "127.0.91.1")
    async with (
        builder_grown_after_first_gossip(tmp_path, hosts) as (public, url, peer),
        aiohttp.ClientSession() as session,
    ):
        async with session.get(f"{url}/p2p/v1/node") as response:
            node_document = await response.read()
        newest = await PeerClient(session).fetch_checkpoint(url)
        bogus = b"\x09" * 32 * consistency_proof_length(2, 7)
        app = web.Application()
        app.router.add_get("/p2p/v1/node", answer(node_document))
        app.router.add_get(
            "/p2p/v1/checkpoints",
            answer(render_checkpoint_list([newest])),
        )
        app.router.add_get("/p2p/v1/log/consistency/2/7", answer(bogus))
        runner, impostor = await serve(app, "127.0.92.1")
        try:
            assert await gossip_of(peer).pull_from(impostor) == ["awaiting-proof"]
        finally:
            await runner.cleanup()
        assert not peer.network.trust.checkpoints.is_forked(builder_origin(public))
        # The builder itself then settles it with its own (valid) proof.
        assert await gossip_of(peer).pull_from(url) == ["advanced"]


async def test_gossip_follows_the_builders_of_the_trust_file(tmp_path):
    data_dir = tmp_path / "builder"
    key = make_builder_dir(data_dir, SEED)
    attest_items(data_dir, key, range(2), "trusted-1.0")
    public = bytes(key.verify_key)
    async with running_node(peer_config(data_dir, "127.0.93.1")) as builder:
        url = builder.network.peer_url
        config = peer_config(tmp_path / "p", "127.0.94.1")
        async with running_node(config) as peer:
            assert await gossip_of(peer).pull_from(url) == ["unknown-origin"]
            trust_file = config.effective_trust_file()
            trust_file.write_text(f"builder ci-one {public.hex()}\n")
            async with asyncio.timeout(10):  # the node re-reads the trust file when it changes
                while (outcomes := await gossip_of(peer).pull_from(url)) != ["first-seen"]:
                    assert outcomes == ["unknown-origin"]
                    await asyncio.sleep(0.1)
