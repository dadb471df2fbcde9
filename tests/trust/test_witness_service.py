"""WitnessService on its own: one watch round over builder logs served by real loopback peers.

The witness's decisions are tested in test_witness.py and the three-node flow in
tests/integration/test_witness_nodes.py; this file pins the running shell between them, with
real parts: real builder keys and Merkle logs (tests/trust/conftest.py), a real Witness (its
SQLite files in tmp_path), a real PeerClient, and aiohttp peers on 127.0.0.1
(tests/trust/scripted_peer.py) answering the builder's real checkpoints and consistency
proofs, or hostile and broken answers.

Checked: what a round fetches (the checkpoint, then a proof from the last cosigned size, only
when the log grew) and what it cosigns and then serves on the peer API; every refusal (a
checkpoint signed by another key or tampered, a rollback, a rewritten history, a 500, a hang,
a malformed or oversized body, a missing or bad proof) with nothing cosigned, an outcome
counted and a log line; the 64 KiB checkpoint bound at its edge; every watched log once per
round; and that a failing log or round does not stop the others or the next round.
"""

from __future__ import annotations

import base64
import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from p2pcache.net.peer_client import PeerClient
from p2pcache.trust.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from p2pcache.trust.cosignature import Cosigner
from p2pcache.trust.log_watch_metrics import LogWatchCounters
from p2pcache.trust.signed_note import (
    MAX_NOTE_SIGNATURES,
    MAX_NOTE_SIZE,
    Note,
    parse_note,
    render_note,
)
from p2pcache.trust.witness import (
    WatchedLog,
    Witness,
    witness_name,
    witness_verifier,
)
from p2pcache.trust.witness_service import WitnessService
from tests.net.peer_servers import builder_server
from tests.trust.scripted_peer import (  # noqa: F401 (client: a fixture)
    HANG,
    TIMEOUT,
    Chunked,
    ScriptedPeer,
    Status,
    client_fixture,
    padded_note,
    proofs_of,
    rounds_until,
    scripted_peer,
    scripted_peers,
)
from tests.trust.test_checkpoint_store import Builder, key

NOW = 1_790_000_000
WITNESS_KEY = key("the witness")
WITNESS_PUBLIC = bytes(WITNESS_KEY.verify_key)
CHECKPOINT_PATH = "/p2p/v1/log/checkpoint"
CONSISTENCY_PATH = "/p2p/v1/log/consistency/"
SERVICE_LOG = "p2pcache.trust.witness_service"


@pytest.fixture
def witness(tmp_path):
    cosigner = Cosigner(witness_name(WITNESS_PUBLIC), WITNESS_KEY)
    with Witness(tmp_path / "witness.sqlite", cosigner, now=lambda: NOW) as w:
        yield w


@dataclass
class Watching:
    service: WitnessService
    counters: LogWatchCounters
    forks: list = field(default_factory=list)

    async def round(self) -> dict[str, str]:
        return await self.service.watch_once()


def watching(witness: Witness, client: PeerClient, *logs: tuple[Builder, str]) -> Watching:
    forks: list = []
    counters = LogWatchCounters(on_fork=forks.append)
    watched = [WatchedLog(b.public, url) for b, url in logs]
    return Watching(WitnessService(witness, client, watched, counters=counters), counters, forks)


def serving(peer: ScriptedPeer, builder: Builder, size: int) -> ScriptedPeer:
    """The builder's node: its checkpoint at `size`, consistency proofs from its log."""
    peer.checkpoint = builder.checkpoint(size).note
    peer.consistency = proofs_of(builder.log)
    return peer


def cosigned_size(witness: Witness, builder: Builder) -> int:
    """The size of the checkpoint the witness serves, checked as a verifier requiring it."""
    verified = verify_checkpoint(
        witness.cosigned(builder.origin),
        builder.public,
        witnesses=[witness_verifier(WITNESS_PUBLIC)],
        required_cosignatures=1,
    )
    return verified.size


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- the normal rounds ---------------------------------------------------------------------------


async def test_a_first_round_cosigns_the_checkpoint_on_its_signature_and_serves_it(
    tmp_path, witness, client, builder, caplog
):
    async with scripted_peer() as peer:
        serving(peer, builder, 20)
        w = watching(witness, client, (builder, peer.url))
        with caplog.at_level(logging.INFO, logger=SERVICE_LOG):
            assert await w.round() == {builder.origin: "cosigned"}
        # Trust on first use: the checkpoint, and no proof (there is nothing to link from).
        assert peer.asked == Counter({CHECKPOINT_PATH: 1})
    assert cosigned_size(witness, builder) == 20
    (cosignature,) = verify_checkpoint(
        witness.cosigned(builder.origin),
        builder.public,
        witnesses=[witness_verifier(WITNESS_PUBLIC)],
    ).cosignatures
    assert cosignature.timestamp == NOW
    assert w.counters.witness_checkpoints == Counter({"cosigned": 1})
    assert "cosigned the checkpoint" in caplog.text
    # The witness's peer API serves exactly what was cosigned.
    async with builder_server(tmp_path, None, witness=witness) as (url, _):
        served = await client.fetch_cosigned_checkpoint(url, builder.public)
    assert served == witness.cosigned(builder.origin)


async def test_the_same_checkpoint_next_round_keeps_its_cosignature_and_asks_no_proof(
    witness, client, builder
):
    async with scripted_peer() as peer:
        serving(peer, builder, 20)
        w = watching(witness, client, (builder, peer.url))
        await w.round()
        first = witness.cosigned(builder.origin)
        assert await w.round() == {builder.origin: "already-cosigned"}
        assert peer.asked == Counter({CHECKPOINT_PATH: 2})
    assert witness.cosigned(builder.origin) == first
    assert w.counters.witness_checkpoints == Counter({"cosigned": 1, "already-cosigned": 1})


async def test_growth_is_cosigned_after_the_builders_own_consistency_proof(
    witness, client, builder
):
    async with scripted_peer() as peer:
        serving(peer, builder, 20)
        w = watching(witness, client, (builder, peer.url))
        await w.round()
        serving(peer, builder, 30)
        assert await w.round() == {builder.origin: "cosigned"}
        assert peer.asked[CONSISTENCY_PATH + "20/30"] == 1
        assert peer.asked_for(CONSISTENCY_PATH) == 1
    assert cosigned_size(witness, builder) == 30
    assert witness.last_size(builder.origin) == 30
    assert w.counters.witness_checkpoints == Counter({"cosigned": 2})


BAD_PROOFS = {
    "404": None,
    "500": Status(500),
    "hang": HANG,
    "too few hashes": bytes(32),
    "not whole hashes": bytes(100),
    "oversized, chunked": Chunked(bytes(64 * 32 * 2)),
}


@pytest.mark.parametrize("case", list(BAD_PROOFS))
async def test_growth_without_a_usable_proof_waits_and_is_cosigned_once_the_proof_comes(
    witness, client, builder, case, caplog
):
    async with scripted_peer() as peer:
        serving(peer, builder, 20)
        w = watching(witness, client, (builder, peer.url))
        await w.round()
        peer.checkpoint = builder.checkpoint(30).note
        peer.consistency = BAD_PROOFS[case]
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger=SERVICE_LOG):
            assert await w.round() == {builder.origin: "awaiting-proof"}
        assert time.monotonic() - started < TIMEOUT + 2
        # No proof is no evidence: the old cosignature stands, the log is not abandoned.
        assert cosigned_size(witness, builder) == 20
        assert not witness.is_forked(builder.origin) and w.forks == []
        if case != "404":
            assert "no consistency proof" in caplog.text
        peer.consistency = proofs_of(builder.log)
        assert await w.round() == {builder.origin: "cosigned"}
        assert peer.asked[CONSISTENCY_PATH + "20/30"] == 2
    assert cosigned_size(witness, builder) == 30
    assert w.counters.witness_checkpoints == Counter({"cosigned": 2, "awaiting-proof": 1})


# -- forks and rollbacks -------------------------------------------------------------------------


async def test_a_rewritten_history_proven_by_the_builder_is_fork_evidence_and_ends_cosigning(
    witness, client, builder, forked, caplog
):
    async with scripted_peer() as peer:
        serving(peer, builder, 20)
        w = watching(witness, client, (builder, peer.url))
        await w.round()
        serving(peer, forked, 30)  # same key, rewritten log, and a proof from that log
        with caplog.at_level(logging.ERROR, logger=SERVICE_LOG):
            assert await w.round() == {builder.origin: "fork-detected"}
        assert "FORKED" in caplog.text and peer.url in caplog.text
        (evidence,) = w.forks
        assert evidence.kind == "inconsistent"
        assert evidence.second_note == forked.checkpoint(30).note
        assert evidence.proof == tuple(forked.log.consistency_proof(20, 30))
        assert witness.is_forked(builder.origin)
        # For good: not even the honest continuation is cosigned afterwards.
        serving(peer, builder, 40)
        assert await w.round() == {builder.origin: "log-forked"}
    assert cosigned_size(witness, builder) == 20
    assert len(w.forks) == 1
    assert w.counters.witness_checkpoints == Counter(
        {"cosigned": 1, "fork-detected": 1, "log-forked": 1}
    )


async def test_two_roots_for_one_size_are_fork_evidence_without_asking_a_proof(
    witness, client, builder, forked
):
    async with scripted_peer() as peer:
        serving(peer, builder, 25)
        w = watching(witness, client, (builder, peer.url))
        await w.round()
        serving(peer, forked, 25)
        assert await w.round() == {builder.origin: "fork-detected"}
        assert peer.asked_for(CONSISTENCY_PATH) == 0
    assert [e.kind for e in w.forks] == ["same-size"]
    assert cosigned_size(witness, builder) == 25


async def test_a_rollback_to_a_smaller_tree_is_never_cosigned(witness, client, builder, caplog):
    async with scripted_peer() as peer:
        serving(peer, builder, 30)
        w = watching(witness, client, (builder, peer.url))
        await w.round()
        serving(peer, builder, 20)
        with caplog.at_level(logging.WARNING, logger=SERVICE_LOG):
            assert await w.round() == {builder.origin: "older"}
        assert peer.asked_for(CONSISTENCY_PATH) == 0
    assert "older than the one cosigned" in caplog.text
    assert cosigned_size(witness, builder) == 30
    assert witness.last_size(builder.origin) == 30
    assert not witness.is_forked(builder.origin) and w.forks == []


# -- refusals ------------------------------------------------------------------------------------


def _unverifiable(builder: Builder, stranger: Builder) -> dict[str, bytes]:
    """Well-formed checkpoints a watched builder's URL might serve that do not verify."""
    honest = builder.checkpoint(30).note
    return {
        "another builder's log": stranger.checkpoint(5).note,
        "signed by another key": sign_checkpoint(
            Checkpoint(builder.origin, 30, builder.log.root(30)), stranger.key
        ),
        "tampered size": honest.replace(b"\n30\n", b"\n31\n", 1),
        "tampered root": honest.replace(
            base64.b64encode(builder.log.root(30)), base64.b64encode(builder.log.root(29)), 1
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["another builder's log", "signed by another key", "tampered size", "tampered root"],
)
async def test_a_checkpoint_that_does_not_verify_is_not_cosigned_and_changes_nothing(
    tmp_path, witness, client, builder, case, caplog
):
    stranger = Builder(tmp_path, "stranger")
    stranger.grow(5)
    async with scripted_peer() as peer:
        serving(peer, builder, 20)
        w = watching(witness, client, (builder, peer.url))
        await w.round()
        before = witness.cosigned(builder.origin)
        peer.checkpoint = _unverifiable(builder, stranger)[case]
        with caplog.at_level(logging.WARNING, logger=SERVICE_LOG):
            assert await w.round() == {builder.origin: "bad-checkpoint"}
        assert peer.asked_for(CONSISTENCY_PATH) == 0
    assert "does not verify" in caplog.text
    assert witness.cosigned(builder.origin) == before
    assert witness.last_size(builder.origin) == 20
    assert witness.cosigned(stranger.origin) is None
    assert [c.size for c in witness.history.latest_checkpoints(10)] == [20]
    assert not witness.is_forked(builder.origin) and w.forks == []
    assert w.counters.witness_checkpoints == Counter({"cosigned": 1, "bad-checkpoint": 1})
    stranger.log.close()


UNUSABLE = {
    "404": (None, "no-checkpoint"),
    "500": (Status(500), "unavailable"),
    "hang": (HANG, "unavailable"),
    "not a checkpoint": (b"<html>hello</html>", "unavailable"),
    "an extension line": ("extension", "unavailable"),
    "over 64 KiB, announced": ("oversized", "unavailable"),
    "over 64 KiB, chunked": ("oversized chunked", "unavailable"),
}


def _unusable_answer(builder: Builder, what):
    note = builder.checkpoint(20).note
    if what == "extension":
        return note.replace(b"=\n\n", b"=\nextension\n\n", 1)
    if what == "oversized":
        return padded_note(note, MAX_NOTE_SIZE + 1)
    if what == "oversized chunked":
        return Chunked(padded_note(note, MAX_NOTE_SIZE + 1))
    return what


@pytest.mark.parametrize("case", list(UNUSABLE))
async def test_an_unusable_answer_is_counted_nothing_is_cosigned_and_the_next_round_retries(
    witness, client, builder, case
):
    answer, label = UNUSABLE[case]
    async with scripted_peer() as peer:
        peer.checkpoint = _unusable_answer(builder, answer)
        w = watching(witness, client, (builder, peer.url))
        started = time.monotonic()
        assert await w.round() == {builder.origin: label}
        assert time.monotonic() - started < TIMEOUT + 2
        assert witness.cosigned(builder.origin) is None
        assert witness.last_size(builder.origin) is None
        serving(peer, builder, 20)
        assert await w.round() == {builder.origin: "cosigned"}
    assert w.counters.witness_checkpoints == Counter({label: 1, "cosigned": 1})
    assert cosigned_size(witness, builder) == 20


async def test_a_builder_that_cannot_be_reached_is_counted_unavailable(
    witness, client, builder, caplog
):
    url = closed_port_url()
    w = watching(witness, client, (builder, url))
    with caplog.at_level(logging.INFO, logger=SERVICE_LOG):
        assert await w.round() == {builder.origin: "unavailable"}
    assert "retried next round" in caplog.text and url in caplog.text
    assert witness.cosigned(builder.origin) is None


# -- bounds --------------------------------------------------------------------------------------


async def test_a_checkpoint_of_exactly_64_KiB_is_cosigned_and_one_byte_more_is_refused(
    witness, client, builder
):
    note = builder.checkpoint(20).note
    async with scripted_peer() as peer:
        w = watching(witness, client, (builder, peer.url))
        peer.checkpoint = padded_note(note, MAX_NOTE_SIZE + 1)
        assert await w.round() == {builder.origin: "unavailable"}
        assert witness.cosigned(builder.origin) is None
        peer.checkpoint = padded_note(note, MAX_NOTE_SIZE)
        assert await w.round() == {builder.origin: "cosigned"}
    # The stranger's padding line is not passed on: the builder's line and the witness's.
    served = parse_note(witness.cosigned(builder.origin))
    assert [s.name for s in served.signatures] == [builder.origin, witness_name(WITNESS_PUBLIC)]
    assert cosigned_size(witness, builder) == 20


async def test_one_round_watches_every_log_once_in_order_and_a_failing_log_stops_none(
    tmp_path, witness, client, builder
):
    others = [Builder(tmp_path, f"builder {n}") for n in ("two", "three", "four")]
    for other in others:
        other.grow(12)
    hanging, failing, garbled = others
    async with scripted_peers(4) as (slow, broken, hostile, honest):
        slow.checkpoint = HANG
        broken.checkpoint = Status(500)
        hostile.checkpoint = b"not a checkpoint at all"
        serving(honest, builder, 20)
        w = watching(
            witness,
            client,
            (hanging, slow.url),
            (failing, broken.url),
            (garbled, hostile.url),
            (builder, honest.url),
        )
        started = time.monotonic()
        result = await w.round()
        assert time.monotonic() - started < TIMEOUT + 2
        for peer in (slow, broken, hostile, honest):
            assert peer.asked == Counter({CHECKPOINT_PATH: 1})
    assert list(result.items()) == [
        (hanging.origin, "unavailable"),
        (failing.origin, "unavailable"),
        (garbled.origin, "unavailable"),
        (builder.origin, "cosigned"),
    ]
    assert w.counters.witness_checkpoints == Counter({"unavailable": 3, "cosigned": 1})
    assert cosigned_size(witness, builder) == 20
    for other in others:
        assert witness.cosigned(other.origin) is None
        other.log.close()


async def test_a_failure_inside_the_witness_is_counted_as_an_error_for_each_log(
    tmp_path, client, builder, caplog
):
    """A witness whose database fails (here: closed) makes every log an `error`, logged with
    its traceback; the round still asks every log and returns."""
    other = Builder(tmp_path, "builder two")
    other.grow(3)
    cosigner = Cosigner(witness_name(WITNESS_PUBLIC), WITNESS_KEY)
    broken = Witness(tmp_path / "broken-witness.sqlite", cosigner, now=lambda: NOW)
    broken.close()
    async with scripted_peers(2) as (one, two):
        serving(one, builder, 20)
        serving(two, other, 3)
        w = watching(broken, client, (builder, one.url), (other, two.url))
        with caplog.at_level(logging.ERROR, logger=SERVICE_LOG):
            assert await w.round() == {builder.origin: "error", other.origin: "error"}
        assert one.asked[CHECKPOINT_PATH] == 1 and two.asked[CHECKPOINT_PATH] == 1
    assert w.counters.witness_checkpoints == Counter({"error": 2})
    assert caplog.text.count("retried next round") == 2
    assert "Traceback" in caplog.text
    other.log.close()


async def test_periodic_rounds_go_on_after_failing_rounds(witness, client, builder):
    async with scripted_peer() as peer:
        answers = iter([Status(500), HANG])
        note = builder.checkpoint(20).note
        peer.checkpoint = lambda peer, request: next(answers, note)
        w = watching(witness, client, (builder, peer.url))
        await rounds_until(
            "witness", w.service.watch_once, lambda: witness.cosigned(builder.origin) is not None
        )
    assert cosigned_size(witness, builder) == 20
    assert w.counters.witness_checkpoints["unavailable"] == 2
    assert w.counters.witness_checkpoints["cosigned"] == 1


async def test_a_checkpoint_repeating_the_builders_line_is_cosigned_with_one_copy(
    witness, client, builder
):
    """Each copy of the builder's line verifies; keeping them all would leave 33 lines, which
    no reader takes (the witness failed on such a note every round, once)."""
    note = parse_note(builder.checkpoint(20).note)
    repeated = render_note(Note(note.text, note.signatures * MAX_NOTE_SIGNATURES))
    async with scripted_peer() as peer:
        peer.checkpoint = repeated
        w = watching(witness, client, (builder, peer.url))
        assert await w.round() == {builder.origin: "cosigned"}
        assert await w.round() == {builder.origin: "already-cosigned"}
    served = parse_note(witness.cosigned(builder.origin))
    assert len(served.signatures) == 2  # the builder's line once, then the witness's
    assert served.signatures[0] == note.signatures[0]
    assert cosigned_size(witness, builder) == 20
