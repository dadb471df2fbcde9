"""Checkpoint gossip's core: strangers dropped unread, split views found, relayed proofs doubted."""

from __future__ import annotations

import pytest

from p2pcache.trust.attestation_verifier import ConsistencyProof
from p2pcache.trust.checkpoint import Checkpoint, builder_origin, sign_checkpoint
from p2pcache.trust.checkpoint_store import CheckpointStore, Observation, Outcome
from p2pcache.trust.gossip import (
    CheckpointGossip,
    Ignored,
    Received,
    is_fork,
    origin_key,
    outcome_label,
)
from tests.trust.test_checkpoint_store import key


@pytest.fixture
def store(tmp_path):
    with CheckpointStore(tmp_path / "checkpoints.sqlite") as s:
        yield s


@pytest.fixture
def gossip(store, builder):
    return CheckpointGossip(store, lambda: {builder.public})


def take(gossip: CheckpointGossip, note: bytes, proof: ConsistencyProof | None = None):
    checked = gossip.check(note)
    return checked if isinstance(checked, Ignored) else gossip.observe(checked, proof)


def test_a_tracked_builders_first_checkpoint_is_recorded_and_served(gossip, builder):
    note = builder.checkpoint(20).note
    result = take(gossip, note)
    assert isinstance(result, Observation) and result.outcome is Outcome.FIRST_SEEN
    assert gossip.newest_notes() == [note]


def test_a_split_view_met_by_gossip_is_fork_evidence(gossip, builder, forked, store):
    take(gossip, builder.checkpoint(20).note)
    result = take(gossip, forked.checkpoint(20).note)
    assert is_fork(result) and outcome_label(result) == "fork-detected"
    assert result.evidence.kind == "same-size"
    assert store.is_forked(builder.origin)


def test_notes_of_logs_not_tracked_are_dropped_before_any_signature_check(gossip, store):
    stranger_key = key("stranger")
    origin = builder_origin(bytes(stranger_key.verify_key))
    note = sign_checkpoint(Checkpoint(origin, 3, b"\x01" * 32), stranger_key)
    assert take(gossip, note) is Ignored.UNKNOWN_ORIGIN
    # Not even a builder log: another origin altogether.
    other = sign_checkpoint(Checkpoint("example.com/log", 3, b"\x01" * 32), stranger_key)
    assert take(gossip, other) is Ignored.UNKNOWN_ORIGIN
    assert store.latest(origin) is None and gossip.newest_notes() == []


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\x00" * 100, b"not a note", b"p2pcache/builder/zz\n1\nAAAA\n\n\xe2\x80\x94 x y\n"],
)
def test_garbage_notes_are_invalid(gossip, garbage):
    assert take(gossip, garbage) is Ignored.INVALID


def test_a_forged_signature_is_invalid_and_not_evidence(gossip, builder, store):
    take(gossip, builder.checkpoint(20).note)
    forger = key("forger")
    forged = sign_checkpoint(Checkpoint(builder.origin, 20, b"\x02" * 32), forger)
    assert take(gossip, forged) is Ignored.INVALID
    assert not store.is_forked(builder.origin)


def test_a_newer_checkpoint_waits_for_a_proof(gossip, builder):
    take(gossip, builder.checkpoint(20).note)
    checked = gossip.check(builder.checkpoint(30).note)
    assert isinstance(checked, Received)
    assert gossip.proof_sizes(checked) == (20, 30)
    assert gossip.observe(checked).outcome is Outcome.AWAITING_PROOF
    proof = ConsistencyProof(tuple(builder.log.consistency_proof(20, 30)), from_builder=False)
    assert gossip.observe(checked, proof).outcome is Outcome.ADVANCED
    assert gossip.newest_notes() == [builder.checkpoint(30).note]


def test_a_failing_proof_relayed_by_a_peer_is_as_good_as_none(gossip, builder, store):
    take(gossip, builder.checkpoint(20).note)
    bogus = ConsistencyProof((b"\x07" * 32,) * 3, from_builder=False)
    result = take(gossip, builder.checkpoint(30).note, bogus)
    assert result.outcome is Outcome.AWAITING_PROOF
    assert not store.is_forked(builder.origin)


def test_a_failing_proof_served_by_the_builder_is_fork_evidence(gossip, builder, forked):
    take(gossip, builder.checkpoint(20).note)
    proof = ConsistencyProof(tuple(forked.log.consistency_proof(20, 30)), from_builder=True)
    result = take(gossip, forked.checkpoint(30).note, proof)
    assert is_fork(result) and result.evidence.kind == "inconsistent"


def test_an_older_checkpoint_needs_a_proof_to_the_newest(gossip, builder):
    take(gossip, builder.checkpoint(30).note)
    checked = gossip.check(builder.checkpoint(20).note)
    assert gossip.proof_sizes(checked) == (20, 30)
    assert gossip.observe(checked).outcome is Outcome.ROLLBACK_REFUSED
    proof = ConsistencyProof(tuple(builder.log.consistency_proof(20, 30)), from_builder=False)
    assert gossip.observe(checked, proof).outcome is Outcome.OLDER_CONSISTENT


def test_the_own_checkpoint_is_served_first(store, builder, tmp_path):
    own = b"own note"
    gossip = CheckpointGossip(store, lambda: {builder.public}, own_checkpoint=lambda: own)
    take(gossip, builder.checkpoint(5).note)
    assert gossip.newest_notes() == [own, builder.checkpoint(5).note]


def test_origin_key_reads_the_builder_key_from_the_note_text(builder):
    assert origin_key(builder.checkpoint(3).note) == builder.public


def test_a_bundles_checkpoint_and_a_gossiped_one_meet_in_one_store(gossip, builder, forked):
    """Bundles are the other source of checkpoints: whichever arrives first, the other is
    judged against it, so a split view between a bundle and gossip is caught too."""
    from_bundle = forked.checkpoint(12).note  # as carried in an attestation bundle
    assert take(gossip, from_bundle).outcome is Outcome.FIRST_SEEN
    result = take(gossip, builder.checkpoint(12).note)
    assert is_fork(result) and result.evidence.first_note == from_bundle
