"""The witness cosigns only what extends what it cosigned; a rewritten log is evidence, for good."""

from __future__ import annotations

import pytest

from p2pcache.trust.checkpoint import (
    CheckpointVerificationError,
    cosign_checkpoint,
    verify_checkpoint,
)
from p2pcache.trust.cosignature import Cosigner
from p2pcache.trust.signed_note import Ed25519NoteVerifier, NoteVerificationError, parse_note
from p2pcache.trust.witness import (
    Witness,
    WitnessOutcome,
    parse_watched_log,
    witness_name,
    witness_verifier,
)
from tests.trust.test_checkpoint_store import Builder, key

WITNESS_KEY = key("witness one")
WITNESS_PUBLIC = bytes(WITNESS_KEY.verify_key)
NOW = 1_790_000_000


@pytest.fixture
def witness(tmp_path):
    cosigner = Cosigner(witness_name(WITNESS_PUBLIC), WITNESS_KEY)
    with Witness(tmp_path / "witness.sqlite", cosigner, now=lambda: NOW) as w:
        yield w


def cosigned_by_witness(note: bytes, builder: Builder):
    """The note verified as a policy requiring this witness's cosignature would."""
    return verify_checkpoint(
        note, builder.public, witnesses=[witness_verifier(WITNESS_PUBLIC)], required_cosignatures=1
    )


def test_the_first_checkpoint_of_a_log_is_cosigned_and_verifies_with_the_witness_key(
    witness, builder
):
    verdict = witness.consider(builder.checkpoint(20), None)
    assert verdict.outcome is WitnessOutcome.COSIGNED
    verified = cosigned_by_witness(verdict.cosigned, builder)
    assert verified.size == 20
    (cosignature,) = verified.cosignatures
    assert cosignature.public_key == WITNESS_PUBLIC and cosignature.timestamp == NOW
    assert witness.cosigned(builder.origin) == verdict.cosigned


def test_without_the_witness_line_a_policy_requiring_it_refuses(witness, builder):
    with pytest.raises(CheckpointVerificationError) as refused:
        cosigned_by_witness(builder.checkpoint(20).note, builder)
    assert refused.value.reason == "too-few-cosignatures"


def test_the_same_checkpoint_keeps_its_one_cosignature(witness, builder):
    first = witness.consider(builder.checkpoint(20), None)
    again = witness.consider(builder.checkpoint(20), None)
    assert again.outcome is WitnessOutcome.ALREADY_COSIGNED
    assert again.cosigned == first.cosigned


def test_a_newer_checkpoint_is_cosigned_only_with_a_consistency_proof(witness, builder):
    witness.consider(builder.checkpoint(20), None)
    waiting = witness.consider(builder.checkpoint(30), None)
    assert waiting.outcome is WitnessOutcome.AWAITING_PROOF
    assert cosigned_by_witness(waiting.cosigned, builder).size == 20  # still the old one
    proof = builder.log.consistency_proof(20, 30)
    advanced = witness.consider(builder.checkpoint(30), proof)
    assert advanced.outcome is WitnessOutcome.COSIGNED
    assert cosigned_by_witness(advanced.cosigned, builder).size == 30
    assert witness.last_size(builder.origin) == 30


def test_an_older_checkpoint_is_never_cosigned(witness, builder):
    witness.consider(builder.checkpoint(30), None)
    older = witness.consider(builder.checkpoint(20), builder.log.consistency_proof(20, 30))
    assert older.outcome is WitnessOutcome.OLDER
    assert cosigned_by_witness(older.cosigned, builder).size == 30
    rollback = witness.consider(builder.checkpoint(10), None)
    assert rollback.outcome is WitnessOutcome.OLDER


def test_a_rewritten_history_with_a_failing_proof_is_fork_evidence_and_ends_cosigning(
    witness, builder, forked
):
    witness.consider(builder.checkpoint(20), None)
    # The builder serves a newer checkpoint of its rewritten log and a proof from it.
    rewritten = forked.checkpoint(30)
    verdict = witness.consider(rewritten, forked.log.consistency_proof(20, 30))
    assert verdict.outcome is WitnessOutcome.FORK_DETECTED
    assert verdict.evidence.kind == "inconsistent"
    assert verdict.evidence.second_note == rewritten.note
    assert witness.is_forked(builder.origin)
    assert cosigned_by_witness(verdict.cosigned, builder).size == 20
    # Not even the honest continuation is cosigned now.
    honest = witness.consider(builder.checkpoint(30), builder.log.consistency_proof(20, 30))
    assert honest.outcome is WitnessOutcome.LOG_FORKED
    assert cosigned_by_witness(honest.cosigned, builder).size == 20


def test_two_roots_for_one_size_are_fork_evidence(witness, builder, forked):
    witness.consider(builder.checkpoint(20), None)
    verdict = witness.consider(forked.checkpoint(20), None)
    assert verdict.outcome is WitnessOutcome.FORK_DETECTED
    assert verdict.evidence.kind == "same-size"


def test_what_was_cosigned_survives_a_restart(tmp_path, builder, forked):
    cosigner = Cosigner(witness_name(WITNESS_PUBLIC), WITNESS_KEY)
    with Witness(tmp_path / "w.sqlite", cosigner, now=lambda: NOW) as witness:
        first = witness.consider(builder.checkpoint(20), None).cosigned
    with Witness(tmp_path / "w.sqlite", cosigner, now=lambda: NOW + 60) as witness:
        assert witness.cosigned(builder.origin) == first
        assert witness.consider(builder.checkpoint(30), None).outcome is (
            WitnessOutcome.AWAITING_PROOF
        )
        assert witness.consider(forked.checkpoint(20), None).outcome is (
            WitnessOutcome.FORK_DETECTED
        )


def test_the_served_note_holds_the_builders_line_and_this_witnesss_only(witness, builder):
    other = Cosigner("another.example/witness", key("another witness"))
    cosigned_elsewhere = verify_checkpoint(
        cosign_checkpoint(builder.checkpoint(20), other, NOW), builder.public
    )
    verdict = witness.consider(cosigned_elsewhere, None)
    names = [s.name for s in parse_note(verdict.cosigned).signatures]
    assert names == [builder.origin, witness_name(WITNESS_PUBLIC)]


def test_a_cosignature_is_not_a_note_signature_by_the_same_key(witness, builder):
    """Domain separation: the identity key's cosignature cannot pass as a checkpoint signature
    by that key (another key ID, and the signed message starts with `cosignature/v1`)."""
    note = witness.consider(builder.checkpoint(20), None).cosigned
    line = parse_note(note).signatures[-1]
    as_note_key = Ed25519NoteVerifier(line.name, WITNESS_PUBLIC)
    assert as_note_key.key_id != line.key_id
    with pytest.raises(NoteVerificationError):
        as_note_key.verify(parse_note(note).text, line.signature[8:])


def test_watched_logs_are_a_key_and_a_url():
    watched = parse_watched_log(f"{'ab' * 32} http://127.0.0.1:8081/")
    assert watched.key == bytes.fromhex("ab" * 32) and watched.url == "http://127.0.0.1:8081"
    for bad in ("", "ab http://x", f"{'zz' * 32} http://x", f"{'ab' * 32} ftp://x", "a b c"):
        with pytest.raises(ValueError):
            parse_watched_log(bad)
