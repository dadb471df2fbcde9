"""Hostile attestations and bundles, one test per attack class.

Every input here comes from an untrusted peer. The only acceptable outcomes are the item being
accepted because the trusted builder really said so, or a refusal with a specific error and
reason: never a crash, a different exception type, or an accepted forgery.
"""

from __future__ import annotations

import hashlib

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcache.errors import P2PCacheError
from p2pcache.trust.attestation import (
    MAX_ATTESTATION_SIZE,
    MAX_REFERENCES,
    Attestation,
    AttestationFormatError,
    AttestationVerificationError,
    Evidence,
    SignedAttestation,
    check_store_path,
    parse_attestation,
    render_attestation,
    render_statement,
    sign_attestation,
    verify_attestation,
)
from p2pcache.trust.attestation_bundle import (
    MAX_BUNDLE_SIZE,
    AttestationBundle,
    BundleFormatError,
    parse_bundle,
    render_bundle,
    verify_bundle,
)
from p2pcache.trust.checkpoint import (
    Checkpoint,
    CheckpointFormatError,
    CheckpointVerificationError,
    builder_origin,
    parse_checkpoint,
    sign_checkpoint,
)
from p2pcache.trust.merkle_log import MerkleLog
from p2pcache.trust.merkle_proof import ProofError, ProofLengthError, RootMismatchError
from p2pcache.trust.signed_note import NoteVerificationError


def signing_key(label: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(label.encode()).digest())


TRUSTED = signing_key("trusted builder")
TRUSTED_KEY = bytes(TRUSTED.verify_key)
ATTACKER = signing_key("attacker")
ATTACKER_KEY = bytes(ATTACKER.verify_key)
HELLO = "/gnu/store/" + "a" * 32 + "-hello-2.12.1"
EVIL = "/gnu/store/" + "b" * 32 + "-hello-2.12.1"


def statement(builder: bytes = TRUSTED_KEY, **fields) -> Attestation:
    values = {
        "builder": builder,
        "store_path": HELLO,
        "nar_hash": hashlib.sha256(b"the real nar").digest(),
        "nar_size": 1088,
        "references": ("c" * 32 + "-glibc-2.39",),
        "deriver": "d" * 32 + "-hello-2.12.1.drv",
        "system": "x86_64-linux",
        "time": 1_700_000_000,
        "chunk_root": hashlib.sha256(b"chunk root").digest(),
        "evidence": Evidence.BUILD_LOG,
    }
    values.update(fields)
    return Attestation(**values)


GENUINE = sign_attestation(statement(), TRUSTED)
GENUINE_TEXT = render_attestation(GENUINE)


@pytest.fixture(scope="module")
def trusted_log(tmp_path_factory):
    """The trusted builder's log: some other attestations, then GENUINE at index 5, then more."""
    log = MerkleLog(tmp_path_factory.mktemp("hostile") / "log.sqlite", builder_origin(TRUSTED_KEY))
    for i in range(9):
        if i == 5:
            log.append(GENUINE_TEXT)
            continue
        other = statement(store_path=f"/gnu/store/{'f' * 31}{i}-other-{i}")
        log.append(render_attestation(sign_attestation(other, TRUSTED)))
    yield log
    log.close()


def bundle_for(log: MerkleLog, index: int = 5, size: int = 9, **changes) -> AttestationBundle:
    values = {
        "attestation": GENUINE,
        "index": index,
        "proof": tuple(log.inclusion_proof(index, size)),
        "checkpoint": sign_checkpoint(Checkpoint(log.origin, size, log.root(size)), TRUSTED),
    }
    values.update(changes)
    return AttestationBundle(**values)


def test_the_genuine_bundle_is_accepted(trusted_log):
    verified = verify_bundle(bundle_for(trusted_log), TRUSTED_KEY, HELLO)
    assert verified.attestation == GENUINE.attestation


# -- attestation signatures -----------------------------------------------------------------------


def test_forged_signature_is_refused():
    forged = SignedAttestation(statement(nar_hash=hashlib.sha256(b"evil").digest()), bytes(64))
    with pytest.raises(AttestationVerificationError) as caught:
        verify_attestation(forged, TRUSTED_KEY)
    assert caught.value.reason == "bad-signature"


def test_statement_signed_with_the_wrong_key_is_refused():
    # The attacker writes the trusted builder's key in the Builder line and signs with its own.
    evil = statement(nar_hash=hashlib.sha256(b"evil").digest())
    forged = SignedAttestation(evil, ATTACKER.sign(render_statement(evil)).signature)
    with pytest.raises(AttestationVerificationError) as caught:
        verify_attestation(forged, TRUSTED_KEY)
    assert caught.value.reason == "bad-signature"


def test_attestation_from_an_untrusted_key_does_not_pass_for_a_trusted_one():
    own = sign_attestation(statement(builder=ATTACKER_KEY), ATTACKER)
    verify_attestation(own, ATTACKER_KEY)  # valid, but only as the attacker's word
    with pytest.raises(AttestationVerificationError) as caught:
        verify_attestation(own, TRUSTED_KEY)
    assert caught.value.reason == "wrong-builder"


@pytest.mark.parametrize(
    "field, value",
    [
        ("store_path", EVIL),
        ("nar_hash", hashlib.sha256(b"evil").digest()),
        ("nar_size", 1089),
        ("references", ()),
        ("deriver", None),
        ("system", "aarch64-linux"),
        ("time", 1_700_000_001),
        ("chunk_root", hashlib.sha256(b"evil root").digest()),
        ("evidence", Evidence.CHECK),
    ],
)
def test_any_field_changed_after_signing_breaks_the_signature(field, value):
    tampered = SignedAttestation(statement(**{field: value}), GENUINE.signature)
    reparsed = parse_attestation(render_attestation(tampered))  # still well formed
    with pytest.raises(AttestationVerificationError) as caught:
        verify_attestation(reparsed, TRUSTED_KEY)
    assert caught.value.reason == "bad-signature"


def test_small_order_key_forgery_is_refused():
    # With the identity point as public key, (R = identity, S = 0) satisfies the bare Ed25519
    # equation for every message; libsodium refuses small-order keys and so must we.
    identity = b"\x01" + bytes(31)
    forged = SignedAttestation(statement(builder=identity), identity + bytes(32))
    with pytest.raises(AttestationVerificationError) as caught:
        verify_attestation(forged, identity)
    assert caught.value.reason == "bad-signature"


def test_non_canonical_signature_encoding_is_refused():
    # S + L (the group order) is the same scalar mod L; a lax verifier would accept it, which
    # would give one statement two leaf hashes. libsodium refuses S >= L.
    order = 2**252 + 27742317777372353535851937790883648493
    r, s = GENUINE.signature[:32], int.from_bytes(GENUINE.signature[32:], "little")
    malleated = SignedAttestation(GENUINE.attestation, r + (s + order).to_bytes(32, "little"))
    with pytest.raises(AttestationVerificationError):
        verify_attestation(malleated, TRUSTED_KEY)


# -- replay ---------------------------------------------------------------------------------------


def test_attestation_replayed_for_another_store_path_is_refused(trusted_log):
    with pytest.raises(AttestationVerificationError) as caught:
        check_store_path(GENUINE.attestation, EVIL)
    assert caught.value.reason == "wrong-store-path"
    with pytest.raises(AttestationVerificationError) as caught:
        verify_bundle(bundle_for(trusted_log), TRUSTED_KEY, EVIL)
    assert caught.value.reason == "wrong-store-path"


def test_checkpoint_note_cannot_pass_for_an_attestation_and_vice_versa():
    note = sign_checkpoint(Checkpoint(builder_origin(TRUSTED_KEY), 1, bytes(32)), TRUSTED)
    with pytest.raises(AttestationFormatError):
        parse_attestation(note)
    with pytest.raises(CheckpointFormatError):
        parse_checkpoint(render_statement(GENUINE.attestation))


# -- malformed, oversized and non-canonical text --------------------------------------------------


def test_oversized_attestation_is_refused_before_it_is_read():
    huge = GENUINE_TEXT + b"x" * MAX_ATTESTATION_SIZE
    with pytest.raises(AttestationFormatError) as caught:
        parse_attestation(huge)
    assert caught.value.reason == "oversized"


def test_too_many_references_are_refused():
    refs = sorted(f"{'0' * 28}{i:04d}-r" for i in range(MAX_REFERENCES + 1))
    lines = GENUINE_TEXT.decode().split("\n")
    lines[5] = "References: " + " ".join(refs)
    with pytest.raises(AttestationFormatError) as caught:
        parse_attestation("\n".join(lines).encode())
    assert caught.value.reason == "too-many-references"


@pytest.mark.parametrize(
    "old, new, reason",
    [
        (b"\n", b"\r\n", "encoding"),
        (b"NarSize: 1088", b"NarSize: 01088", "non-canonical"),
        (b"NarSize: 1088", b"NarSize: 1088 ", "whitespace"),
        (b"NarSize: 1088", b"NarSize:  1088", "whitespace"),
        (b"NarSize: 1088", b"NarSize:1088", "whitespace"),
        (b"NarSize: 1088", b"narsize: 1088", "structure"),
        (b"Time: 1700000000", b"Time: 1700000000.0", "value"),
        (b"Time: 1700000000", b"Time: +1700000000", "value"),
        (b"Evidence: build-log", b"Evidence: Build-Log", "value"),
        (b"System: x86_64-linux", b"System: X86_64-Linux", "value"),
    ],
)
def test_non_canonical_and_malformed_forms_are_refused(old, new, reason):
    with pytest.raises(AttestationFormatError) as caught:
        parse_attestation(GENUINE_TEXT.replace(old, new))
    assert caught.value.reason == reason


def test_uppercase_hex_and_padded_base64_variants_are_refused():
    upper = GENUINE_TEXT.replace(
        GENUINE.attestation.chunk_root.hex().encode(),
        GENUINE.attestation.chunk_root.hex().upper().encode(),
    )
    with pytest.raises(AttestationFormatError) as caught:
        parse_attestation(upper)
    assert caught.value.reason == "non-canonical"
    unpadded = GENUINE_TEXT.replace(b"==\n", b"\n")
    with pytest.raises(AttestationFormatError):
        parse_attestation(unpadded)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash_the_attestation_parser(data):
    with pytest.raises(AttestationFormatError):
        parse_attestation(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_spliced_attestations_are_refused_or_rejected_cleanly(data):
    lines = GENUINE_TEXT.split(b"\n")
    i = data.draw(st.integers(0, len(lines) - 1))
    j = data.draw(st.integers(0, len(lines) - 1))
    spliced = list(lines)
    spliced[i] = data.draw(st.sampled_from([lines[j], b"", b" ", lines[i] + lines[j], b"\xff"]))
    text = b"\n".join(spliced)
    if text == GENUINE_TEXT:
        return
    with pytest.raises((AttestationFormatError, AttestationVerificationError)):
        verify_attestation(parse_attestation(text), TRUSTED_KEY)


# -- bundles --------------------------------------------------------------------------------------


def test_inclusion_proof_for_another_index_is_refused(trusted_log):
    bundle = bundle_for(trusted_log, proof=tuple(trusted_log.inclusion_proof(4, 9)))
    with pytest.raises(RootMismatchError):
        verify_bundle(bundle, TRUSTED_KEY, HELLO)
    moved = bundle_for(trusted_log, index=4, proof=tuple(trusted_log.inclusion_proof(4, 9)))
    with pytest.raises(RootMismatchError):
        verify_bundle(moved, TRUSTED_KEY, HELLO)


def test_inclusion_proof_for_another_tree_size_is_refused(trusted_log):
    bundle = bundle_for(trusted_log, proof=tuple(trusted_log.inclusion_proof(5, 6)))
    with pytest.raises(ProofLengthError):
        verify_bundle(bundle, TRUSTED_KEY, HELLO)


def test_attestation_not_in_the_log_is_refused(trusted_log):
    # A genuine attestation of the trusted builder that its log does not hold.
    unlogged = sign_attestation(statement(store_path=EVIL), TRUSTED)
    bundle = bundle_for(trusted_log, attestation=unlogged)
    with pytest.raises(ProofError):
        verify_bundle(bundle, TRUSTED_KEY, EVIL)


def test_proof_against_a_checkpoint_with_a_bad_signature_is_refused(trusted_log):
    cp = Checkpoint(trusted_log.origin, 9, trusted_log.root(9))
    forged_note = sign_checkpoint(cp, ATTACKER)  # the right tree, under the builder's name
    bundle = bundle_for(trusted_log, checkpoint=forged_note)
    with pytest.raises(NoteVerificationError) as caught:
        verify_bundle(bundle, TRUSTED_KEY, HELLO)
    assert caught.value.reason == "no-known-signature"
    tampered = bundle_for(trusted_log).checkpoint.replace(b"\n9\n", b"\n10\n")
    with pytest.raises((NoteVerificationError, ProofError)):
        verify_bundle(bundle_for(trusted_log, checkpoint=tampered), TRUSTED_KEY, HELLO)


def test_checkpoint_from_another_builders_log_is_refused(trusted_log):
    # The attacker logs the trusted builder's genuine attestation in its own log.
    with MerkleLog(":memory:", builder_origin(ATTACKER_KEY)) as own:
        own.append(GENUINE_TEXT)
        note = own.checkpoint(ATTACKER)
        bundle = AttestationBundle(GENUINE, 0, (), note)
    with pytest.raises(CheckpointVerificationError) as caught:
        verify_bundle(bundle, TRUSTED_KEY, HELLO)
    assert caught.value.reason == "wrong-origin"


def test_oversized_bundle_is_refused():
    data = render_bundle(bundle_for_static()) + b"x" * MAX_BUNDLE_SIZE
    with pytest.raises(BundleFormatError) as caught:
        parse_bundle(data)
    assert caught.value.reason == "oversized"


def bundle_for_static() -> AttestationBundle:
    note = sign_checkpoint(
        Checkpoint(builder_origin(TRUSTED_KEY), 1, hashlib.sha256(b"\x00" + GENUINE_TEXT).digest()),
        TRUSTED,
    )
    return AttestationBundle(GENUINE, 0, (), note)


def test_a_single_leaf_bundle_is_valid_with_the_empty_proof():
    verify_bundle(parse_bundle(render_bundle(bundle_for_static())), TRUSTED_KEY, HELLO)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_random_bytes_never_crash_the_bundle_parser(data):
    with pytest.raises(BundleFormatError):
        parse_bundle(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_bundles_are_refused_cleanly(data):
    good = render_bundle(bundle_for_static())
    position = data.draw(st.integers(0, len(good) - 1))
    cut = data.draw(st.booleans())
    if cut:
        mutated = good[:position]
    else:
        byte = data.draw(st.integers(0, 255).filter(lambda b: b != good[position]))
        mutated = good[:position] + bytes([byte]) + good[position + 1 :]
    with pytest.raises(P2PCacheError):
        verify_bundle(parse_bundle(mutated), TRUSTED_KEY, HELLO)


def test_every_refusal_is_a_p2pcache_error_with_a_reason():
    # The server maps these to a status code and a metric label; a bare ValueError would be a bug.
    for exc_type in (
        AttestationFormatError,
        AttestationVerificationError,
        BundleFormatError,
        ProofError,
        NoteVerificationError,
        CheckpointVerificationError,
    ):
        assert issubclass(exc_type, P2PCacheError)
    with pytest.raises(P2PCacheError) as caught:
        parse_bundle(b"p2pcache-bundle/v1\nIndex: 0\n")
    assert caught.value.reason == "structure"
