"""A builder attaches only verified witness cosignatures, one line per witness, within bounds."""

from __future__ import annotations

import pytest

from p2pcache.trust.checkpoint import cosign_checkpoint, verify_checkpoint
from p2pcache.trust.cosignature import Cosigner
from p2pcache.trust.cosignature_collector import (
    CosignatureRefused,
    attach_cosignature,
    witness_cosignature,
)
from p2pcache.trust.signed_note import NoteSignature, NoteVerificationError, parse_note
from p2pcache.trust.witness import witness_name, witness_verifier
from tests.trust.test_checkpoint_store import key

NOW = 1_790_000_000


def witness(label: str) -> Cosigner:
    signing_key = key(label)
    return Cosigner(witness_name(bytes(signing_key.verify_key)), signing_key)


def test_a_verified_cosignature_is_attached_and_passes_a_policy_requiring_it(builder):
    own = builder.checkpoint(8)
    w = witness("w1")
    served = cosign_checkpoint(own, w, NOW)
    line = witness_cosignature(served, w.verifier)
    attached = attach_cosignature(own.note, line)
    verified = verify_checkpoint(
        attached, builder.public, witnesses=[w.verifier], required_cosignatures=1
    )
    assert verified.cosignatures[0].timestamp == NOW
    assert attach_cosignature(attached, line) == attached  # the same line twice: unchanged


def test_a_newer_cosignature_of_the_same_witness_replaces_the_older(builder):
    own = builder.checkpoint(8)
    w = witness("w1")
    first = witness_cosignature(cosign_checkpoint(own, w, NOW), w.verifier)
    later = witness_cosignature(cosign_checkpoint(own, w, NOW + 60), w.verifier)
    note = attach_cosignature(attach_cosignature(own.note, first), later)
    assert parse_note(note).signatures[1:] == (later,)


def test_a_line_that_does_not_verify_is_never_attached(builder):
    own = builder.checkpoint(8)
    w = witness("w1")
    served = cosign_checkpoint(own, w, NOW)
    note = parse_note(served)
    good = note.signatures[-1]
    flipped = good.signature[:-1] + bytes([good.signature[-1] ^ 1])
    bad = NoteSignature(good.name, good.key_id, flipped)
    tampered = served.replace(good.render(), bad.render())
    with pytest.raises(NoteVerificationError):
        witness_cosignature(tampered, w.verifier)
    with pytest.raises(CosignatureRefused):
        witness_cosignature(own.note, w.verifier)  # no line by this witness at all
    with pytest.raises(CosignatureRefused):
        witness_cosignature(served, witness_verifier(bytes(key("w2").verify_key)))


def test_a_note_full_of_lines_takes_no_more(builder):
    note = builder.checkpoint(8).note
    cosigners = [witness(f"w{i}") for i in range(32)]
    for w in cosigners[:31]:
        note = attach_cosignature(note, w.cosign(parse_note(note).text, NOW))
    assert len(parse_note(note).signatures) == 32
    with pytest.raises(CosignatureRefused):
        attach_cosignature(note, cosigners[31].cosign(parse_note(note).text, NOW))
