"""Witness cosignatures on their own (c2sp.org/tlog-cosignature, Ed25519 `cosignature/v1`).

Checkpoint and witness tests use cosignatures through whole checkpoints; here the format
itself is pinned: the key ID formula (type 0x04), the 72-byte `u64be(timestamp) || Ed25519`
signature, the signed message `cosignature/v1\\ntime <t>\\n<text>`, byte-exact lines from our
checkpoint vectors, the timestamp bound (2**63 - 1) on both sides, domain separation from
plain note signatures by the same key, and hostile input: random or edited cosignatures only
ever raise NoteFormatError / NoteVerificationError and never verify when changed.
"""

from __future__ import annotations

import hashlib

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcache.trust.cosignature import (
    COSIGNATURE_HEADER,
    COSIGNATURE_SIGNATURE_TYPE,
    COSIGNATURE_SIZE,
    MAX_TIMESTAMP,
    Cosignature,
    CosignatureVerifier,
    Cosigner,
    cosignature_key_id,
    cosignature_timestamp,
    cosigned_message,
)
from p2pcache.trust.signed_note import (
    Ed25519NoteSigner,
    Ed25519NoteVerifier,
    Note,
    NoteFormatError,
    NoteSignature,
    NoteVerificationError,
    add_signatures,
    decode_canonical_base64,
    format_verifier_key,
    key_id,
    parse_note,
    parse_verifier_key,
    render_note,
    sign_note,
    verify_note,
)
from tests.trust.attestation_vectors import load
from tests.trust.test_signed_note import key, note_texts, one_edit

CHECKPOINTS = load("checkpoints")

NAME = "witness.example/w1"
TEXT = b"example.org/log\n7\nh6sbBJRjnPpm4FrSeLXd1JHpEKGSvJAPuZECPC0uoIc=\n"
TIME = 1_732_000_600

# transparency-dev/formats note/note_cosigv1_test.go (TestCosignatureTimestamp): a real
# cosignature line's base64, made at 1727964367, and a plain Ed25519 note signature's.
TDEV_COSIGNATURE = (
    "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFi"
    "EBYJXORmnFBOBA=="
)
TDEV_NOTE_SIGNATURE = (
    "eQjRQm6eSKzFoiYalgwCPXu2y3ijtg68is9M46JKxuZB+dRfTmeQeDBoXnvxZx2ugnkyV+MUMLXpWs1hPb/W/4xkNQY="
)
# A published tlog-cosignature witness key (type 0x04) with the key ID its operator computed.
REMORA_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"


def cosigner(label: str = "w1", name: str = NAME) -> Cosigner:
    return Cosigner(name, key(label))


def cosignature_verifier(label: str = "w1", name: str = NAME) -> CosignatureVerifier:
    return CosignatureVerifier(name, bytes(key(label).verify_key))


COSIGNED = render_note(Note(TEXT, (cosigner().cosign(TEXT, TIME),)))
"""A note carrying one cosignature only: any change to it must stop it verifying."""


def refused(note: Note, verifiers: list) -> NoteVerificationError:
    with pytest.raises(NoteVerificationError) as caught:
        verify_note(note, verifiers)
    return caught.value


# -- exact bytes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 1], ids=["w1", "w2"])
def test_vector_cosignature_lines_are_reproduced_from_the_witness_seeds(index):
    witness = CHECKPOINTS["witnesses"][index]
    case = next(c for c in CHECKPOINTS["valid"] if c["name"] == "size-7-cosigned")
    note = parse_note(case["note"].encode())
    c = Cosigner(witness["name"], nacl.signing.SigningKey(bytes.fromhex(witness["seed"])))
    line = c.cosign(note.text, case["cosignature_times"][index])
    assert line == note.signatures[1 + index]
    assert line.key_id.hex() == witness["key_id"]
    assert bytes(c.verifier.public_key).hex() == witness["public_key"]


def test_vector_witness_vkeys_are_type_4_with_the_cosignature_key_id():
    for witness in CHECKPOINTS["witnesses"]:
        public = bytes.fromhex(witness["public_key"])
        vkey = format_verifier_key(witness["name"], COSIGNATURE_SIGNATURE_TYPE, public)
        assert vkey == witness["vkey"]
        assert cosignature_key_id(witness["name"], public).hex() == witness["key_id"]


def test_a_published_witness_key_id_is_the_one_we_compute():
    name, signature_type, public = parse_verifier_key(REMORA_VKEY)
    assert signature_type == COSIGNATURE_SIGNATURE_TYPE
    assert cosignature_key_id(name, public).hex() == "da77ade7"
    assert CosignatureVerifier(name, public).key_id.hex() == "da77ade7"


def test_cosignature_key_id_is_the_signed_note_formula_with_type_4():
    public = bytes(key("w1").verify_key)
    expected = hashlib.sha256(NAME.encode() + b"\n\x04" + public).digest()[:4]
    assert cosignature_key_id(NAME, public) == expected
    assert cosignature_key_id(NAME, public) != key_id(NAME, 0x01, public)


def test_the_signed_message_is_header_time_line_and_note_text():
    assert COSIGNATURE_HEADER == b"cosignature/v1\n"
    assert cosigned_message(TEXT, TIME) == b"cosignature/v1\ntime 1732000600\n" + TEXT
    assert cosigned_message(TEXT, 0) == b"cosignature/v1\ntime 0\n" + TEXT
    assert cosigned_message(b"\n", MAX_TIMESTAMP) == b"cosignature/v1\ntime 9223372036854775807\n\n"


def test_a_cosignature_is_a_big_endian_timestamp_then_ed25519_over_the_message():
    line = cosigner().cosign(TEXT, TIME)
    assert line.name == NAME
    assert line.key_id == cosignature_key_id(NAME, bytes(key("w1").verify_key))
    assert len(line.signature) == COSIGNATURE_SIZE == 72
    assert line.signature[:8] == bytes.fromhex("00000000673c3b58")
    key("w1").verify_key.verify(cosigned_message(TEXT, TIME), line.signature[8:])


def test_the_cosigner_knows_its_name_key_id_and_verifier():
    c = cosigner()
    assert c.name == NAME
    assert c.key_id == cosignature_key_id(NAME, bytes(key("w1").verify_key))
    assert c.verifier == cosignature_verifier()
    assert c.verifier.key_id == c.key_id


# -- timestamps -----------------------------------------------------------------------------------


def test_the_transparency_dev_cosignature_carries_its_timestamp():
    blob = decode_canonical_base64(TDEV_COSIGNATURE, "cosignature")
    assert cosignature_timestamp(blob[4:]) == 1727964367


def test_a_plain_note_signature_has_no_cosignature_timestamp():
    blob = decode_canonical_base64(TDEV_NOTE_SIGNATURE, "signature")
    with pytest.raises(NoteVerificationError, match="a cosignature is 72 bytes, not 64") as caught:
        cosignature_timestamp(blob[4:])
    assert caught.value.reason == "bad-cosignature"


@pytest.mark.parametrize("length", [0, 8, 64, 71, 73, 144])
def test_a_cosignature_of_any_other_length_has_no_timestamp(length):
    with pytest.raises(NoteVerificationError, match=f"72 bytes, not {length}") as caught:
        cosignature_timestamp(bytes(length))
    assert caught.value.reason == "bad-cosignature"


@pytest.mark.parametrize("timestamp", [0, 1, TIME, 1 << 32, MAX_TIMESTAMP])
def test_timestamps_round_trip_through_a_verified_cosignature(timestamp):
    note = parse_note(render_note(Note(TEXT, (cosigner().cosign(TEXT, timestamp),))))
    ((v, line),) = verify_note(note, [cosignature_verifier()])
    assert cosignature_timestamp(line.signature) == timestamp
    assert v.accept(line) == Cosignature(NAME, bytes(key("w1").verify_key), timestamp)


@pytest.mark.parametrize("timestamp", [-1, MAX_TIMESTAMP + 1, 1 << 64])
def test_timestamps_outside_0_to_2_63_minus_1_cannot_be_cosigned(timestamp):
    with pytest.raises(ValueError, match="between 0 and 2\\*\\*63 - 1"):
        cosigned_message(TEXT, timestamp)
    with pytest.raises(ValueError, match="between 0 and 2\\*\\*63 - 1"):
        cosigner().cosign(TEXT, timestamp)


@pytest.mark.parametrize("timestamp", [MAX_TIMESTAMP + 1, (1 << 64) - 1])
def test_a_genuine_signature_over_a_timestamp_beyond_2_63_minus_1_is_refused(timestamp):
    """The witness really signed it (bypassing our cosigner): the bound still holds."""
    message = COSIGNATURE_HEADER + b"time %d\n" % timestamp + TEXT
    signature = timestamp.to_bytes(8, "big") + key("w1").sign(message).signature
    note = Note(TEXT, (NoteSignature(NAME, cosignature_verifier().key_id, signature),))
    error = refused(note, [cosignature_verifier()])
    assert error.reason == "bad-cosignature"
    assert "timestamp beyond 2**63 - 1" in str(error)


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [b"no newline", b"", b"a\x00\n", b"a\r\n", b"\xff\n"])
def test_only_note_texts_can_be_cosigned(text):
    with pytest.raises(NoteFormatError):
        cosigned_message(text, TIME)
    with pytest.raises(NoteFormatError):
        cosigner().cosign(text, TIME)


@pytest.mark.parametrize("name", ["", "a+b", "a b", "a\u00a0b", "x" * 257])
def test_cosigners_and_verifiers_need_a_valid_key_name(name):
    with pytest.raises(NoteFormatError) as caught:
        Cosigner(name, key("w1"))
    assert caught.value.reason == "key-name"
    with pytest.raises(NoteFormatError):
        CosignatureVerifier(name, bytes(32))
    with pytest.raises(NoteFormatError):
        cosignature_key_id(name, bytes(32))


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_a_cosignature_verifier_needs_a_32_byte_key(length):
    with pytest.raises(ValueError, match="32 bytes"):
        CosignatureVerifier(NAME, bytes(length))


def test_an_edited_text_fails_the_cosignature():
    line = cosigner().cosign(TEXT, TIME)
    edited = Note(TEXT.replace(b"\n7\n", b"\n8\n"), (line,))
    error = refused(edited, [cosignature_verifier()])
    assert error.reason == "bad-cosignature"
    assert f"the cosignature by {NAME} does not verify" in str(error)


@pytest.mark.parametrize("delta", [1, -1, 1 << 40])
def test_an_edited_timestamp_fails_the_cosignature(delta):
    line = cosigner().cosign(TEXT, TIME)
    moved = (TIME + delta).to_bytes(8, "big") + line.signature[8:]
    note = Note(TEXT, (NoteSignature(NAME, line.key_id, moved),))
    assert refused(note, [cosignature_verifier()]).reason == "bad-cosignature"


def test_a_cosignature_by_another_key_claiming_the_witness_key_id_fails():
    forged = cosigner("impostor").cosign(TEXT, TIME)
    note = Note(TEXT, (NoteSignature(NAME, cosignature_verifier().key_id, forged.signature),))
    assert refused(note, [cosignature_verifier()]).reason == "bad-cosignature"


def test_a_cosignature_by_another_key_under_the_witness_name_is_ignored():
    note = Note(TEXT, (cosigner("impostor").cosign(TEXT, TIME),))
    assert refused(note, [cosignature_verifier()]).reason == "no-known-signature"


@pytest.mark.parametrize("length", [64, 71, 73])
def test_a_known_witness_line_of_the_wrong_length_is_a_bad_cosignature(length):
    note = Note(TEXT, (NoteSignature(NAME, cosignature_verifier().key_id, bytes(length)),))
    error = refused(note, [cosignature_verifier()])
    assert error.reason == "bad-cosignature"
    assert f"72 bytes, not {length}" in str(error)


def test_a_bad_cosignature_rejects_the_note_even_beside_a_good_one():
    good = cosigner("w1").cosign(TEXT, TIME)
    w2 = cosigner("w2", "witness.example/w2")
    bad = NoteSignature(w2.name, w2.key_id, w2.cosign(TEXT, TIME).signature[:-1] + b"\x00")
    note = Note(TEXT, (good, bad))
    error = refused(note, [cosignature_verifier(), w2.verifier])
    assert error.reason == "bad-cosignature"
    assert "witness.example/w2" in str(error)


def test_two_witnesses_cosignatures_verify_in_line_order_with_their_times():
    w1, w2 = cosigner("w1"), cosigner("w2", "witness.example/w2")
    note = sign_note(TEXT, [Ed25519NoteSigner("example.org/log", key("log"))])
    note = add_signatures(note, [w2.cosign(TEXT, TIME + 1), w1.cosign(TEXT, TIME)])
    passed = verify_note(parse_note(render_note(note)), [w1.verifier, w2.verifier])
    assert [v.accept(s) for v, s in passed] == [
        Cosignature("witness.example/w2", bytes(key("w2").verify_key), TIME + 1),
        Cosignature(NAME, bytes(key("w1").verify_key), TIME),
    ]


# -- domain separation ----------------------------------------------------------------------------


def test_a_note_signature_by_the_same_key_and_name_is_not_a_cosignature():
    note = sign_note(TEXT, [Ed25519NoteSigner(NAME, key("w1"))])
    assert refused(note, [cosignature_verifier()]).reason == "no-known-signature"


def test_a_cosignature_is_not_a_note_signature_by_the_same_key_and_name():
    note = Note(TEXT, (cosigner().cosign(TEXT, TIME),))
    note_verifier = Ed25519NoteVerifier(NAME, bytes(key("w1").verify_key))
    assert refused(note, [note_verifier]).reason == "no-known-signature"


def test_a_note_signature_relabelled_as_a_cosignature_fails():
    plain = key("w1").sign(TEXT).signature
    for signature in (plain, TIME.to_bytes(8, "big") + plain):
        line = NoteSignature(NAME, cosignature_verifier().key_id, signature)
        assert refused(Note(TEXT, (line,)), [cosignature_verifier()]).reason == "bad-cosignature"


def test_a_cosignature_relabelled_as_a_note_signature_fails():
    note_verifier = Ed25519NoteVerifier(NAME, bytes(key("w1").verify_key))
    ed25519_part = cosigner().cosign(TEXT, TIME).signature[8:]
    line = NoteSignature(NAME, note_verifier.key_id, ed25519_part)
    assert refused(Note(TEXT, (line,)), [note_verifier]).reason == "bad-signature"


def test_the_v1_message_does_not_commit_to_the_witness_name():
    """tlog-cosignature v1 signs no name, so one key must serve one witness (module docstring):
    the same key's signature verifies under any name once the key ID is recomputed."""
    line = cosigner("w1", "witness.example/a").cosign(TEXT, TIME)
    other = cosignature_verifier("w1", "witness.example/b")
    moved = NoteSignature(other.name, other.key_id, line.signature)
    other.verify(TEXT, moved.signature)
    assert other.accept(moved).name == "witness.example/b"


# -- round trips and hostile input ----------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(note_texts, st.integers(0, MAX_TIMESTAMP))
def test_any_text_cosigned_at_any_time_verifies_after_a_round_trip(text, timestamp):
    data = render_note(Note(text, (cosigner().cosign(text, timestamp),)))
    ((v, line),) = verify_note(parse_note(data), [cosignature_verifier()])
    assert v.accept(line).timestamp == timestamp
    assert render_note(parse_note(data)) == data


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=100))
def test_random_signature_bytes_under_the_witness_key_id_never_verify(signature):
    note = Note(TEXT, (NoteSignature(NAME, cosignature_verifier().key_id, signature),))
    assert refused(note, [cosignature_verifier()]).reason == "bad-cosignature"


@settings(max_examples=200, deadline=None)
@given(st.integers(0, (1 << 64) - 1), st.binary(min_size=64, max_size=64))
def test_random_72_byte_cosignatures_at_any_timestamp_never_verify(timestamp, ed25519_part):
    signature = timestamp.to_bytes(8, "big") + ed25519_part
    assert cosignature_timestamp(signature) == timestamp
    note = Note(TEXT, (NoteSignature(NAME, cosignature_verifier().key_id, signature),))
    assert refused(note, [cosignature_verifier()]).reason == "bad-cosignature"


def cosigned_verifies(data: bytes) -> bool:
    """Whether `data` parses and its cosignature verifies; other errors propagate."""
    try:
        verify_note(parse_note(data), [cosignature_verifier()])
    except (NoteFormatError, NoteVerificationError):
        return False
    return True


def test_the_unedited_cosigned_note_verifies():
    assert cosigned_verifies(COSIGNED)


@settings(max_examples=300, deadline=None)
@given(one_edit(COSIGNED))
def test_a_cosigned_note_with_one_byte_changed_never_verifies(data):
    assert cosigned_verifies(data) == (data == COSIGNED)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_cosigned_note_with_a_slice_replaced_never_verifies_a_changed_cosignature(data):
    start = data.draw(st.integers(0, len(COSIGNED)))
    end = data.draw(st.integers(start, len(COSIGNED)))
    edited = COSIGNED[:start] + data.draw(st.binary(max_size=8)) + COSIGNED[end:]
    try:
        passed = verify_note(parse_note(edited), [cosignature_verifier()])
    except (NoteFormatError, NoteVerificationError):
        return
    original = parse_note(COSIGNED)
    assert parse_note(edited).text == original.text
    assert [s for _, s in passed] == [original.signatures[0]]
