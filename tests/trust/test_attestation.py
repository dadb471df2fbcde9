"""Attestations: the protocol vectors, recomputed from the spec's words; round-trip properties."""

from __future__ import annotations

import hashlib

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcache.errors import StorePathError
from p2pcache.guix import nix32
from p2pcache.guix.store_path import parse_basename
from p2pcache.trust.attestation import (
    MAX_REFERENCES,
    Attestation,
    AttestationFormatError,
    AttestationVerificationError,
    Evidence,
    parse_attestation,
    render_attestation,
    render_statement,
    sign_attestation,
    verify_attestation,
)
from tests.trust.attestation_vectors import data_of, load, names

STATEMENTS = load("statements")
KEY = nacl.signing.SigningKey(hashlib.sha256(b"attestation test builder").digest())
PUBLIC = bytes(KEY.verify_key)


def make(**fields) -> Attestation:
    values = {
        "builder": PUBLIC,
        "store_path": "/gnu/store/" + "a" * 32 + "-hello-2.12.1",
        "nar_hash": hashlib.sha256(b"nar").digest(),
        "nar_size": 1088,
        "references": ("b" * 32 + "-glibc-2.39",),
        "deriver": "c" * 32 + "-hello-2.12.1.drv",
        "system": "x86_64-linux",
        "time": 1_700_000_000,
        "chunk_root": hashlib.sha256(b"root").digest(),
        "evidence": Evidence.BUILD_LOG,
    }
    values.update(fields)
    return Attestation(**values)


# -- vectors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", STATEMENTS["valid"], ids=names(STATEMENTS["valid"]))
def test_valid_vector_matches_the_spec(case):
    text = case["text"].encode()
    lines = text.split(b"\n")
    # From the spec's words: twelve LF-terminated lines; the signed message is the first
    # eleven; the signature is Ed25519 by the key in the Builder line; the leaf hash is
    # SHA-256(0x00 || all twelve lines).
    assert len(lines) == 13 and lines[-1] == b""
    assert lines[0] == b"p2pcache-attestation/v1"
    message = b"\n".join(lines[:11]) + b"\n"
    assert case["signed_message"].encode() == message
    builder = bytes.fromhex(case["fields"]["builder"])
    nacl.signing.VerifyKey(builder).verify(message, bytes.fromhex(case["signature"]))
    assert case["leaf_hash"] == hashlib.sha256(b"\x00" + text).hexdigest()
    # And our code agrees.
    signed = parse_attestation(text)
    assert render_attestation(signed) == text
    assert render_statement(signed.attestation) == message
    assert verify_attestation(signed, builder) == signed.attestation
    fields = case["fields"]
    a = signed.attestation
    assert a.store_path == fields["store_path"]
    assert a.nar_hash.hex() == fields["nar_hash"]
    assert f"NarHash: sha256:{nix32.encode(a.nar_hash)}".encode() in lines
    assert a.nar_size == fields["nar_size"] and a.time == fields["time"]
    assert list(a.references) == fields["references"] == sorted(fields["references"])
    assert a.deriver == fields["deriver"] and a.system == fields["system"]
    assert a.chunk_root.hex() == fields["chunk_root"] and a.evidence.value == fields["evidence"]


@pytest.mark.parametrize("case", STATEMENTS["invalid"], ids=names(STATEMENTS["invalid"]))
def test_invalid_vector_is_refused_for_its_reason(case):
    with pytest.raises(AttestationFormatError) as caught:
        parse_attestation(data_of(case))
    assert caught.value.reason == case["reason"]


@pytest.mark.parametrize("case", STATEMENTS["unverifiable"], ids=names(STATEMENTS["unverifiable"]))
def test_unverifiable_vector_parses_but_does_not_verify(case):
    signed = parse_attestation(data_of(case))
    with pytest.raises(AttestationVerificationError) as caught:
        verify_attestation(signed, bytes.fromhex(case["builder_key"]))
    assert caught.value.reason == case["reason"]


# -- behaviour ------------------------------------------------------------------------------------


def test_an_empty_reference_list_and_unknown_deriver_are_written_bare():
    text = render_attestation(sign_attestation(make(references=(), deriver=None), KEY))
    assert b"\nReferences:\n" in text and b"\nDeriver:\n" in text
    assert b" \n" not in text


def test_references_are_kept_sorted_whatever_order_they_come_in():
    refs = ("z" * 32 + "-zlib-1.3", "0" * 32 + "-acl-2.3.1", "m" * 32 + "-mpfr-4.2.1")
    assert make(references=refs).references == tuple(sorted(refs))


def test_a_repeated_reference_is_refused():
    with pytest.raises(AttestationFormatError) as caught:
        make(references=("b" * 32 + "-x", "b" * 32 + "-x"))
    assert caught.value.reason == "non-canonical"


def test_signing_with_a_key_other_than_the_named_builder_is_refused():
    other = nacl.signing.SigningKey(bytes(32))
    with pytest.raises(ValueError, match="not the builder key"):
        sign_attestation(make(), other)


def test_forced_evidence_says_so():
    assert make(evidence=Evidence.FORCED).evidence.is_forced
    assert not make(evidence=Evidence.CHECK).evidence.is_forced


NAME = st.text("abcdefghijklmnopqrstuvwxyz0123456789+-._?=", min_size=1, max_size=40).filter(
    lambda s: not s.startswith(".")
)
HASH_PART = st.text(nix32.ALPHABET, min_size=32, max_size=32)


@st.composite
def attestations(draw) -> Attestation:
    references = draw(st.lists(st.tuples(HASH_PART, NAME), max_size=20, unique=True))
    deriver = draw(st.one_of(st.none(), st.tuples(HASH_PART, NAME)))
    return make(
        store_path=f"/gnu/store/{draw(HASH_PART)}-{draw(NAME)}",
        nar_hash=draw(st.binary(min_size=32, max_size=32)),
        nar_size=draw(st.integers(1, (1 << 63) - 1)),
        references=tuple({f"{h}-{n}" for h, n in references}),
        deriver=None if deriver is None else f"{deriver[0]}-{deriver[1]}.drv",
        system=draw(
            st.sampled_from(["x86_64-linux", "aarch64-linux", "i586-gnu", "riscv64-linux"])
        ),
        time=draw(st.integers(0, (1 << 63) - 1)),
        chunk_root=draw(st.binary(min_size=32, max_size=32)),
        evidence=draw(st.sampled_from(Evidence)),
    )


@settings(max_examples=100, deadline=None)
@given(attestations())
def test_every_attestation_round_trips_and_verifies(attestation):
    signed = sign_attestation(attestation, KEY)
    text = render_attestation(signed)
    assert parse_attestation(text) == signed
    assert verify_attestation(parse_attestation(text), PUBLIC) == attestation
    assert text.isascii() and b"\r" not in text and b"  " not in text


@settings(max_examples=100, deadline=None)
@given(attestations(), st.data())
def test_any_single_byte_change_is_refused_or_fails_verification(attestation, data):
    text = render_attestation(sign_attestation(attestation, KEY))
    position = data.draw(st.integers(0, len(text) - 1))
    replacement = data.draw(st.integers(0, 255).filter(lambda b: b != text[position]))
    mutated = text[:position] + bytes([replacement]) + text[position + 1 :]
    with pytest.raises((AttestationFormatError, AttestationVerificationError)):
        verify_attestation(parse_attestation(mutated), PUBLIC)


def test_the_reference_limit_is_exactly_the_documented_one():
    refs = tuple(f"{nix32.encode(i.to_bytes(20, 'big'))}-r" for i in range(MAX_REFERENCES))
    text = render_attestation(sign_attestation(make(references=refs), KEY))
    assert len(parse_attestation(text).attestation.references) == MAX_REFERENCES


BASENAME_CHARS = nix32.ALPHABET + "eotuABZ+-._?=/ \u00e9\n"


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(BASENAME_CHARS, max_size=50),
        st.tuples(HASH_PART, st.text(BASENAME_CHARS, max_size=215)).map("-".join),
    )
)
def test_store_path_rules_are_exactly_guix_rules(basename):
    try:
        parse_basename(basename)
        guix_accepts = True
    except StorePathError:
        guix_accepts = False
    try:
        make(store_path="/gnu/store/" + basename, references=(basename,) if guix_accepts else ())
        we_accept = True
    except AttestationFormatError as e:
        assert e.reason == "value"
        we_accept = False
    assert we_accept == guix_accepts
