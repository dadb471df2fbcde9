"""PeerEvidence on its own: where the trust policy's bundles and consistency proofs come from.

Until now only the multi-node tests exercised p2pcache/net/evidence_source.py; this file pins
its own contract with real parts: real builder keys, Merkle logs and signed bundles
(tests/trust/builders.py), a real PeerClient with short bounds, a real PeerRanking and PeerKeys,
and aiohttp peers on 127.0.0.1 (a ScriptedPeer with the attestations route added) answering
real bundle lists, signed node information and proofs, or hostile and broken answers.

Checked: which peers are asked (the best `fanout` providers in ranking order, banned ones
never) and for what; what comes back (the node's own bundles first, read in a thread, then
the peers', each bundle once, at most MAX_BUNDLES); that a failing peer (500, hang, closed
port) gives nothing and costs no misbehaviour, while an oversized or malformed list gives
nothing and counts against the peer (and bans it in the end); that a relayed bundle of another
item is passed on for the verifier to refuse; the 4 MiB list bound at its edge; and that
consistency proofs are asked only of a URL proven to be the builder's, marked from_builder.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from p2pcache.net.evidence_source import MAX_BUNDLES, PeerEvidence
from p2pcache.net.identity import NodeIdentity
from p2pcache.net.peer_client import PeerClient, PeerLimits
from p2pcache.net.peer_keys import PeerKeys
from p2pcache.net.peer_ranking import PeerRanking, PeerScore
from p2pcache.trust.attestation_verifier import AttestationVerifier, ConsistencyProof
from p2pcache.trust.bundle_list import (
    HEADER,
    MAX_BUNDLE_LIST_SIZE,
    bundle_list_size,
    render_bundle_list,
)
from p2pcache.trust.bundle_list import MAX_BUNDLES as MAX_LISTED
from p2pcache.trust.checkpoint_store import CheckpointStore
from p2pcache.trust.merkle_proof import verify_consistency
from p2pcache.trust.policy import Mode, TrustPolicy
from tests.net.peer_servers import app_server
from tests.trust.builders import ITEM, OTHER_ITEM, Builder, hash_part
from tests.trust.scripted_peer import (
    HANG,
    Chunked,
    ScriptedPeer,
    Status,
    node_info_of,
    proofs_of,
)

TIMEOUT = 0.3
HASH = hash_part(ITEM)
ATTESTATIONS = f"/p2p/v1/attestations/{HASH}"
NODE = "/p2p/v1/node"
CONSISTENCY = "/p2p/v1/log/consistency/"
SOURCE_LOG = "p2pcache.net.evidence_source"


class EvidencePeer(ScriptedPeer):
    """A ScriptedPeer that also answers `GET /p2p/v1/attestations/<hash>` as scripted."""

    def __init__(self) -> None:
        super().__init__()
        self.attestations = None

    def application(self) -> web.Application:
        app = super().application()
        app.router.add_get("/p2p/v1/attestations/{hash}", self._handler("attestations"))
        return app


@contextlib.asynccontextmanager
async def evidence_peers(count: int) -> AsyncIterator[list[EvidencePeer]]:
    async with contextlib.AsyncExitStack() as stack:
        peers = []
        for _ in range(count):
            peer = EvidencePeer()
            peer.url = await stack.enter_async_context(app_server(peer.application(), "127.0.0.1"))
            stack.callback(peer.release)
            peers.append(peer)
        yield peers


@pytest.fixture
async def client():
    """A real peer client whose every bound (the bundle list's too) is short."""
    limits = PeerLimits(connect_timeout=TIMEOUT, small_timeout=TIMEOUT, bundles_timeout=TIMEOUT)
    async with aiohttp.ClientSession() as session:
        yield PeerClient(session, limits)


@pytest.fixture
def builders(tmp_path):
    made = [Builder(tmp_path / "builders", name) for name in ("alpha", "beta", "gamma")]
    yield made
    for b in made:
        b.close()


class Node:
    """The node side: the source under test, its ranking, and what its seams were asked."""

    def __init__(
        self,
        client: PeerClient,
        providers: list[str],
        local: list[bytes] = (),
        *,
        fanout: int = 3,
        peer_keys: PeerKeys | None = None,
    ) -> None:
        self.ranking = PeerRanking()
        self.provider_calls: list[str] = []
        self.local_calls: list[tuple[str, str]] = []
        self._providers = providers
        self._local = list(local)
        self.source = PeerEvidence(
            client,
            self.providers,
            self.ranking,
            self.local_bundles,
            fanout=fanout,
            peer_keys=peer_keys,
        )

    async def providers(self, hash_part: str) -> list[str]:
        self.provider_calls.append(hash_part)
        return list(self._providers)

    def local_bundles(self, hash_part: str) -> list[bytes]:
        self.local_calls.append((hash_part, threading.current_thread().name))
        return list(self._local)

    def misbehaved(self, url: str) -> int:
        return self.ranking.scores.get(url, PeerScore()).misbehaved

    def unavailable(self, url: str) -> int:
        return self.ranking.scores.get(url, PeerScore()).unavailable


def bundles_of(builder: Builder, count: int, start: int = 0) -> list[bytes]:
    """`count` distinct real bundles of ITEM (attested at different times) by `builder`."""
    return [builder.bundle(ITEM, time=1_790_000_000 + start + i) for i in range(count)]


def raw_list(bundles: list[bytes]) -> bytes:
    """A bundle list framed as the protocol says, without the renderer's bounds."""
    return b"%s %d\n" % (HEADER, len(bundles)) + b"".join(b"%d\n%s" % (len(b), b) for b in bundles)


def list_of_size(first: bytes, total: int) -> tuple[bytes, int]:
    """A well-framed list of exactly `total` bytes: `first`, then filler bundles filling it.
    Returns the list and how many bundles it holds."""
    filler = 1 << 20
    count = 1
    while bundle_list_size([len(first)] + [filler] * count) < total:
        count += 1
    # `count` fillers of 1 MiB overshoot; shrink the last one to land exactly on `total`.
    sizes = [filler] * count
    excess = bundle_list_size([len(first), *sizes]) - total
    for last in range(filler - excess - 8, filler - excess + 8):
        if bundle_list_size([len(first), *sizes[:-1], last]) == total:
            sizes[-1] = last
            break
    data = raw_list([first] + [bytes([0x61 + i]) * n for i, n in enumerate(sizes)])
    assert len(data) == total
    return data, 1 + count


def identity_of(builder: Builder) -> NodeIdentity:
    """The builder's node identity: its log key is its identity key."""
    return NodeIdentity.from_seed(bytes(builder.signing_key))


# -- what it asks and what it returns -----------------------------------------------------------


async def test_returns_own_bundles_first_then_each_providers_bundles(client, builders):
    alpha, beta, gamma = builders
    own = alpha.bundle()
    from_beta, from_gamma = beta.bundle(), gamma.bundle()
    async with evidence_peers(2) as (p1, p2):
        p1.attestations = render_bundle_list([from_beta])
        p2.attestations = render_bundle_list([from_gamma])
        node = Node(client, [p1.url, p2.url], [own])
        got = await node.source.attestations_for(HASH)
    assert got[0] == own
    assert sorted(got[1:]) == sorted([from_beta, from_gamma])
    assert node.provider_calls == [HASH]
    assert node.local_calls[0][0] == HASH
    # The own bundle is proven from the log on disk: read off the event loop's thread.
    assert node.local_calls[0][1] != threading.current_thread().name
    for peer in (p1, p2):
        assert peer.asked == {ATTESTATIONS: 1, NODE: 1}
        assert node.misbehaved(peer.url) == 0


async def test_returned_bundles_are_what_the_verifier_accepts(client, builders, tmp_path):
    alpha, beta, _ = builders
    async with evidence_peers(1) as (peer,):
        peer.attestations = render_bundle_list([beta.bundle()])
        node = Node(client, [peer.url], [alpha.bundle()])
        got = await node.source.attestations_for(HASH)
    policy = TrustPolicy(mode=Mode.QUORUM, builders=(alpha.trusted, beta.trusted))
    with CheckpointStore(tmp_path / "checkpoints.sqlite") as store:
        evidence = await AttestationVerifier(store).verify(policy, ITEM, got)
    assert evidence.refusals == []
    assert {s.builder.name for s in evidence.statements} == {"alpha", "beta"}


async def test_asks_only_the_best_fanout_providers_in_ranking_order(client, builders):
    alpha = builders[0]
    bundles = bundles_of(alpha, 5)
    async with evidence_peers(5) as peers:
        for peer, bundle in zip(peers, bundles, strict=True):
            peer.attestations = render_bundle_list([bundle])
        node = Node(client, [p.url for p in peers], fanout=3)
        # Two providers with a bad record rank last; with fanout 3 they are not asked.
        node.ranking.record_misbehaved(peers[0].url)
        node.ranking.record_unavailable(peers[1].url)
        got = await node.source.attestations_for(HASH)
    assert [p.asked_for("/p2p/v1/attestations/") for p in peers] == [0, 0, 1, 1, 1]
    assert sorted(got) == sorted(bundles[2:])


async def test_fanout_one_asks_a_single_provider_and_zero_asks_none(client, builders):
    own = builders[0].bundle()
    async with evidence_peers(2) as peers:
        for peer in peers:
            peer.attestations = render_bundle_list([builders[1].bundle()])
        one = Node(client, [p.url for p in peers], [own], fanout=1)
        got_one = await one.source.attestations_for(HASH)
        assert sum(p.asked_for("/p2p/v1/attestations/") for p in peers) == 1
        assert len(got_one) == 2 and got_one[0] == own
        none = Node(client, [p.url for p in peers], [own], fanout=0)
        assert await none.source.attestations_for(HASH) == [own]
        assert sum(p.asked_for("/p2p/v1/attestations/") for p in peers) == 1


async def test_a_banned_provider_is_never_asked(client, builders):
    bundle = builders[1].bundle()
    async with evidence_peers(2) as (banned, good):
        banned.attestations = render_bundle_list([builders[2].bundle()])
        good.attestations = render_bundle_list([bundle])
        node = Node(client, [banned.url, good.url], fanout=3)
        for _ in range(node.ranking.ban_after):
            node.ranking.record_misbehaved(banned.url)
        assert await node.source.attestations_for(HASH) == [bundle]
    assert banned.asked == {}


async def test_no_providers_and_no_own_bundle_gives_nothing(client):
    node = Node(client, [])
    assert await node.source.attestations_for(HASH) == []
    assert node.provider_calls == [HASH]


async def test_a_provider_without_bundles_gives_nothing_and_is_not_asked_who_it_is(
    client, builders
):
    bundle = builders[0].bundle()
    async with evidence_peers(2) as (empty, full):
        empty.node = node_info_of(NodeIdentity.generate())  # 404 on attestations
        full.attestations = render_bundle_list([bundle])
        node = Node(client, [empty.url, full.url])
        assert await node.source.attestations_for(HASH) == [bundle]
    assert empty.asked == {ATTESTATIONS: 1}
    assert node.misbehaved(empty.url) == 0
    assert node.unavailable(empty.url) == 0  # "none here" is an answer, not a failure


# -- each bundle once, at most MAX_BUNDLES ------------------------------------------------------


async def test_a_bundle_listed_twice_or_by_several_peers_is_returned_once(client, builders):
    alpha, beta, _ = builders
    own, shared, other = alpha.bundle(), beta.bundle(), beta.bundle(ITEM, time=1_790_000_999)
    async with evidence_peers(3) as (p1, p2, p3):
        p1.attestations = render_bundle_list([shared, shared, other])
        p2.attestations = render_bundle_list([shared, own])
        p3.attestations = render_bundle_list([own, own])
        node = Node(client, [p1.url, p2.url, p3.url], [own, own])
        got = await node.source.attestations_for(HASH)
    assert got[0] == own
    assert sorted(got) == sorted([own, shared, other])
    assert all(node.misbehaved(p.url) == 0 for p in (p1, p2, p3))


async def test_more_than_max_bundles_are_cut_to_the_first_max_bundles(client, builders):
    alpha = builders[0]
    local = bundles_of(alpha, 4)
    listed = bundles_of(alpha, 3 * MAX_LISTED, start=100)
    async with evidence_peers(3) as peers:
        for i, peer in enumerate(peers):
            peer.attestations = render_bundle_list(listed[i * MAX_LISTED : (i + 1) * MAX_LISTED])
        node = Node(client, [p.url for p in peers], local)
        got = await node.source.attestations_for(HASH)
    assert len(got) == MAX_BUNDLES
    assert got[:4] == local
    assert len(set(got)) == MAX_BUNDLES
    assert set(got) <= set(local) | set(listed)


async def test_exactly_max_bundles_are_all_returned(client, builders):
    alpha = builders[0]
    local = bundles_of(alpha, MAX_BUNDLES - 2 * MAX_LISTED)
    listed = bundles_of(alpha, 2 * MAX_LISTED, start=100)
    async with evidence_peers(2) as peers:
        peers[0].attestations = render_bundle_list(listed[:MAX_LISTED])
        peers[1].attestations = render_bundle_list(listed[MAX_LISTED:])
        node = Node(client, [p.url for p in peers], local)
        got = await node.source.attestations_for(HASH)
    assert len(got) == MAX_BUNDLES
    assert set(got) == set(local) | set(listed)


# -- broken and hostile peers -------------------------------------------------------------------


@pytest.mark.parametrize("fault", [Status(500), Status(503), HANG], ids=["500", "503", "hang"])
async def test_a_failing_provider_gives_nothing_is_ranked_lower_and_others_are_used(
    client, builders, fault, caplog
):
    bundle = builders[0].bundle()
    async with evidence_peers(2) as (bad, good):
        bad.attestations = fault
        good.attestations = render_bundle_list([bundle])
        node = Node(client, [bad.url, good.url])
        started = time.monotonic()
        with caplog.at_level(logging.DEBUG, logger=SOURCE_LOG):
            got = await node.source.attestations_for(HASH)
        elapsed = time.monotonic() - started
    assert got == [bundle]
    assert elapsed < TIMEOUT + 1.5  # a hang costs the client's bound, not more
    assert node.misbehaved(bad.url) == 0
    # Not a liar, but not to be asked first next time: as on the transfer path.
    assert node.unavailable(bad.url) == 1
    assert node.unavailable(good.url) == 0
    assert bad.asked_for(NODE) == 0
    assert any(
        bad.url in r.getMessage() and "has no attestations" in r.getMessage()
        for r in caplog.records
    )


async def test_a_closed_port_gives_nothing_and_others_are_used(client, builders):
    bundle = builders[0].bundle()
    async with evidence_peers(1) as (gone,):
        gone_url = gone.url
    async with evidence_peers(1) as (good,):
        good.attestations = render_bundle_list([bundle])
        node = Node(client, [gone_url, good.url])
        assert await node.source.attestations_for(HASH) == [bundle]
    assert node.misbehaved(gone_url) == 0
    assert node.unavailable(gone_url) == 1


def _malformed_lists(bundle: bytes) -> dict[str, bytes]:
    good = render_bundle_list([bundle])
    return {
        "garbage": b"this is not a bundle list\n",
        "empty-body": b"",
        "wrong-header": good.replace(HEADER, b"p2pcache-bundles/v2", 1),
        "count-zero": b"%s 0\n" % HEADER,
        "count-over-32": raw_list([bundle] * (MAX_LISTED + 1)),
        "count-higher-than-listed": good.replace(b" 1\n", b" 2\n", 1),
        "truncated": good[:-10],
        "bytes-after-last": good + b"x",
        "length-zero": b"%s 1\n0\n" % HEADER,
        "leading-zero-length": b"%s 1\n0%d\n%s" % (HEADER, len(bundle), bundle),
    }


@pytest.mark.parametrize("case", sorted(_malformed_lists(b"x")))
async def test_a_malformed_list_gives_nothing_and_counts_against_the_peer(
    client, builders, case, caplog
):
    bundle = builders[0].bundle()
    async with evidence_peers(2) as (bad, good):
        bad.attestations = _malformed_lists(builders[1].bundle())[case]
        good.attestations = render_bundle_list([bundle])
        node = Node(client, [bad.url, good.url])
        with caplog.at_level(logging.INFO, logger=SOURCE_LOG):
            got = await node.source.attestations_for(HASH)
    assert got == [bundle]
    assert node.misbehaved(bad.url) == 1
    assert node.misbehaved(good.url) == 0
    assert bad.asked_for(NODE) == 0
    assert any(
        bad.url in r.getMessage() and "malformed list of attestations" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_list_at_the_4_mib_bound_is_taken_and_one_byte_more_is_refused(
    client, builders, chunked
):
    real = builders[0].bundle()
    at_bound, count = list_of_size(real, MAX_BUNDLE_LIST_SIZE)
    over, _ = list_of_size(real, MAX_BUNDLE_LIST_SIZE + 1)
    wrap = Chunked if chunked else bytes
    async with evidence_peers(1) as (peer,):
        peer.attestations = wrap(at_bound)
        node = Node(client, [peer.url])
        got = await node.source.attestations_for(HASH)
        assert len(got) == count and got[0] == real
        assert node.misbehaved(peer.url) == 0
        peer.attestations = wrap(over)
        assert await node.source.attestations_for(HASH) == []
        assert node.misbehaved(peer.url) == 1


async def test_a_peer_sending_malformed_lists_again_and_again_is_banned(client, builders):
    bundle = builders[0].bundle()
    async with evidence_peers(2) as (bad, good):
        bad.attestations = b"garbage"
        good.attestations = render_bundle_list([bundle])
        node = Node(client, [bad.url, good.url])
        for _ in range(node.ranking.ban_after):
            assert await node.source.attestations_for(HASH) == [bundle]
        assert node.ranking.is_banned(bad.url)
        asked = bad.asked_for("/p2p/v1/attestations/")
        assert await node.source.attestations_for(HASH) == [bundle]
    assert asked == node.ranking.ban_after
    assert bad.asked_for("/p2p/v1/attestations/") == asked


async def test_a_relayed_bundle_of_another_item_is_passed_on_for_the_verifier_to_refuse(
    client, builders, tmp_path
):
    # The source checks the list's framing only (a relaying peer vouches for nothing): the
    # bundle of another item reaches the verifier, which refuses it for this item.
    alpha, beta, _ = builders
    wrong, right = alpha.bundle(OTHER_ITEM), beta.bundle()
    async with evidence_peers(2) as (relay, good):
        relay.attestations = render_bundle_list([wrong])
        good.attestations = render_bundle_list([right])
        node = Node(client, [relay.url, good.url])
        got = await node.source.attestations_for(HASH)
    assert sorted(got) == sorted([wrong, right])
    policy = TrustPolicy(mode=Mode.QUORUM, builders=(alpha.trusted, beta.trusted))
    with CheckpointStore(tmp_path / "checkpoints.sqlite") as store:
        evidence = await AttestationVerifier(store).verify(policy, ITEM, got)
    assert [s.builder.name for s in evidence.statements] == ["beta"]
    assert len(evidence.refusals) == 1


# -- consistency proofs: asked only of the builder's proven URL ---------------------------------


async def test_a_builder_met_as_provider_serves_its_own_proofs(client, builders):
    alpha = builders[0]
    alpha.filler(5)
    bundle = alpha.bundle()
    alpha.filler(7)
    async with evidence_peers(1) as (peer,):
        peer.attestations = render_bundle_list([bundle])
        peer.node = node_info_of(identity_of(alpha))
        peer.consistency = proofs_of(alpha.log)
        node = Node(client, [peer.url])
        assert node.source.builder_url(alpha.public) is None
        await node.source.attestations_for(HASH)
        assert node.source.builder_url(alpha.public) == peer.url
        proof = await node.source.consistency_proof(alpha.public, 6, alpha.log.size)
    assert isinstance(proof, ConsistencyProof) and proof.from_builder
    assert peer.asked_for(CONSISTENCY) == 1
    verify_consistency(
        6, alpha.log.size, list(proof.hashes), alpha.log.root(6), alpha.log.root(alpha.log.size)
    )


async def test_no_proof_is_asked_for_a_builder_never_proven(client, builders):
    alpha = builders[0]
    alpha.filler(8)
    async with evidence_peers(1) as (peer,):
        peer.attestations = render_bundle_list([alpha.bundle()])
        peer.node = node_info_of(NodeIdentity.generate())  # a relay, not the builder
        peer.consistency = proofs_of(alpha.log)
        node = Node(client, [peer.url])
        await node.source.attestations_for(HASH)
        assert await node.source.consistency_proof(alpha.public, 4, 8) is None
    assert node.source.builder_url(alpha.public) is None
    assert peer.asked_for(CONSISTENCY) == 0


async def test_node_information_replayed_under_another_url_proves_nothing(client, builders):
    alpha = builders[0]
    alpha.filler(8)
    async with evidence_peers(2) as (builder_node, replayer):
        builder_node.node = node_info_of(identity_of(alpha))
        # The replayer serves the builder's own signed document, which names the builder's URL.
        replayer.node = lambda peer, request: node_info_of(identity_of(alpha))(
            builder_node, request
        )
        replayer.attestations = render_bundle_list([alpha.bundle()])
        replayer.consistency = proofs_of(alpha.log)
        node = Node(client, [replayer.url])
        await node.source.attestations_for(HASH)
        assert replayer.asked_for(NODE) == 1
        assert node.source.builder_url(alpha.public) is None
        assert await node.source.consistency_proof(alpha.public, 4, 8) is None
    assert replayer.asked_for(CONSISTENCY) == 0


async def test_a_shared_peer_keys_table_is_used_for_proofs(client, builders):
    alpha = builders[0]
    alpha.filler(10)
    async with evidence_peers(1) as (peer,):
        peer.node = node_info_of(identity_of(alpha))
        peer.consistency = proofs_of(alpha.log)
        keys = PeerKeys(client)
        assert await keys.key_of(peer.url) == alpha.public  # met by checkpoint gossip, say
        node = Node(client, [], peer_keys=keys)
        assert node.source.peer_keys is keys
        proof = await node.source.consistency_proof(alpha.public, 3, 10)
    assert proof == ConsistencyProof(tuple(alpha.log.consistency_proof(3, 10)), True)


async def test_a_proof_of_the_wrong_length_is_refused_and_counts_against_the_builder(
    client, builders, caplog
):
    alpha = builders[0]
    alpha.filler(10)
    async with evidence_peers(1) as (peer,):
        peer.node = node_info_of(identity_of(alpha))
        peer.consistency = b"".join(alpha.log.consistency_proof(3, 10))[:-32]
        keys = PeerKeys(client)
        await keys.key_of(peer.url)
        node = Node(client, [], peer_keys=keys)
        with caplog.at_level(logging.INFO, logger=SOURCE_LOG):
            assert await node.source.consistency_proof(alpha.public, 3, 10) is None
    assert node.misbehaved(peer.url) == 1
    assert any("malformed consistency proof" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fault", [None, Status(500), HANG], ids=["404", "500", "hang"])
async def test_a_missing_proof_is_none_and_no_blame_but_a_failure_ranks_lower(
    client, builders, fault, caplog
):
    alpha = builders[0]
    alpha.filler(10)
    async with evidence_peers(1) as (peer,):
        peer.node = node_info_of(identity_of(alpha))
        peer.consistency = fault
        keys = PeerKeys(client)
        await keys.key_of(peer.url)
        node = Node(client, [], peer_keys=keys)
        with caplog.at_level(logging.INFO, logger=SOURCE_LOG):
            assert await node.source.consistency_proof(alpha.public, 3, 10) is None
    assert peer.asked_for(CONSISTENCY) == 1
    assert node.misbehaved(peer.url) == 0
    logged = any("could not get a consistency proof" in r.getMessage() for r in caplog.records)
    assert logged == (fault is not None)  # a 404 is no answer, not a failure
    assert node.unavailable(peer.url) == (fault is not None)  # a failure ranks it lower
