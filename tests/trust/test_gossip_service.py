"""GossipService on its own: one pull round against real peers on loopback, judged whole.

The multi-node tests (tests/integration/test_checkpoint_gossip_nodes.py) show gossip catching a
split view between running nodes; this file pins the service's own contract, with real parts:
real builder keys and Merkle logs (tests/trust/conftest.py), a real CheckpointStore in
tmp_path, a real PeerClient and aiohttp peers on 127.0.0.1 (tests/trust/scripted_peer.py) that
answer real signed notes, proofs and node information, or hostile and broken bodies.

Checked: what a round asks (at most `fanout` distinct peers, proofs only of the builder
itself), what it stores and what the node then serves; that every unusable note or list is
refused with nothing stored and counted (unknown origin, forged or tampered signature, garbage,
rollback, oversized or malformed lists, 500, a hang, a closed port); the list bounds (256 notes,
1 MiB, 64 KiB per note) at their edges; forks found, kept and counted; and that a failing peer
or round does not stop the next one.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from p2pcache.net.identity import NodeIdentity
from p2pcache.net.node_info import sign_node_info
from p2pcache.net.peer_client import PeerClient
from p2pcache.trust.attestation_verifier import (
    ConsistencyProof,
    ConsistencyProofSource,
    no_consistency_proofs,
)
from p2pcache.trust.checkpoint import Checkpoint, sign_checkpoint
from p2pcache.trust.checkpoint_list import (
    MAX_CHECKPOINT_LIST_SIZE,
    MAX_LISTED_CHECKPOINTS,
    render_checkpoint_list,
)
from p2pcache.trust.checkpoint_store import CheckpointStore
from p2pcache.trust.gossip import CheckpointGossip
from p2pcache.trust.gossip_service import GossipService
from p2pcache.trust.log_watch_metrics import LogWatchCounters
from p2pcache.trust.signed_note import (
    MAX_NOTE_SIZE,
    Ed25519NoteSigner,
    render_note,
    sign_note,
)
from tests.net.peer_servers import builder_server
from tests.trust.builders import proofs_from
from tests.trust.scripted_peer import (  # noqa: F401 (client: a fixture)
    HANG,
    TIMEOUT,
    Chunked,
    ScriptedPeer,
    Status,
    client_fixture,
    node_info_of,
    padded_note,
    proofs_of,
    rounds_until,
    scripted_peer,
    scripted_peers,
)
from tests.trust.test_checkpoint_store import Builder

LIST_PATH = "/p2p/v1/checkpoints"
CONSISTENCY_PATH = "/p2p/v1/log/consistency/"


@pytest.fixture
def store(tmp_path):
    with CheckpointStore(tmp_path / "node-checkpoints.sqlite") as s:
        yield s


@dataclass
class GossipNode:
    """The node side: its store, the service under test, and what the service counted."""

    store: CheckpointStore
    service: GossipService
    counters: LogWatchCounters
    forks: list = field(default_factory=list)


def gossip_node(
    store: CheckpointStore,
    client: PeerClient,
    peers,
    tracked: set[bytes],
    *,
    fanout: int = 8,
    proof_source: ConsistencyProofSource = no_consistency_proofs,
) -> GossipNode:
    forks: list = []
    counters = LogWatchCounters(on_fork=forks.append)
    gossip = CheckpointGossip(store, lambda: tracked)
    peer_urls = peers if callable(peers) else (lambda: list(peers))
    service = GossipService(
        gossip, client, peer_urls, fanout=fanout, counters=counters, proof_source=proof_source
    )
    return GossipNode(store, service, counters, forks)


def identity_of(builder: Builder) -> NodeIdentity:
    """The builder's node identity: its log key is its identity key."""
    return NodeIdentity.from_seed(bytes(builder.key))


def relaying(peer: ScriptedPeer, *notes: bytes) -> ScriptedPeer:
    """A peer that is not the builder (its own identity) passing on `notes`; it would even
    serve consistency proofs if asked (an empty one), so a test sees whether it is asked."""
    peer.checkpoints = render_checkpoint_list(list(notes))
    peer.node = node_info_of(NodeIdentity.generate())
    peer.consistency = b""
    return peer


def as_builder(peer: ScriptedPeer, builder: Builder, *notes: bytes) -> ScriptedPeer:
    """The builder's own node: signed node information naming this URL, proofs from its log."""
    peer.checkpoints = render_checkpoint_list(list(notes))
    peer.node = node_info_of(identity_of(builder))
    peer.consistency = proofs_of(builder.log)
    return peer


def raw_list(notes: list[bytes]) -> bytes:
    """A checkpoint list framed as the protocol says, without the renderer's bounds."""
    return b"p2pcache-checkpoints/v1 %d\n" % len(notes) + b"".join(
        b"%d\n%s" % (len(note), note) for note in notes
    )


def list_of_size(first: bytes, total: int) -> bytes:
    """A well-framed list of exactly `total` bytes: `first`, then garbage notes filling it."""
    notes = [first]
    while True:
        left = total - len(raw_list([*notes, b""])) + 2  # room for the last note, framed
        if left <= MAX_NOTE_SIZE + 6:
            break
        notes.append(b"g" * MAX_NOTE_SIZE)
    last = next(n for n in range(left - 8, left) if len(b"%d\n" % n) + n == left)
    data = raw_list([*notes, b"g" * last])
    assert len(data) == total
    return data


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def forks_of(node: GossipNode, builder: Builder) -> list[str]:
    return [e.kind for e in node.store.fork_evidence(builder.origin)]


# -- the normal round ---------------------------------------------------------------------------


async def test_a_round_takes_a_tracked_builders_checkpoint_from_a_relay_and_serves_it_on(
    tmp_path, store, client, builder
):
    note = builder.checkpoint(20).note
    async with scripted_peer() as relay:
        relaying(relay, note)
        node = gossip_node(store, client, [relay.url], {builder.public})
        assert await node.service.pull_once() == {relay.url: ["first-seen"]}
        # One list fetched; a first checkpoint needs no proof, so nothing else was asked.
        assert relay.asked == Counter({LIST_PATH: 1})
    latest = store.latest(builder.origin)
    assert latest.size == 20 and latest.note == note
    assert node.counters.gossip_pulls == Counter({"ok": 1})
    assert node.counters.gossip_checkpoints == Counter({"first-seen": 1})
    assert node.forks == [] and not store.is_forked(builder.origin)
    # What the node accepted is what its peer API passes on, byte for byte.
    checkpoint_notes = node.service.gossip.newest_notes
    async with builder_server(tmp_path, None, checkpoint_notes=checkpoint_notes) as (url, _):
        assert await client.fetch_checkpoint_list(url) == [note]


async def test_a_peer_with_nothing_to_gossip_is_a_good_pull_with_no_notes(store, client, builder):
    async with scripted_peer() as empty:  # every route 404
        node = gossip_node(store, client, [empty.url], {builder.public})
        assert await node.service.pull_once() == {empty.url: []}
    assert node.counters.gossip_pulls == Counter({"ok": 1})
    assert store.latest_checkpoints(10) == []


async def test_a_newer_checkpoint_from_a_relay_waits_for_a_proof_and_the_relay_is_never_asked(
    store, client, builder
):
    store.observe(builder.checkpoint(20))
    async with scripted_peer() as relay:
        relaying(relay, builder.checkpoint(30).note)
        node = gossip_node(store, client, [relay.url], {builder.public})
        assert await node.service.pull_once() == {relay.url: ["awaiting-proof"]}
        assert relay.asked["/p2p/v1/node"] == 1  # who is it? not the builder
        assert relay.asked_for(CONSISTENCY_PATH) == 0
    assert store.latest(builder.origin).size == 20
    assert node.counters.gossip_checkpoints == Counter({"awaiting-proof": 1})


async def test_a_newer_checkpoint_advances_with_a_proof_from_the_proof_source(
    store, client, builder
):
    store.observe(builder.checkpoint(20))
    asked = []
    real_source = proofs_from([builder], from_builder=False)

    async def source(key: bytes, old: int, new: int) -> ConsistencyProof | None:
        asked.append((key, old, new))
        return await real_source(key, old, new)

    async with scripted_peer() as relay:
        relaying(relay, builder.checkpoint(30).note)
        node = gossip_node(store, client, [relay.url], {builder.public}, proof_source=source)
        assert await node.service.pull_once() == {relay.url: ["advanced"]}
        assert relay.asked_for(CONSISTENCY_PATH) == 0
    assert asked == [(builder.public, 20, 30)]
    assert store.latest(builder.origin).size == 30


async def test_a_failing_proof_from_anyone_but_the_builder_is_missing_not_evidence(
    store, client, builder, forked
):
    store.observe(builder.checkpoint(20))
    # The rewritten history's checkpoint, and a proof from that history: it cannot link to 20.
    source = proofs_from([forked], from_builder=False)
    async with scripted_peer() as relay:
        relaying(relay, forked.checkpoint(30).note)
        node = gossip_node(store, client, [relay.url], {builder.public}, proof_source=source)
        assert await node.service.pull_once() == {relay.url: ["awaiting-proof"]}
    assert not store.is_forked(builder.origin) and forks_of(node, builder) == []
    assert node.forks == []
    assert store.latest(builder.origin).size == 20


async def test_the_builder_itself_proves_its_growth_and_the_proof_source_is_not_needed(
    store, client, builder
):
    store.observe(builder.checkpoint(20))
    asked = []

    async def source(key: bytes, old: int, new: int) -> ConsistencyProof | None:
        asked.append((old, new))
        return None

    async with scripted_peer() as own:
        as_builder(own, builder, builder.checkpoint(30).note)
        node = gossip_node(store, client, [own.url], {builder.public}, proof_source=source)
        assert await node.service.pull_once() == {own.url: ["advanced"]}
        assert own.asked[CONSISTENCY_PATH + "20/30"] == 1
    assert asked == []
    assert store.latest(builder.origin).size == 30


async def test_when_the_builder_has_no_proof_the_proof_source_is_asked_next(store, client, builder):
    store.observe(builder.checkpoint(20))
    async with scripted_peer() as own:
        as_builder(own, builder, builder.checkpoint(30).note)
        own.consistency = Status(500)
        source = proofs_from([builder], from_builder=False)
        node = gossip_node(store, client, [own.url], {builder.public}, proof_source=source)
        assert await node.service.pull_once() == {own.url: ["advanced"]}
        assert own.asked[CONSISTENCY_PATH + "20/30"] == 1
    assert store.latest(builder.origin).size == 30


# -- forks ---------------------------------------------------------------------------------------


async def test_a_failing_proof_served_by_the_builder_itself_is_fork_evidence(
    store, client, builder, forked, caplog
):
    store.observe(builder.checkpoint(20))
    async with scripted_peer() as own:
        # The same key serving its rewritten history, and a proof from that history.
        as_builder(own, forked, forked.checkpoint(30).note)
        node = gossip_node(store, client, [own.url], {builder.public})
        with caplog.at_level(logging.ERROR, logger="p2pcache.trust.gossip_service"):
            assert await node.service.pull_once() == {own.url: ["fork-detected"]}
    assert store.is_forked(builder.origin)
    (evidence,) = store.fork_evidence(builder.origin)
    assert evidence.kind == "inconsistent"
    assert evidence.proof == tuple(forked.log.consistency_proof(20, 30))
    assert evidence.second_note == forked.checkpoint(30).note
    # on_fork hears the evidence, as from the witness and the attestation verifier.
    assert node.forks == [evidence]
    assert node.counters.gossip_checkpoints == Counter({"fork-detected": 1})
    assert "FORKED" in caplog.text and own.url in caplog.text
    assert store.latest(builder.origin).size == 20


async def test_a_peer_replaying_the_builders_node_information_cannot_frame_it(
    store, client, builder, forked
):
    """The builder's signed node information names the builder's URL: served elsewhere it
    proves nothing, so that peer's failing proof is never asked for and never evidence."""
    store.observe(builder.checkpoint(20))
    replayed = sign_node_info(identity_of(builder), "p2pcache", "http://127.0.0.1:9", 1)
    async with scripted_peer() as impostor:
        as_builder(impostor, forked, forked.checkpoint(30).note)
        impostor.node = replayed
        node = gossip_node(store, client, [impostor.url], {builder.public})
        assert await node.service.pull_once() == {impostor.url: ["awaiting-proof"]}
        assert impostor.asked["/p2p/v1/node"] == 1
        assert impostor.asked_for(CONSISTENCY_PATH) == 0
    assert not store.is_forked(builder.origin) and node.forks == []


async def test_two_roots_for_one_size_from_any_peer_are_fork_evidence_for_good(
    store, client, builder, forked
):
    store.observe(builder.checkpoint(25))
    async with scripted_peer() as relay:
        relaying(relay, forked.checkpoint(25).note)
        node = gossip_node(store, client, [relay.url], {builder.public})
        assert await node.service.pull_once() == {relay.url: ["fork-detected"]}
        assert forks_of(node, builder) == ["same-size"]
        assert len(node.forks) == 1
        # Afterwards nothing that builder signs is taken, not even its honest growth.
        relaying(relay, builder.checkpoint(40).note)
        assert await node.service.pull_once() == {relay.url: ["builder-forked"]}
        assert relay.asked_for(CONSISTENCY_PATH) == 0
    assert store.latest(builder.origin).size == 25
    assert len(node.forks) == 1
    assert node.counters.gossip_checkpoints == Counter({"fork-detected": 1, "builder-forked": 1})


# -- refusals ------------------------------------------------------------------------------------


async def test_a_rollback_to_a_smaller_tree_is_refused_unless_the_builder_proves_a_prefix(
    store, client, builder
):
    store.observe(builder.checkpoint(30))
    older = builder.checkpoint(20).note
    async with scripted_peer() as relay, scripted_peer() as own:
        relaying(relay, older)
        node = gossip_node(store, client, [relay.url], {builder.public})
        assert await node.service.pull_from(relay.url) == ["rollback-refused"]
        assert store.latest(builder.origin).size == 30
        # The builder itself proves 20 is a prefix of 30: confirmed, and still not the newest.
        as_builder(own, builder, older)
        assert await node.service.pull_from(own.url) == ["older-consistent"]
        assert own.asked[CONSISTENCY_PATH + "20/30"] == 1
    assert store.latest(builder.origin).size == 30
    assert node.forks == []
    assert node.counters.gossip_checkpoints == Counter(
        {"rollback-refused": 1, "older-consistent": 1}
    )


async def test_strangers_forgeries_and_garbage_are_dropped_and_the_rest_of_the_list_is_taken(
    tmp_path, store, client, builder
):
    stranger = Builder(tmp_path, "stranger")
    stranger.grow(5)
    honest = builder.checkpoint(20).note
    # A stranger's log, even with a broken signature: dropped as unknown, unread.
    stranger_note = stranger.checkpoint(5).note
    stranger_broken = stranger_note.replace(b"\n5\n", b"\n4\n", 1)
    not_a_builder = sign_checkpoint(Checkpoint("example.com/log", 3, bytes(32)), stranger.key)
    # The tracked builder's origin signed by another key; its own note with the size changed;
    # its key signing a text with an extension line; bytes that are no note at all.
    forged = sign_checkpoint(Checkpoint(builder.origin, 20, builder.log.root(20)), stranger.key)
    tampered = honest.replace(b"\n20\n", b"\n21\n", 1)
    extended_text = honest.split(b"\n\n")[0] + b"\nextension\n"
    extended = render_note(
        sign_note(extended_text, [Ed25519NoteSigner(builder.origin, builder.key)])
    )
    notes = [stranger_note, stranger_broken, not_a_builder, forged, tampered, extended]
    async with scripted_peer() as relay:
        relaying(relay, *notes, b"garbage", honest)
        node = gossip_node(store, client, [relay.url], {builder.public})
        outcomes = await node.service.pull_from(relay.url)
    assert outcomes == ["unknown-origin"] * 3 + ["invalid"] * 4 + ["first-seen"]
    assert store.latest(stranger.origin) is None
    assert [c.note for c in store.latest_checkpoints(10)] == [honest]
    assert node.counters.gossip_checkpoints == Counter(
        {"unknown-origin": 3, "invalid": 4, "first-seen": 1}
    )
    assert node.counters.gossip_pulls == Counter({"ok": 1})
    stranger.log.close()


async def test_tracked_builders_are_read_again_on_every_pull(store, client, builder):
    tracked: set[bytes] = set()
    note = builder.checkpoint(20).note
    async with scripted_peer() as relay:
        relaying(relay, note)
        node = gossip_node(store, client, [relay.url], tracked)
        assert await node.service.pull_once() == {relay.url: ["unknown-origin"]}
        assert store.latest(builder.origin) is None
        tracked.add(builder.public)
        assert await node.service.pull_once() == {relay.url: ["first-seen"]}
    assert store.latest(builder.origin).note == note


def _unusable_lists(note: bytes) -> dict[str, tuple[object, str]]:
    """Answers on the list route that are refused whole, and how the pull is counted. Each
    list holds the tracked builder's valid note, so 'nothing stored' means something."""
    framed = render_checkpoint_list([note])
    return {
        "500": (Status(500), "unavailable"),
        "503": (Status(503), "unavailable"),
        "hang": (HANG, "unavailable"),
        "not a list": (b"<html>hello</html>", "misbehaved"),
        "truncated": (framed[:-10], "misbehaved"),
        "count too high": (framed.replace(b"v1 1\n", b"v1 2\n", 1), "misbehaved"),
        "trailing bytes": (framed + b"x", "misbehaved"),
        "length with a leading zero": (
            framed.replace(b"\n%d\n" % len(note), b"\n0%d\n" % len(note), 1),
            "misbehaved",
        ),
        "257 notes": (raw_list([note] * (MAX_LISTED_CHECKPOINTS + 1)), "misbehaved"),
        "a note over 64 KiB": (
            raw_list([note, padded_note(note, MAX_NOTE_SIZE + 1)]),
            "misbehaved",
        ),
        "over 1 MiB, announced": (list_of_size(note, MAX_CHECKPOINT_LIST_SIZE + 1), "misbehaved"),
        "over 1 MiB, chunked": (
            Chunked(list_of_size(note, 2 * MAX_CHECKPOINT_LIST_SIZE)),
            "misbehaved",
        ),
    }


CASES = [
    "500",
    "503",
    "hang",
    "not a list",
    "truncated",
    "count too high",
    "trailing bytes",
    "length with a leading zero",
    "257 notes",
    "a note over 64 KiB",
    "over 1 MiB, announced",
    "over 1 MiB, chunked",
]


@pytest.mark.parametrize("case", CASES)
async def test_an_unusable_list_is_refused_whole_counted_and_stores_nothing(
    store, client, builder, case, caplog
):
    answer, label = _unusable_lists(builder.checkpoint(20).note)[case]
    async with scripted_peer() as peer:
        peer.checkpoints = answer
        node = gossip_node(store, client, [peer.url], {builder.public})
        started = time.monotonic()
        with caplog.at_level(logging.DEBUG, logger="p2pcache.trust.gossip_service"):
            assert await node.service.pull_once() == {peer.url: []}
        assert time.monotonic() - started < TIMEOUT + 2
        assert peer.asked[LIST_PATH] == 1
    assert node.counters.gossip_pulls == Counter({label: 1})
    assert node.counters.gossip_checkpoints == Counter()
    assert store.latest_checkpoints(10) == []
    expected = "unusable list" if label == "misbehaved" else "unavailable"
    assert expected in caplog.text and peer.url in caplog.text


async def test_a_peer_that_cannot_be_reached_is_counted_unavailable(store, client, builder):
    url = closed_port_url()
    node = gossip_node(store, client, [url], {builder.public})
    assert await node.service.pull_once() == {url: []}
    assert node.counters.gossip_pulls == Counter({"unavailable": 1})


# -- bounds --------------------------------------------------------------------------------------


async def test_a_list_of_256_notes_is_judged_note_by_note(store, client, builder):
    note = builder.checkpoint(20).note
    async with scripted_peer() as relay:
        relaying(relay, *[note] * MAX_LISTED_CHECKPOINTS)
        node = gossip_node(store, client, [relay.url], {builder.public})
        outcomes = await node.service.pull_from(relay.url)
    assert outcomes == ["first-seen"] + ["unchanged"] * (MAX_LISTED_CHECKPOINTS - 1)
    assert node.counters.gossip_checkpoints["unchanged"] == MAX_LISTED_CHECKPOINTS - 1


async def test_a_list_of_exactly_1_MiB_is_taken(store, client, builder):
    note = builder.checkpoint(20).note
    async with scripted_peer() as relay:
        relay.checkpoints = list_of_size(note, MAX_CHECKPOINT_LIST_SIZE)
        node = gossip_node(store, client, [relay.url], {builder.public})
        outcomes = await node.service.pull_from(relay.url)
    assert outcomes[0] == "first-seen" and set(outcomes[1:]) == {"invalid"}
    assert node.counters.gossip_pulls == Counter({"ok": 1})
    assert store.latest(builder.origin).note == note


async def test_a_note_of_exactly_64_KiB_is_taken_as_it_was_signed(store, client, builder):
    note = padded_note(builder.checkpoint(20).note, MAX_NOTE_SIZE)
    async with scripted_peer() as relay:
        relaying(relay, note)
        node = gossip_node(store, client, [relay.url], {builder.public})
        assert await node.service.pull_from(relay.url) == ["first-seen"]
    assert store.latest(builder.origin).note == note


async def test_a_round_asks_at_most_fanout_distinct_peers_once_each(store, client, builder):
    note = builder.checkpoint(20).note
    async with scripted_peers(5) as peers:
        for peer in peers:
            relaying(peer, note)
        urls = [p.url for p in peers]
        node = gossip_node(store, client, urls, {builder.public}, fanout=2)
        result = await node.service.pull_once()
        assert len(result) == 2 and set(result) <= set(urls)
        assert sorted(p.asked[LIST_PATH] for p in peers) == [0, 0, 0, 1, 1]
        assert sorted(result.values()) == [["first-seen"], ["unchanged"]]
        # More room than peers, each named three times: every peer once, no more.
        node = gossip_node(store, client, urls * 3, {builder.public}, fanout=20)
        assert set(await node.service.pull_once()) == set(urls)
        assert sorted(p.asked[LIST_PATH] for p in peers) == [1, 1, 1, 2, 2]
        # No room at all: nobody is asked.
        node = gossip_node(store, client, urls, {builder.public}, fanout=0)
        assert await node.service.pull_once() == {}
        assert sum(p.asked[LIST_PATH] for p in peers) == 7


# -- failures do not stop the rest ---------------------------------------------------------------


async def test_a_round_goes_on_past_hanging_broken_and_hostile_peers(store, client, builder):
    note = builder.checkpoint(20).note
    dead = closed_port_url()
    async with scripted_peers(4) as (hanging, failing, hostile, good):
        hanging.checkpoints = HANG
        failing.checkpoints = Status(500)
        hostile.checkpoints = b"p2pcache-checkpoints/v1 9\n1\nx"
        relaying(good, note)
        urls = [hanging.url, dead, failing.url, hostile.url, good.url]
        node = gossip_node(store, client, urls, {builder.public}, fanout=len(urls))
        started = time.monotonic()
        result = await node.service.pull_once()
        assert time.monotonic() - started < TIMEOUT + 2
    assert result == {
        hanging.url: [],
        dead: [],
        failing.url: [],
        hostile.url: [],
        good.url: ["first-seen"],
    }
    assert node.counters.gossip_pulls == Counter({"unavailable": 3, "misbehaved": 1, "ok": 1})
    assert store.latest(builder.origin).note == note


async def test_a_peer_that_failed_is_pulled_again_next_round(store, client, builder):
    note = builder.checkpoint(20).note
    async with scripted_peer() as peer:
        peer.checkpoints = Status(500)
        node = gossip_node(store, client, [peer.url], {builder.public})
        assert await node.service.pull_once() == {peer.url: []}
        relaying(peer, note)
        assert await node.service.pull_once() == {peer.url: ["first-seen"]}
    assert node.counters.gossip_pulls == Counter({"unavailable": 1, "ok": 1})


async def test_periodic_rounds_go_on_after_a_failing_round(store, client, builder, caplog):
    note = builder.checkpoint(20).note
    calls = []

    async with scripted_peer() as peer:

        def peers() -> list[str]:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("the peer table is not ready")
            return [peer.url]

        answers = iter([Status(500)])
        listed = render_checkpoint_list([note])
        peer.checkpoints = lambda peer, request: next(answers, listed)
        node = gossip_node(store, client, peers, {builder.public})
        with caplog.at_level(logging.ERROR, logger="p2pcache.trust.periodic_rounds"):
            await rounds_until(
                "checkpoint gossip",
                node.service.pull_once,
                lambda: store.latest(builder.origin) is not None,
            )
    assert store.latest(builder.origin).note == note
    assert len(calls) >= 3  # the failing round, the 500 round, the good one
    assert node.counters.gossip_pulls["unavailable"] == 1
    assert node.counters.gossip_pulls["ok"] >= 1
    assert "checkpoint gossip failed" in caplog.text
