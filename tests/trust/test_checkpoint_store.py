"""The checkpoint store: trust on first use, growth only with proof, forks recorded, no rollback."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nacl.signing
import pytest

from p2pcache.trust.checkpoint import (
    Checkpoint,
    VerifiedCheckpoint,
    builder_origin,
    sign_checkpoint,
    verify_checkpoint,
)
from p2pcache.trust.checkpoint_store import CheckpointStore, CheckpointStoreError, Outcome
from p2pcache.trust.merkle_log import MerkleLog


def key(label: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(label.encode()).digest())


class Builder:
    """A builder with a real log; `history` names the file, so one key can keep two logs."""

    def __init__(self, directory: Path, label: str, history: str = "honest") -> None:
        self.key = key(label)
        self.public = bytes(self.key.verify_key)
        self.origin = builder_origin(self.public)
        self.log = MerkleLog(directory / f"{label}-{history}.sqlite", self.origin)

    def grow(self, size: int) -> None:
        self.log.append_many(b"entry %d" % i for i in range(self.log.size, size))

    def checkpoint(self, size: int) -> VerifiedCheckpoint:
        cp = Checkpoint(self.origin, size, self.log.root(size))
        return verify_checkpoint(sign_checkpoint(cp, self.key), self.public)


@pytest.fixture
def store(tmp_path):
    with CheckpointStore(tmp_path / "checkpoints.sqlite", now=lambda: 1_700_000_000.0) as s:
        yield s


@pytest.fixture
def fork(tmp_path):
    """The same builder key signing another history: identical for 10 entries, then different."""
    other = Builder(tmp_path, "builder one", history="forked")
    other.log.append_many(b"entry %d" % i if i < 10 else b"forked entry %d" % i for i in range(40))
    yield other
    other.log.close()


def test_first_checkpoint_is_accepted_on_its_signature_and_recorded(store, builder, tmp_path):
    first = builder.checkpoint(20)
    result = store.observe(first)
    assert result.outcome is Outcome.FIRST_SEEN
    assert result.is_consistent
    assert result.latest.size == 20 and result.latest.note == first.note
    assert store.latest(builder.origin).root == first.root
    assert not store.is_forked(builder.origin)


def test_the_same_checkpoint_again_changes_nothing(store, builder):
    store.observe(builder.checkpoint(20))
    result = store.observe(builder.checkpoint(20))
    assert result.outcome is Outcome.UNCHANGED
    assert result.is_consistent


def test_consistent_growth_advances_with_a_proof(store, builder):
    store.observe(builder.checkpoint(5))
    for old, new in ((5, 6), (6, 17), (17, 32), (32, 40)):
        result = store.observe(builder.checkpoint(new), builder.log.consistency_proof(old, new))
        assert result.outcome is Outcome.ADVANCED
        assert result.is_consistent
        assert store.latest(builder.origin).size == new


def test_growth_without_a_proof_keeps_the_old_checkpoint_and_is_no_evidence(store, builder):
    store.observe(builder.checkpoint(20))
    result = store.observe(builder.checkpoint(30))
    assert result.outcome is Outcome.AWAITING_PROOF
    assert not result.is_consistent
    assert store.latest(builder.origin).size == 20
    assert not store.is_forked(builder.origin)
    assert store.fork_evidence() == []
    # Once the proof can be had, the same checkpoint is accepted.
    later = store.observe(builder.checkpoint(30), builder.log.consistency_proof(20, 30))
    assert later.outcome is Outcome.ADVANCED


def test_same_size_with_another_root_is_fork_evidence(store, builder, fork):
    honest, forged = builder.checkpoint(25), fork.checkpoint(25)
    store.observe(honest)
    result = store.observe(forged)
    assert result.outcome is Outcome.FORK_DETECTED
    assert not result.is_consistent
    assert store.is_forked(builder.origin)
    (evidence,) = store.fork_evidence(builder.origin)
    assert evidence.kind == "same-size"
    assert {evidence.first_note, evidence.second_note} == {honest.note, forged.note}
    # Both notes are signed by the builder: anyone can check the evidence offline.
    for note in (evidence.first_note, evidence.second_note):
        assert verify_checkpoint(note, builder.public).size == 25


def test_a_failing_consistency_proof_is_fork_evidence(store, builder, fork):
    store.observe(builder.checkpoint(12))
    # The forked history agrees on the first 10 entries only; its proof from 12 cannot link.
    result = store.observe(fork.checkpoint(30), fork.log.consistency_proof(12, 30))
    assert result.outcome is Outcome.FORK_DETECTED
    (evidence,) = store.fork_evidence(builder.origin)
    assert evidence.kind == "inconsistent"
    assert evidence.proof == tuple(fork.log.consistency_proof(12, 30))
    assert "root" in evidence.detail
    assert store.latest(builder.origin).size == 12


def test_a_malformed_consistency_proof_is_fork_evidence(store, builder):
    store.observe(builder.checkpoint(12))
    truncated = builder.log.consistency_proof(12, 30)[:-1]
    result = store.observe(builder.checkpoint(30), truncated)
    assert result.outcome is Outcome.FORK_DETECTED
    assert store.fork_evidence(builder.origin)[0].proof == tuple(truncated)


def test_after_a_fork_nothing_the_builder_signs_is_considered(store, builder, fork):
    store.observe(builder.checkpoint(25))
    store.observe(fork.checkpoint(25))
    result = store.observe(builder.checkpoint(40), builder.log.consistency_proof(25, 40))
    assert result.outcome is Outcome.BUILDER_FORKED
    assert not result.is_consistent
    assert store.latest(builder.origin).size == 25


def test_rollback_to_an_older_checkpoint_is_refused(store, builder):
    store.observe(builder.checkpoint(30))
    result = store.observe(builder.checkpoint(20))
    assert result.outcome is Outcome.ROLLBACK_REFUSED
    assert not result.is_consistent
    assert store.latest(builder.origin).size == 30
    assert not store.is_forked(builder.origin)


def test_an_older_checkpoint_with_a_proof_is_confirmed_but_not_adopted(store, builder):
    store.observe(builder.checkpoint(30))
    result = store.observe(builder.checkpoint(20), builder.log.consistency_proof(20, 30))
    assert result.outcome is Outcome.OLDER_CONSISTENT
    assert result.is_consistent
    assert store.latest(builder.origin).size == 30
    # Once confirmed, it is history: seeing it again needs no proof.
    assert store.observe(builder.checkpoint(20)).outcome is Outcome.OLDER_CONSISTENT


def test_an_older_checkpoint_that_is_not_a_prefix_is_fork_evidence(store, builder, fork):
    store.observe(builder.checkpoint(30))
    result = store.observe(fork.checkpoint(20), builder.log.consistency_proof(20, 30))
    assert result.outcome is Outcome.FORK_DETECTED
    assert store.latest(builder.origin).size == 30


def test_a_recorded_older_size_with_another_root_is_fork_evidence(store, builder, fork):
    store.observe(builder.checkpoint(15))
    store.observe(builder.checkpoint(30), builder.log.consistency_proof(15, 30))
    result = store.observe(fork.checkpoint(15))
    assert result.outcome is Outcome.FORK_DETECTED
    assert store.fork_evidence(builder.origin)[0].kind == "same-size"


def test_growth_from_an_empty_log_needs_no_proof(store, builder):
    assert store.observe(builder.checkpoint(0)).outcome is Outcome.FIRST_SEEN
    assert store.observe(builder.checkpoint(7)).outcome is Outcome.ADVANCED


def test_a_signed_empty_tree_with_a_non_empty_root_is_evidence(store, builder):
    bogus = Checkpoint(builder.origin, 0, builder.log.root(1))
    verified = verify_checkpoint(sign_checkpoint(bogus, builder.key), builder.public)
    store.observe(builder.checkpoint(5))
    assert store.observe(verified).outcome is Outcome.FORK_DETECTED
    assert store.fork_evidence(builder.origin)[0].kind == "bad-empty-root"


def test_another_key_for_a_recorded_origin_is_refused(store):
    origin = "example.org/named-log"
    first, second = key("first"), key("second")
    cp = Checkpoint(origin, 1, hashlib.sha256(b"x").digest())
    store.observe(
        verify_checkpoint(sign_checkpoint(cp, first), bytes(first.verify_key), origin=origin)
    )
    other = verify_checkpoint(sign_checkpoint(cp, second), bytes(second.verify_key), origin=origin)
    with pytest.raises(CheckpointStoreError, match="another key"):
        store.observe(other)


def test_builders_are_judged_separately(store, builder, fork, tmp_path):
    other = Builder(tmp_path, "builder two")
    other.grow(3)
    store.observe(builder.checkpoint(25))
    store.observe(fork.checkpoint(25))
    assert store.observe(other.checkpoint(3)).outcome is Outcome.FIRST_SEEN
    assert store.is_forked(builder.origin) and not store.is_forked(other.origin)
    other.log.close()


def test_state_and_evidence_survive_reopening(tmp_path, builder, fork):
    path = tmp_path / "checkpoints.sqlite"
    with CheckpointStore(path) as store:
        store.observe(builder.checkpoint(25))
        store.observe(fork.checkpoint(25))
    with CheckpointStore(path) as store:
        assert store.is_forked(builder.origin)
        assert len(store.fork_evidence()) == 1
        assert store.latest(builder.origin).size == 25


def test_latest_checkpoints_lists_the_newest_of_each_log_bounded(store, builder, tmp_path):
    other = Builder(tmp_path, "builder two")
    other.grow(5)
    store.observe(builder.checkpoint(10))
    store.observe(builder.checkpoint(20), builder.log.consistency_proof(10, 20))
    store.observe(other.checkpoint(5))
    listed = store.latest_checkpoints(10)
    assert {(c.origin, c.size) for c in listed} == {(builder.origin, 20), (other.origin, 5)}
    assert [c.origin for c in listed] == sorted(c.origin for c in listed)
    assert len(store.latest_checkpoints(1)) == 1
    other.log.close()
