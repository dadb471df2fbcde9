"""Signed notes, checkpoints, witness cosignatures (C2SP): against others' data and our vectors."""

from __future__ import annotations

import base64
import hashlib

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcache.trust.checkpoint import (
    Checkpoint,
    CheckpointVerificationError,
    builder_origin,
    cosign_checkpoint,
    parse_checkpoint,
    render_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
)
from p2pcache.trust.cosignature import (
    CosignatureVerifier,
    Cosigner,
    cosignature_timestamp,
    cosigned_message,
)
from p2pcache.trust.merkle_hash import leaf_hash
from p2pcache.trust.merkle_proof import verify_consistency, verify_inclusion
from p2pcache.trust.signed_note import (
    Ed25519NoteSigner,
    Ed25519NoteVerifier,
    NoteFormatError,
    NoteVerificationError,
    format_verifier_key,
    parse_note,
    parse_verifier_key,
    render_note,
    sign_note,
    verify_note,
)
from tests.trust import merkle_reference as ref
from tests.trust.attestation_vectors import data_of, load, names

# golang.org/x/mod/sumdb/note's documented example (note.go and note_test.go): a note, its
# verifier key and secret key. Ed25519 is deterministic, so we must reproduce it byte for byte.
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + (
        "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXg"
        "KvqfqdngotpRZb6KE6RyyBwJnAM=\n"
    ).encode()
)

CHECKPOINTS = load("checkpoints")


def key(label: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(label.encode()).digest())


# -- signed notes ---------------------------------------------------------------------------------


def test_go_example_note_verifies_and_is_reproduced_byte_for_byte():
    name, signature_type, public = parse_verifier_key(GO_VKEY)
    assert (name, signature_type) == ("PeterNeumann", 1)
    note = parse_note(GO_NOTE)
    ((verifier, _),) = verify_note(note, [Ed25519NoteVerifier(name, public)])
    assert verifier.name == "PeterNeumann"
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])[1:]
    signer = Ed25519NoteSigner("PeterNeumann", nacl.signing.SigningKey(seed))
    assert render_note(sign_note(GO_TEXT, [signer])) == GO_NOTE


@pytest.mark.parametrize(
    "vkey",
    [
        GO_VKEY,
        "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop",  # sumdb/note tests
        "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6",  # formats: '+' in base64
        "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2",  # type 0x04
    ],
)
def test_published_verifier_keys_have_the_key_ids_we_compute(vkey):
    name, signature_type, public = parse_verifier_key(vkey)
    assert format_verifier_key(name, signature_type, public) == vkey


def test_a_verifier_key_with_a_wrong_key_id_is_refused():
    with pytest.raises(NoteFormatError) as caught:
        parse_verifier_key(GO_VKEY.replace("c74f20a3", "c74f20a4"))
    assert caught.value.reason == "vkey"


def test_cosignature_timestamp_layout_matches_transparency_dev():
    # transparency-dev/formats note_cosigv1_test.go: this cosignature was made at 1727964367.
    blob = base64.b64decode(
        "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFi"
        "EBYJXORmnFBOBA=="
    )
    assert cosignature_timestamp(blob[4:]) == 1727964367


def test_unknown_signatures_are_ignored_and_a_bad_known_one_rejects_the_note():
    a, b = Ed25519NoteSigner("a.example/k", key("a")), Ed25519NoteSigner("b.example/k", key("b"))
    note = sign_note(b"hello\n", [a, b])
    a_verifier = Ed25519NoteVerifier("a.example/k", bytes(key("a").verify_key))
    assert [v for v, _ in verify_note(note, [a_verifier])] == [a_verifier]
    with pytest.raises(NoteVerificationError) as caught:
        verify_note(note, [Ed25519NoteVerifier("c.example/k", bytes(key("c").verify_key))])
    assert caught.value.reason == "no-known-signature"
    forged = parse_note(render_note(note).replace(b"hello", b"jello"))
    with pytest.raises(NoteVerificationError) as caught:
        verify_note(forged, [a_verifier])
    assert caught.value.reason == "bad-signature"


def test_the_last_blank_line_separates_text_and_signatures():
    signer = Ed25519NoteSigner("a.example/k", key("a"))
    text = b"first paragraph\n\nsecond paragraph\n"
    note = parse_note(render_note(sign_note(text, [signer])))
    assert note.text == text


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(st.characters(min_codepoint=0x20, exclude_categories=("Cs",))), min_size=1))
def test_any_note_text_round_trips(lines):
    text = ("\n".join(lines) + "\n").encode()
    signer = Ed25519NoteSigner("a.example/k", key("a"))
    data = render_note(sign_note(text, [signer]))
    assert render_note(parse_note(data)) == data
    assert parse_note(data).text == text


# -- checkpoints ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(0, (1 << 63) - 1), st.binary(min_size=32, max_size=32))
def test_checkpoint_text_round_trips(size, root):
    cp = Checkpoint("example.org/log", size, root)
    assert parse_checkpoint(render_checkpoint(cp)) == cp


def test_builder_origin_is_the_hex_public_key():
    public = bytes(range(32))
    assert builder_origin(public) == "p2pcache/builder/" + public.hex()


def test_checkpoint_signature_is_ed25519_over_the_note_text():
    builder = key("builder")
    public = bytes(builder.verify_key)
    cp = Checkpoint(builder_origin(public), 5, hashlib.sha256(b"root").digest())
    note = sign_checkpoint(cp, builder)
    text, _, line = note.decode().partition("\n\n")
    raw = base64.b64decode(line.split(" ")[2])
    assert raw[:4] == hashlib.sha256(cp.origin.encode() + b"\n\x01" + public).digest()[:4]
    nacl.signing.VerifyKey(public).verify((text + "\n").encode(), raw[4:])
    assert verify_checkpoint(note, public).checkpoint == cp


def test_witness_cosignatures_are_counted_by_distinct_key():
    builder, w1, w2 = (
        key("builder"),
        Cosigner("w.example/1", key("w1")),
        Cosigner("w.example/2", key("w2")),
    )
    public = bytes(builder.verify_key)
    note = sign_checkpoint(Checkpoint(builder_origin(public), 9, bytes(32)), builder)
    once = cosign_checkpoint(verify_checkpoint(note, public), w1, 1_700_000_000)
    twice = cosign_checkpoint(verify_checkpoint(once, public), w2, 1_700_000_009)
    verified = verify_checkpoint(
        twice, public, witnesses=[w1.verifier, w2.verifier], required_cosignatures=2
    )
    assert [(c.name, c.timestamp) for c in verified.cosignatures] == [
        ("w.example/1", 1_700_000_000),
        ("w.example/2", 1_700_000_009),
    ]
    # One key cosigning under two names is one witness, whatever the names say.
    alias = Cosigner("w.example/alias", key("w1"))
    both = cosign_checkpoint(verify_checkpoint(once, public), alias, 1_700_000_001)
    with pytest.raises(CheckpointVerificationError) as caught:
        verify_checkpoint(
            both, public, witnesses=[w1.verifier, alias.verifier], required_cosignatures=2
        )
    assert caught.value.reason == "too-few-cosignatures"


def test_cosigned_message_is_header_time_and_text():
    text = b"example.org/log\n3\n" + base64.b64encode(bytes(32)) + b"\n"
    assert cosigned_message(text, 42) == b"cosignature/v1\ntime 42\n" + text


# -- vectors --------------------------------------------------------------------------------------


def witnesses() -> list[CosignatureVerifier]:
    return [
        CosignatureVerifier(w["name"], bytes.fromhex(w["public_key"]))
        for w in CHECKPOINTS["witnesses"]
    ]


def test_vector_key_ids_follow_the_formula():
    log = CHECKPOINTS["log"]
    public = bytes.fromhex(CHECKPOINTS["builder"]["public_key"])
    assert log["origin"] == "p2pcache/builder/" + public.hex()
    expected = hashlib.sha256(log["origin"].encode() + b"\n\x01" + public).digest()[:4]
    assert log["key_id"] == expected.hex()
    for w in CHECKPOINTS["witnesses"]:
        material = w["name"].encode() + b"\n\x04" + bytes.fromhex(w["public_key"])
        assert w["key_id"] == hashlib.sha256(material).digest()[:4].hex()
        assert parse_verifier_key(w["vkey"]) == (w["name"], 4, bytes.fromhex(w["public_key"]))
    assert parse_verifier_key(log["vkey"])[2] == public


def test_vector_log_roots_and_proofs_are_the_rfc_ones():
    log = CHECKPOINTS["log"]
    leaves = [leaf.encode() for leaf in log["leaves"]]
    assert log["roots"] == [ref.mth(leaves[:n]).hex() for n in range(1, len(leaves) + 1)]
    for case in log["inclusion"]:
        i, n = case["index"], case["size"]
        proof = [bytes.fromhex(h) for h in case["proof"]]
        assert proof == ref.path(i, leaves[:n])
        verify_inclusion(i, n, leaf_hash(leaves[i]), proof, ref.mth(leaves[:n]))
    for case in log["consistency"]:
        m, n = case["old"], case["new"]
        proof = [bytes.fromhex(h) for h in case["proof"]]
        assert proof == ref.proof(m, leaves[:n])
        verify_consistency(m, n, proof, ref.mth(leaves[:m]), ref.mth(leaves[:n]))


@pytest.mark.parametrize("case", CHECKPOINTS["valid"], ids=names(CHECKPOINTS["valid"]))
def test_valid_checkpoint_vector(case):
    public = bytes.fromhex(CHECKPOINTS["builder"]["public_key"])
    verified = verify_checkpoint(
        case["note"].encode(),
        public,
        witnesses=witnesses(),
        required_cosignatures=case["required_cosignatures"],
    )
    assert verified.size == case["size"]
    assert verified.root.hex() == CHECKPOINTS["log"]["roots"][case["size"] - 1]
    assert [c.timestamp for c in verified.cosignatures] == case.get("cosignature_times", [])


@pytest.mark.parametrize("case", CHECKPOINTS["invalid"], ids=names(CHECKPOINTS["invalid"]))
def test_invalid_checkpoint_vector(case):
    public = bytes.fromhex(case.get("builder_key", CHECKPOINTS["builder"]["public_key"]))
    data = data_of(case)
    if case["stage"] == "parse":
        with pytest.raises(NoteFormatError) as caught:
            parse_checkpoint(parse_note(data).text)
    else:
        parse_checkpoint(parse_note(data).text)  # well formed: the failure is in verification
        with pytest.raises((NoteVerificationError, CheckpointVerificationError)) as caught:
            verify_checkpoint(
                data,
                public,
                witnesses=witnesses(),
                required_cosignatures=case.get("required_cosignatures", 0),
            )
    assert caught.value.reason == case["reason"]
