"""The signed-note layer on its own (c2sp.org/signed-note): format, bounds, refusals, verification.

Checkpoints and witness cosignatures are built on this module, and their tests exercise it
only through them. Here each rule of the note format is checked where it lives: exact bytes
(golang.org/x/mod/sumdb/note's published example and our checkpoint vectors), every bound at
its edge, every refusal with its reason code, the verification rules of §Signatures (unknown
keys ignored, a failing known key rejects the note), and hostile input: random and mutated
notes must only ever raise NoteFormatError / NoteVerificationError and never verify when changed.
"""

from __future__ import annotations

import base64
import hashlib

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcache.trust.signed_note import (
    ED25519_SIGNATURE_TYPE,
    MAX_KEY_NAME_LENGTH,
    MAX_NOTE_SIGNATURES,
    MAX_NOTE_SIZE,
    Ed25519NoteSigner,
    Ed25519NoteVerifier,
    Note,
    NoteFormatError,
    NoteSignature,
    NoteVerificationError,
    add_signatures,
    check_key_name,
    check_note_text,
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

# golang.org/x/mod/sumdb/note's documented example (note.go, note_test.go). Ed25519 is
# deterministic, so the same key must produce exactly these bytes.
GO_NAME = "PeterNeumann"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SEED_BLOB = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"  # base64(type || seed) of its skey
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
GO_SIGNATURE_LINE = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXg"
    "KvqfqdngotpRZb6KE6RyyBwJnAM=\n"
).encode()
GO_NOTE = GO_TEXT + b"\n" + GO_SIGNATURE_LINE

CHECKPOINTS = load("checkpoints")

NAME = "a.example/k"
TEXT = b"example.org/log\n7\nh6sbBJRjnPpm4FrSeLXd1JHpEKGSvJAPuZECPC0uoIc=\n"
EM_DASH = "\u2014".encode()


def key(label: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(label.encode()).digest())


def signer(label: str = "a", name: str = NAME) -> Ed25519NoteSigner:
    return Ed25519NoteSigner(name, key(label))


def verifier(label: str = "a", name: str = NAME) -> Ed25519NoteVerifier:
    return Ed25519NoteVerifier(name, bytes(key(label).verify_key))


def go_signer() -> Ed25519NoteSigner:
    seed = base64.b64decode(GO_SEED_BLOB)[1:]
    return Ed25519NoteSigner(GO_NAME, nacl.signing.SigningKey(seed))


SIGNED = render_note(sign_note(TEXT, [signer()]))
"""A note signed by one known key only: any change to it must stop it verifying."""


def refused_note(data: bytes, **bounds: int) -> NoteFormatError:
    with pytest.raises(NoteFormatError) as caught:
        parse_note(data, **bounds)
    return caught.value


def refused_verification(note: Note, verifiers: list) -> NoteVerificationError:
    with pytest.raises(NoteVerificationError) as caught:
        verify_note(note, verifiers)
    return caught.value


# -- exact bytes ----------------------------------------------------------------------------------


def test_go_example_parses_into_its_text_and_one_signature_line():
    note = parse_note(GO_NOTE)
    assert note.text == GO_TEXT
    (signature,) = note.signatures
    assert signature.name == GO_NAME
    assert signature.key_id == bytes.fromhex("c74f20a3")
    assert len(signature.signature) == 64


def test_go_example_is_signed_byte_for_byte_and_verifies_with_its_vkey():
    assert render_note(sign_note(GO_TEXT, [go_signer()])) == GO_NOTE
    name, signature_type, public = parse_verifier_key(GO_VKEY)
    ((_, signature),) = verify_note(parse_note(GO_NOTE), [Ed25519NoteVerifier(name, public)])
    assert signature_type == ED25519_SIGNATURE_TYPE
    assert signature == parse_note(GO_NOTE).signatures[0]


def test_go_signer_key_id_is_the_one_in_its_vkey():
    assert go_signer().key_id.hex() == "c74f20a3"
    public = parse_verifier_key(GO_VKEY)[2]
    assert format_verifier_key(GO_NAME, ED25519_SIGNATURE_TYPE, public) == GO_VKEY


def test_checkpoint_vector_note_is_reproduced_from_the_builder_seed():
    builder = nacl.signing.SigningKey(bytes.fromhex(CHECKPOINTS["builder"]["seed"]))
    origin = CHECKPOINTS["log"]["origin"]
    case = next(c for c in CHECKPOINTS["valid"] if c["name"] == "size-3")
    expected = case["note"].encode()
    text = parse_note(expected).text
    assert render_note(sign_note(text, [Ed25519NoteSigner(origin, builder)])) == expected


def test_a_signature_line_is_em_dash_space_name_space_base64_newline():
    line = NoteSignature("w.example/1", bytes([1, 2, 3, 4]), b"\xff" * 5).render()
    assert line == "\u2014 w.example/1 AQIDBP//////\n".encode()


def test_a_rendered_note_is_text_blank_line_then_signature_lines_in_order():
    first = NoteSignature("one", b"\x00" * 4, b"\x01")
    second = NoteSignature("two", b"\x00" * 4, b"\x02")
    rendered = render_note(Note(b"hello\n", (first, second)))
    assert rendered == b"hello\n\n" + first.render() + second.render()


def test_key_id_is_the_first_four_bytes_of_sha256_of_name_newline_type_key():
    public = bytes(range(32))
    for signature_type in (0x01, 0x04, 0xFF):
        material = b"a.example/k\n" + bytes([signature_type]) + public
        expected = hashlib.sha256(material).digest()[:4]
        assert key_id("a.example/k", signature_type, public) == expected
    assert key_id("a.example/k", 1, public) != key_id("a.example/l", 1, public)


def test_ed25519_signer_signs_the_note_text_with_its_key():
    s = signer()
    signature = s.sign(TEXT)
    nacl.signing.VerifyKey(bytes(key("a").verify_key)).verify(TEXT, signature)
    assert s.key_id == key_id(NAME, ED25519_SIGNATURE_TYPE, bytes(key("a").verify_key))
    assert s.key_id == verifier().key_id
    assert s.name == NAME


# -- round trips ----------------------------------------------------------------------------------

# Anything a key name may hold: letters, digits, punctuation, symbols; never a space or `+`.
key_names = st.text(
    st.characters(categories=("L", "N", "P", "S"), exclude_characters="+"),
    min_size=1,
    max_size=30,
)
# A note text: any Unicode but ASCII control characters other than newline (DEL included).
note_texts = st.text(
    st.characters(
        exclude_categories=("Cs",),
        exclude_characters="".join(chr(c) for c in range(0x20) if c != 0x0A),
    ),
    max_size=200,
).map(lambda s: (s + "\n").encode())


@settings(max_examples=200, deadline=None)
@given(
    note_texts,
    st.lists(
        st.tuples(key_names, st.binary(min_size=4, max_size=4), st.binary(min_size=1, max_size=80)),
        min_size=1,
        max_size=6,
    ),
)
def test_any_note_renders_and_parses_back_to_itself(text, lines):
    note = Note(text, tuple(NoteSignature(n, k, s) for n, k, s in lines))
    data = render_note(note)
    assert parse_note(data) == note
    assert render_note(parse_note(data)) == data


@settings(max_examples=100, deadline=None)
@given(note_texts, st.lists(st.sampled_from("abcdef"), min_size=1, max_size=4, unique=True))
def test_signed_notes_verify_after_a_round_trip_with_every_signer_listed(text, labels):
    signers = [signer(label, f"{label}.example/k") for label in labels]
    data = render_note(sign_note(text, signers))
    passed = verify_note(
        parse_note(data), [verifier(label, f"{label}.example/k") for label in labels]
    )
    assert [v.name for v, _ in passed] == [s.name for s in signers]


@settings(max_examples=200, deadline=None)
@given(key_names, st.integers(0, 0xFF), st.binary(min_size=1, max_size=64))
def test_verifier_keys_format_and_parse_back(name, signature_type, public):
    vkey = format_verifier_key(name, signature_type, public)
    assert parse_verifier_key(vkey) == (name, signature_type, public)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100))
def test_canonical_base64_decodes_what_the_standard_encoder_writes(raw):
    assert decode_canonical_base64(base64.b64encode(raw).decode(), "x") == raw


@pytest.mark.parametrize(
    "text",
    [b"\n", b"one\n\n", b"one\n\ntwo\n", b"\n\n\n", "caf\u00e9 \u2014 \U0001f600\n".encode()],
)
def test_texts_with_blank_lines_or_unicode_keep_their_exact_bytes(text):
    data = render_note(sign_note(text, [signer()]))
    note = parse_note(data)
    assert note.text == text
    assert verify_note(note, [verifier()])[0][1] == note.signatures[0]


def test_del_is_not_a_control_character_for_notes():
    text = b"delete \x7f is allowed\n"
    assert parse_note(render_note(sign_note(text, [signer()]))).text == text


# -- bounds ---------------------------------------------------------------------------------------


def rendered_unchecked(note: Note) -> bytes:
    """A note's bytes as `render_note` lays them out, without its bounds (which refuse to
    write what `parse_note` would refuse to read): input for the reading side's bounds."""
    return note.text + b"\n" + b"".join(s.render() for s in note.signatures)


def note_of_size(size: int) -> bytes:
    """A note of exactly `size` bytes, validly signed by `signer()`."""
    overhead = len(render_note(sign_note(b"\n", [signer()]))) - 1
    data = rendered_unchecked(sign_note(b"x" * (size - overhead - 1) + b"\n", [signer()]))
    assert len(data) == size
    return data


def test_a_note_of_exactly_the_maximum_size_is_accepted_and_verifies():
    note = parse_note(note_of_size(MAX_NOTE_SIZE))
    assert verify_note(note, [verifier()])[0][0] == verifier()


def test_a_note_one_byte_over_the_maximum_size_is_oversized():
    refused = refused_note(note_of_size(MAX_NOTE_SIZE + 1))
    assert refused.reason == "oversized"
    assert f"{MAX_NOTE_SIZE + 1} bytes, more than the {MAX_NOTE_SIZE} allowed" in str(refused)


def test_the_size_bound_is_the_callers_when_given():
    data = note_of_size(500)
    assert parse_note(data, max_size=500).text.startswith(b"xxx")
    assert refused_note(data, max_size=499).reason == "oversized"


def lines(count: int) -> tuple[NoteSignature, ...]:
    return tuple(NoteSignature(f"k{i}", b"\x00" * 4, bytes([i]) * 3) for i in range(count))


def test_the_maximum_number_of_signature_lines_is_accepted():
    note = parse_note(render_note(Note(TEXT, lines(MAX_NOTE_SIGNATURES))))
    assert len(note.signatures) == MAX_NOTE_SIGNATURES


def test_one_signature_line_over_the_maximum_is_oversized():
    refused = refused_note(rendered_unchecked(Note(TEXT, lines(MAX_NOTE_SIGNATURES + 1))))
    assert refused.reason == "oversized"
    assert f"{MAX_NOTE_SIGNATURES + 1} signatures, more than the 32 allowed" in str(refused)


def test_a_note_over_the_bounds_is_never_rendered():
    """What `parse_note` refuses, `render_note` does not write: a witness adding its line to
    a note that already has the most lines allowed, say."""
    full = Note(TEXT, lines(MAX_NOTE_SIGNATURES))
    assert parse_note(render_note(full)) == full
    extra = NoteSignature("w", b"\x00" * 4, b"\x02")
    with pytest.raises(NoteFormatError, match="would be refused when read") as caught:
        render_note(add_signatures(full, [extra]))
    assert caught.value.reason == "oversized"
    big = sign_note(b"x" * MAX_NOTE_SIZE + b"\n", [signer()])
    with pytest.raises(NoteFormatError, match="would be refused when read") as caught:
        render_note(big)
    assert caught.value.reason == "oversized"


def test_a_key_name_that_is_not_valid_unicode_is_a_format_error():
    """A lone surrogate (bytes from argv decoded with surrogateescape) cannot be encoded."""
    for bad in ("\udcff", "witness\udc80"):
        with pytest.raises(NoteFormatError) as caught:
            check_key_name(bad)
        assert caught.value.reason == "key-name"
        with pytest.raises(NoteFormatError):
            parse_verifier_key(f"{bad}+00000000+AQAA")
        with pytest.raises(NoteFormatError):
            Ed25519NoteVerifier(bad, bytes(32))


def test_the_signature_count_bound_is_the_callers_when_given():
    data = render_note(Note(TEXT, lines(3)))
    assert len(parse_note(data, max_signatures=3).signatures) == 3
    assert refused_note(data, max_signatures=2).reason == "oversized"


def test_thirty_two_real_signatures_all_verify():
    """C2SP: verifiers MUST accept at least 16 signatures; we accept our full bound."""
    labels = [f"s{i}" for i in range(MAX_NOTE_SIGNATURES)]
    signers = [signer(label, f"{label}.example") for label in labels]
    note = parse_note(render_note(sign_note(TEXT, signers)))
    passed = verify_note(note, [verifier(label, f"{label}.example") for label in labels])
    assert len(passed) == MAX_NOTE_SIGNATURES


@pytest.mark.parametrize(
    "name",
    ["a" * MAX_KEY_NAME_LENGTH, "\u00e9" * (MAX_KEY_NAME_LENGTH // 2), "\U0001f600" * 64],
)
def test_key_names_of_exactly_the_maximum_bytes_are_accepted(name):
    assert len(name.encode()) == MAX_KEY_NAME_LENGTH
    data = render_note(sign_note(TEXT, [signer(name=name)]))
    assert parse_note(data).signatures[0].name == name
    assert verify_note(parse_note(data), [verifier(name=name)])


@pytest.mark.parametrize(
    "name", ["a" * (MAX_KEY_NAME_LENGTH + 1), "a" + "\u00e9" * (MAX_KEY_NAME_LENGTH // 2)]
)
def test_key_names_one_byte_over_the_maximum_are_refused(name):
    assert len(name.encode()) == MAX_KEY_NAME_LENGTH + 1
    with pytest.raises(NoteFormatError, match="longer than 256 bytes") as caught:
        check_key_name(name)
    assert caught.value.reason == "key-name"
    line = f"\u2014 {name} AAAAAAAAAAAA\n".encode()
    assert refused_note(TEXT + b"\n" + line).reason == "key-name"
    with pytest.raises(NoteFormatError, match="longer than"):
        Ed25519NoteSigner(name, key("a"))


# -- key names ------------------------------------------------------------------------------------

BAD_NAMES = {
    "empty": ("", "is empty"),
    "plus": ("a+b", "a space or a plus"),
    "space": ("a b", "a space or a plus"),
    "tab": ("a\tb", "a space or a plus"),
    "newline": ("a\nb", "a space or a plus"),
    "nul": ("a\x00b", "a space or a plus"),
    "no-break-space": ("a\u00a0b", "a space or a plus"),
    "next-line": ("a\u0085b", "a space or a plus"),
    "em-space": ("a\u2003b", "a space or a plus"),
    "line-separator": ("a\u2028b", "a space or a plus"),
    "ideographic-space": ("a\u3000b", "a space or a plus"),
}


@pytest.mark.parametrize("name, message", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_invalid_key_names_are_refused_everywhere_a_name_is_taken(name, message):
    with pytest.raises(NoteFormatError, match=message) as caught:
        check_key_name(name)
    assert caught.value.reason == "key-name"
    for make in (
        lambda: NoteSignature(name, b"\x00" * 4, b"\x01"),
        lambda: Ed25519NoteSigner(name, key("a")),
        lambda: Ed25519NoteVerifier(name, bytes(32)),
        lambda: key_id(name, 1, bytes(32)),
        lambda: format_verifier_key(name, 1, bytes(32)),
    ):
        with pytest.raises(NoteFormatError, match=message):
            make()


@pytest.mark.parametrize("name", ["a\u00a0b", "a\u2003b", "a\u3000b", "a+b", "a\u2028b"])
def test_a_signature_line_with_an_invalid_name_is_refused_by_the_parser(name):
    line = f"\u2014 {name} AAAAAAAAAAAA\n".encode()
    refused = refused_note(SIGNED + line)
    assert refused.reason == "key-name"


def test_non_ascii_key_names_without_spaces_are_valid():
    name = "t\u00e9moin.example/\u043a\u043b\u044e\u0447"
    data = render_note(sign_note(TEXT, [signer(name=name)]))
    assert verify_note(parse_note(data), [verifier(name=name)])[0][1].name == name


# -- malformed notes ------------------------------------------------------------------------------

LINE = "\u2014 k.example/x AAAAAAAAAAAA\n".encode()  # a well-formed line: key ID 0, 5 zero bytes

MALFORMED = {
    "empty": (b"", "note-malformed", "no blank line"),
    "no-blank-line": (TEXT + LINE, "note-malformed", "no blank line"),
    "nothing-after-blank-line": (TEXT + b"\n", "note-malformed", "no signature lines"),
    "blank-line-at-the-end": (TEXT + b"\n" + LINE + b"\n", "note-malformed", "no signature"),
    "last-line-unterminated": (TEXT + b"\n" + LINE[:-1], "note-malformed", "end with a newline"),
    "hyphen-not-em-dash": (TEXT + b"\n- k AAAAAAAAAAAA\n", "note-malformed", "em dash"),
    "en-dash": (TEXT + "\n\u2013 k AAAAAAAAAAAA\n".encode(), "note-malformed", "em dash"),
    "em-dash-without-space": (
        TEXT + b"\n" + EM_DASH + b"k AAAAAAAAAAAA\n",
        "note-malformed",
        "em dash",
    ),
    "space-before-em-dash": (TEXT + b"\n " + LINE, "note-malformed", "em dash"),
    "text-line-among-signatures": (
        TEXT + b"\n" + LINE + b"free text\n",
        "note-malformed",
        "em dash",
    ),
    "name-only": (TEXT + b"\n" + EM_DASH + b" k\n", "note-malformed", "<name> <signature>"),
    "three-fields": (
        TEXT + b"\n" + EM_DASH + b" k AAAAAAAAAAAA AAAA\n",
        "note-malformed",
        "<name> <signature>",
    ),
    "trailing-space": (
        TEXT + b"\n" + EM_DASH + b" k AAAAAAAAAAAA \n",
        "note-malformed",
        "<name> <signature>",
    ),
    "two-spaces": (
        TEXT + b"\n" + EM_DASH + b" k  AAAAAAAAAAAA\n",
        "note-malformed",
        "<name> <signature>",
    ),
    "empty-signature": (TEXT + b"\n" + EM_DASH + b" k \n", "note-malformed", "no signature bytes"),
    "key-id-only": (TEXT + b"\n" + EM_DASH + b" k AAAAAA==\n", "note-malformed", "no signature"),
    "short-of-a-key-id": (TEXT + b"\n" + EM_DASH + b" k AAA=\n", "note-malformed", "no signature"),
    "not-base64": (TEXT + b"\n" + EM_DASH + b" k !!!!!!!!\n", "base64", "not valid base64"),
    "url-safe-base64": (TEXT + b"\n" + EM_DASH + b" k AAAAAAAA-_-_\n", "base64", "valid base64"),
    "missing-padding": (TEXT + b"\n" + EM_DASH + b" k AAAAAAAAAAA\n", "base64", "valid base64"),
    "non-canonical-base64": (
        TEXT + b"\n" + EM_DASH + b" k AAAAAAAAAAB=\n",
        "base64-non-canonical",
        "not canonical base64",
    ),
    "invalid-utf8-in-text": (b"caf\xe9\n\n" + LINE, "encoding", "not valid UTF-8 (byte 3)"),
    "invalid-utf8-in-signatures": (TEXT + b"\n\xff" + LINE, "encoding", "not valid UTF-8"),
    "truncated-em-dash": (TEXT + b"\n\xe2\x80 k AAAAAAAAAAAA\n", "encoding", "not valid UTF-8"),
    "utf16": (TEXT.decode().encode("utf-16"), "encoding", "not valid UTF-8"),
    "nul-in-text": (b"a\x00b\n\n" + LINE, "encoding", "control character '\\x00'"),
    "carriage-return": (TEXT.replace(b"\n", b"\r\n") + b"\r\n" + LINE, "encoding", "'\\r'"),
    "tab-in-signature-line": (TEXT + b"\n" + EM_DASH + b"\tk AAAAAAAAAAAA\n", "encoding", "'\\t'"),
    "escape-in-text": (b"\x1b[31mred\n\n" + LINE, "encoding", "control character"),
}


@pytest.mark.parametrize("data, reason, message", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_notes_are_refused_with_their_reason(data, reason, message):
    refused = refused_note(data)
    assert refused.reason == reason
    assert message in str(refused)


def test_a_note_text_must_end_with_a_newline():
    with pytest.raises(NoteFormatError, match="must end with a newline") as caught:
        check_note_text(b"no newline")
    assert caught.value.reason == "note-malformed"
    with pytest.raises(NoteFormatError, match="must end with a newline"):
        Note(b"", lines(1))
    with pytest.raises(NoteFormatError, match="must end with a newline"):
        sign_note(b"unterminated", [signer()])


@pytest.mark.parametrize("text", [b"a\x00\n", b"a\r\n", b"\x1f\n", b"\xff\n"])
def test_a_note_text_with_a_control_character_or_bad_utf8_cannot_be_built(text):
    with pytest.raises(NoteFormatError) as caught:
        Note(text, lines(1))
    assert caught.value.reason == "encoding"
    with pytest.raises(NoteFormatError):
        sign_note(text, [signer()])


def test_a_signature_line_needs_a_four_byte_key_id_and_some_signature():
    with pytest.raises(NoteFormatError, match="a key ID is 4 bytes, not 3"):
        NoteSignature(NAME, b"\x00" * 3, b"\x01")
    with pytest.raises(NoteFormatError, match="a key ID is 4 bytes, not 5"):
        NoteSignature(NAME, b"\x00" * 5, b"\x01")
    with pytest.raises(NoteFormatError, match="is empty"):
        NoteSignature(NAME, b"\x00" * 4, b"")


def test_a_note_without_signatures_cannot_be_rendered_or_signed():
    with pytest.raises(NoteFormatError, match="at least one signature"):
        render_note(Note(TEXT, ()))
    with pytest.raises(ValueError, match="at least one signer"):
        sign_note(TEXT, [])


# -- adding signatures ----------------------------------------------------------------------------


def test_added_signatures_follow_the_notes_own_and_duplicates_are_dropped():
    note = sign_note(TEXT, [signer("a")])
    b_line = sign_note(TEXT, [signer("b", "b.example/k")]).signatures[0]
    merged = add_signatures(note, [b_line, note.signatures[0], b_line])
    assert merged.signatures == (note.signatures[0], b_line)
    assert merged.text == TEXT
    assert note.signatures == (note.signatures[0],)  # the original is untouched
    passed = verify_note(merged, [verifier("a"), verifier("b", "b.example/k")])
    assert [s for _, s in passed] == [note.signatures[0], b_line]


# -- verification ---------------------------------------------------------------------------------


def test_signatures_by_unknown_keys_are_ignored():
    note = sign_note(TEXT, [signer("z", "z.example/k"), signer("a"), signer("y", "y.example/k")])
    ((v, signature),) = verify_note(note, [verifier("a")])
    assert v == verifier("a")
    assert signature == note.signatures[1]


def test_unknown_garbage_signature_lines_do_not_stop_a_good_one():
    junk = NoteSignature("junk.example", b"\xde\xad\xbe\xef", b"\x00")
    note = add_signatures(sign_note(TEXT, [signer()]), [junk])
    assert verify_note(parse_note(render_note(note)), [verifier()])[0][1].name == NAME


def test_a_note_without_a_signature_by_a_known_key_is_refused():
    note = sign_note(TEXT, [signer("a")])
    refused = refused_verification(note, [verifier("b", "b.example/k")])
    assert refused.reason == "no-known-signature"
    assert "known: b.example/k" in str(refused)


def test_with_no_verifiers_at_all_every_note_is_refused():
    refused = refused_verification(sign_note(TEXT, [signer()]), [])
    assert refused.reason == "no-known-signature"
    assert "no key at all" in str(refused)


def test_the_refusal_names_every_known_key_once_and_sorted():
    refused = refused_verification(
        sign_note(TEXT, [signer("x", "x.example")]),
        [verifier("b", "b.example"), verifier("a", "a.example"), verifier("b", "b.example")],
    )
    assert "(known: a.example, b.example)" in str(refused)


def test_a_signature_under_the_right_name_by_another_key_is_ignored():
    """Same name, another key: another key ID, so the line is not the known key's."""
    note = sign_note(TEXT, [signer("impostor", NAME)])
    assert note.signatures[0].key_id != verifier().key_id
    assert refused_verification(note, [verifier()]).reason == "no-known-signature"


def test_a_signature_with_the_right_key_id_under_another_name_is_ignored():
    real = sign_note(TEXT, [signer()]).signatures[0]
    renamed = Note(TEXT, (NoteSignature("other.example/k", real.key_id, real.signature),))
    assert refused_verification(renamed, [verifier()]).reason == "no-known-signature"


def test_a_signature_by_another_key_claiming_the_known_key_id_is_bad():
    forged = signer("impostor").sign(TEXT)
    note = Note(TEXT, (NoteSignature(NAME, verifier().key_id, forged),))
    refused = refused_verification(note, [verifier()])
    assert refused.reason == "bad-signature"
    assert f"the signature by {NAME} does not verify" in str(refused)


def test_a_tampered_text_fails_the_signature():
    data = render_note(sign_note(TEXT, [signer()]))
    tampered = parse_note(data.replace(b"\n7\n", b"\n8\n"))
    assert tampered.text != TEXT
    assert refused_verification(tampered, [verifier()]).reason == "bad-signature"


def test_a_flipped_signature_bit_fails_the_signature():
    good = sign_note(TEXT, [signer()]).signatures[0]
    flipped = bytes([good.signature[0] ^ 1]) + good.signature[1:]
    note = Note(TEXT, (NoteSignature(NAME, good.key_id, flipped),))
    assert refused_verification(note, [verifier()]).reason == "bad-signature"


@pytest.mark.parametrize("length", [1, 63, 65, 72])
def test_a_known_keys_signature_of_the_wrong_length_is_bad(length):
    note = Note(TEXT, (NoteSignature(NAME, verifier().key_id, b"\x01" * length),))
    refused = refused_verification(note, [verifier()])
    assert refused.reason == "bad-signature"
    assert f"is {length} bytes, not 64" in str(refused)


@pytest.mark.parametrize("bad_first", [True, False])
def test_one_bad_signature_by_a_known_key_rejects_the_note_whatever_else_passes(bad_first):
    good = sign_note(TEXT, [signer("a")]).signatures[0]
    bad = NoteSignature("b.example/k", verifier("b", "b.example/k").key_id, b"\x00" * 64)
    note = Note(TEXT, (bad, good) if bad_first else (good, bad))
    refused = refused_verification(note, [verifier("a"), verifier("b", "b.example/k")])
    assert refused.reason == "bad-signature"
    assert "b.example/k" in str(refused)


def test_a_key_that_signed_twice_is_listed_once():
    note = sign_note(TEXT, [signer(), signer()])
    assert len(note.signatures) == 2
    assert len(verify_note(note, [verifier()])) == 1


def test_a_key_with_a_good_and_a_bad_line_rejects_the_note():
    good = sign_note(TEXT, [signer()]).signatures[0]
    bad = NoteSignature(NAME, good.key_id, bytes(64))
    refused = refused_verification(Note(TEXT, (good, bad)), [verifier()])
    assert refused.reason == "bad-signature"


def test_an_ed25519_verifier_needs_a_32_byte_key():
    for length in (0, 31, 33):
        with pytest.raises(ValueError, match="32 bytes"):
            Ed25519NoteVerifier(NAME, bytes(length))


def test_key_id_refuses_a_signature_type_beyond_one_byte():
    for signature_type in (-1, 0x100):
        with pytest.raises(ValueError, match="one byte"):
            key_id(NAME, signature_type, bytes(32))


# -- verifier keys --------------------------------------------------------------------------------

GO_PUBLIC_BLOB = GO_VKEY.split("+")[2]
SHORT_KEY_VKEY = format_verifier_key("short", 1, bytes(31))  # its base64 has slack bits

BAD_VKEYS = {
    "no-plus": (GO_NAME, "vkey", "is not <name>+<id>+<key>"),
    "one-plus": (f"{GO_NAME}+c74f20a3", "vkey", "is not <name>+<id>+<key>"),
    "empty-name": (f"+c74f20a3+{GO_PUBLIC_BLOB}", "key-name", "is empty"),
    "name-with-space": (f"Peter Neumann+c74f20a3+{GO_PUBLIC_BLOB}", "key-name", "a space"),
    "uppercase-id": (f"{GO_NAME}+C74F20A3+{GO_PUBLIC_BLOB}", "vkey", "8 lowercase hex"),
    "short-id": (f"{GO_NAME}+c74f20a+{GO_PUBLIC_BLOB}", "vkey", "8 lowercase hex"),
    "long-id": (f"{GO_NAME}+c74f20a30+{GO_PUBLIC_BLOB}", "vkey", "8 lowercase hex"),
    "non-hex-id": (f"{GO_NAME}+c74f20ag+{GO_PUBLIC_BLOB}", "vkey", "is not hex"),
    "spaced-id": (f"{GO_NAME}+c74f 20a+{GO_PUBLIC_BLOB}", "vkey", "is not hex"),
    "wrong-id": (f"{GO_NAME}+c74f20a4+{GO_PUBLIC_BLOB}", "vkey", "does not match the key"),
    "other-name": (f"PeterNeumanm+c74f20a3+{GO_PUBLIC_BLOB}", "vkey", "does not match"),
    "blob-not-base64": (f"{GO_NAME}+c74f20a3+not*base64", "base64", "not valid base64"),
    "blob-empty": (f"{GO_NAME}+c74f20a3+", "vkey", "holds no public key"),
    "blob-type-only": (f"{GO_NAME}+c74f20a3+AQ==", "vkey", "holds no public key"),
    "blob-non-canonical": (SHORT_KEY_VKEY[:-2] + "B=", "base64-non-canonical", "canonical"),
    "blob-with-trailing-plus": (f"{GO_NAME}+c74f20a3+{GO_PUBLIC_BLOB}+", "base64", "ase64"),
}


@pytest.mark.parametrize("vkey, reason, message", BAD_VKEYS.values(), ids=BAD_VKEYS.keys())
def test_malformed_verifier_keys_are_refused_with_their_reason(vkey, reason, message):
    with pytest.raises(NoteFormatError) as caught:
        parse_verifier_key(vkey)
    assert caught.value.reason == reason
    assert message in str(caught.value)


def test_the_non_canonical_vkey_case_differs_from_a_valid_one_only_in_slack_bits():
    assert SHORT_KEY_VKEY.endswith("A=")
    assert parse_verifier_key(SHORT_KEY_VKEY) == ("short", 1, bytes(31))
    blob = SHORT_KEY_VKEY.split("+")[2]
    assert base64.b64decode(blob[:-2] + "B=") == base64.b64decode(blob)  # same bytes


# -- canonical base64 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, reason",
    [
        ("AB==", "base64-non-canonical"),
        ("AAB=", "base64-non-canonical"),
        ("A", "base64"),
        ("AA", "base64"),
        ("AA=", "base64"),
        ("AA ==", "base64"),
        ("AA==\n", "base64"),
        ("AA==AA==", "base64"),
        ("-_8=", "base64"),
        ("\u00e9\u00e9==", "base64"),
    ],
)
def test_base64_is_accepted_only_in_its_canonical_spelling(text, reason):
    with pytest.raises(NoteFormatError) as caught:
        decode_canonical_base64(text, "the blob")
    assert caught.value.reason == reason
    assert str(caught.value).startswith("the blob is not")


def test_canonical_base64_examples_decode():
    assert decode_canonical_base64("", "x") == b""
    assert decode_canonical_base64("AA==", "x") == b"\x00"
    assert decode_canonical_base64("+/8=", "x") == b"\xfb\xff"


# -- hostile input --------------------------------------------------------------------------------


PARSE_REASONS = {
    "oversized",
    "encoding",
    "note-malformed",
    "key-name",
    "base64",
    "base64-non-canonical",
}
"""The reason codes of signed-note parsing (protocol/attestation.md §8)."""


def check_hostile(data: bytes) -> None:
    """Parse and verify `data` as an attacker's note, against the one key that signed SIGNED.

    Only the module's errors may come out. A note that parses must re-render to the same bytes
    (there is one spelling of each note), and one that verifies must carry SIGNED's exact text
    and signature line (other lines are by unknown keys, which the spec says to ignore).
    """
    try:
        note = parse_note(data)
    except NoteFormatError as e:
        assert e.reason in PARSE_REASONS
        return
    assert render_note(note) == data
    try:
        passed = verify_note(note, [verifier()])
    except NoteVerificationError as e:
        assert e.reason in {"bad-signature", "no-known-signature"}
        return
    original = parse_note(SIGNED)
    assert note.text == original.text
    assert [s for _, s in passed] == [original.signatures[0]]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_the_modules_errors(data):
    check_hostile(data)


GOOD_BLOB = SIGNED.split(b" ")[-1][:-1]
"""The base64 of SIGNED's one signature line (key ID and signature)."""

printable = st.characters(
    exclude_categories=("Cs",), exclude_characters="".join(map(chr, range(0x20)))
)


def mostly(good: bytes, *bad: st.SearchStrategy[bytes] | bytes) -> st.SearchStrategy[bytes]:
    """`good` four times out of five, else one of the `bad` values or strategies."""
    alternatives = [b if isinstance(b, st.SearchStrategy) else st.just(b) for b in bad]
    return st.integers(0, 4).flatmap(lambda n: st.just(good) if n else st.one_of(*alternatives))


hostile_texts = mostly(
    TEXT,
    *[b"\n", b"", b"x\n\n", b"a\x00\n", b"\xff\n", b"a\x7f\n", TEXT[:-1]],
    st.text(printable, max_size=6).map(lambda t: (t + "\n").encode()),
)
hostile_names = mostly(
    NAME.encode(),
    *[b"k", b"", b"a+b", b"a b", "a\u00a0b".encode(), "\u2028".encode(), b"x" * 257],
    st.text(printable, min_size=1, max_size=4).map(str.encode),
)
hostile_blobs = mostly(
    GOOD_BLOB,
    *[b"AAAAAAAAAAAA", b"AAAAAAAAAAB=", b"AAAAAA==", b"", b"!!", b"A"],
    st.binary(min_size=1, max_size=80).map(base64.b64encode),
    st.text("AB=+/!", max_size=8).map(str.encode),
)
hostile_lines = st.tuples(
    mostly(EM_DASH + b" ", EM_DASH, b"- ", b"", EM_DASH + b"  "),
    hostile_names,
    mostly(b" ", b"  ", b"\t", b""),
    hostile_blobs,
    mostly(b"\n", b"", b" \n", b"\r\n"),
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(hostile_texts, mostly(b"\n", b"", b"\n\n"), st.lists(hostile_lines, min_size=1, max_size=3))
def test_notes_built_from_hostile_parts_raise_only_the_modules_errors(text, blank, lines_):
    check_hostile(text + blank + b"".join(lines_))


@st.composite
def one_edit(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with one byte replaced, inserted, deleted or bit-flipped."""
    kind = draw(st.sampled_from(["replace", "insert", "delete", "flip"]))
    if kind == "insert":
        i = draw(st.integers(0, len(data)))
        return data[:i] + bytes([draw(st.integers(0, 255))]) + data[i:]
    i = draw(st.integers(0, len(data) - 1))
    if kind == "delete":
        return data[:i] + data[i + 1 :]
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1 :]
    return data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]


def verifies(data: bytes, verifiers: list) -> bool:
    """Whether `data` parses and verifies; any error but the module's two propagates."""
    try:
        verify_note(parse_note(data), verifiers)
    except (NoteFormatError, NoteVerificationError):
        return False
    return True


def test_the_unedited_note_verifies():
    assert verifies(SIGNED, [verifier()])


@settings(max_examples=300, deadline=None)
@given(one_edit(SIGNED))
def test_a_note_with_one_byte_changed_never_verifies(data):
    assert verifies(data, [verifier()]) == (data == SIGNED)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_note_with_a_slice_replaced_by_random_bytes_raises_only_the_modules_errors(data):
    start = data.draw(st.integers(0, len(SIGNED)))
    end = data.draw(st.integers(start, len(SIGNED)))
    check_hostile(SIGNED[:start] + data.draw(st.binary(max_size=8)) + SIGNED[end:])


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=100))
def test_random_signature_bytes_under_the_known_key_id_never_verify(signature):
    note = Note(TEXT, (NoteSignature(NAME, verifier().key_id, signature),))
    assert refused_verification(note, [verifier()]).reason == "bad-signature"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_random_verifier_key_texts_raise_only_note_format_errors(vkey):
    try:
        name, signature_type, public = parse_verifier_key(vkey)
    except NoteFormatError:
        return
    assert format_verifier_key(name, signature_type, public) == vkey


@settings(max_examples=300, deadline=None)
@given(one_edit(GO_VKEY.encode()))
def test_a_verifier_key_with_one_byte_changed_is_refused(edited):
    try:
        vkey = edited.decode()
    except UnicodeDecodeError:
        return  # not text: no configuration file would hand it to us
    if vkey == GO_VKEY:
        return
    with pytest.raises(NoteFormatError):
        parse_verifier_key(vkey)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_random_base64_texts_raise_only_note_format_errors_or_decode_canonically(text):
    try:
        raw = decode_canonical_base64(text, "x")
    except NoteFormatError as e:
        assert e.reason in {"base64", "base64-non-canonical"}
        return
    assert base64.b64encode(raw).decode() == text
