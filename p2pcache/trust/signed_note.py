"""C2SP signed notes (c2sp.org/signed-note): text signed by one or more named keys.

Builder log checkpoints and witness cosignatures are signed notes, so any C2SP tool (and any
witness network) can read and cosign p2pcache logs. This module is the generic layer: parse
and render a note, compute key IDs, sign with Ed25519, and verify with the spec's rules
(§Signatures): signatures from unknown keys are ignored; a known key whose signature fails
rejects the whole note; a note with no verified signature from a known key is rejected.

A key is known by the pair (key name, key ID); the ID is
`SHA-256(name || 0x0A || signature type || public key)[:4]` (§Signature types), which the
verifier computes itself from the key it was configured with. Verifier keys ("vkeys",
`<name>+<hex id>+<base64(type || public key)>`) are the text form for configuration files.

Pure: bytes in, values out; no clock, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import nacl.exceptions
import nacl.signing

from p2pcache.errors import FormatError, P2PCacheError

# C2SP: verifiers MUST accept at least 16 signatures and SHOULD bound the count or the size. A
# checkpoint with a log signature and 16 Ed25519 cosignatures is under 3 KiB; 64 KiB leaves room
# for post-quantum cosignatures we ignore (about 3.3 KiB each) without letting a peer make us
# hold megabytes.
MAX_NOTE_SIZE = 64 << 10
MAX_NOTE_SIGNATURES = 32
MAX_KEY_NAME_LENGTH = 256
"""Key names are short URL-like identifiers; the bound keeps signature lines small."""

SIGNATURE_LINE_PREFIX = "\u2014 "
"""Em dash (U+2014) and a space begin every signature line."""

ED25519_SIGNATURE_TYPE = 0x01
"""Signature type byte of plain Ed25519 note signatures (signed-note §Ed25519 signatures)."""

KEY_ID_SIZE = 4
ED25519_PUBLIC_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64

# signed-note §Format: no ASCII control character other than newline (DEL is not one of them).
_CONTROL_CHARACTER = re.compile("[\x00-\x09\x0b-\x1f]")


class NoteFormatError(FormatError):
    """A signed note (or a verifier key) does not follow c2sp.org/signed-note."""

    def __init__(self, message: str, reason: str = "note-malformed") -> None:
        super().__init__(message)
        self.reason = reason


class NoteVerificationError(P2PCacheError):
    """A signed note's signatures do not check out against the keys we know."""

    def __init__(self, message: str, reason: str = "note-signature") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: the key name, the 4-byte key ID and the algorithm's signature."""

    name: str
    key_id: bytes
    signature: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.key_id) != KEY_ID_SIZE:
            raise NoteFormatError(f"a key ID is {KEY_ID_SIZE} bytes, not {len(self.key_id)}")
        if not self.signature:
            raise NoteFormatError(f"the signature by {self.name!r} is empty")

    def render(self) -> bytes:
        """`— <name> base64(key ID || signature)` and a newline."""
        blob = base64.b64encode(self.key_id + self.signature).decode("ascii")
        return f"{SIGNATURE_LINE_PREFIX}{self.name} {blob}\n".encode()


@dataclass(frozen=True, slots=True)
class Note:
    """A note: its text (ending in a newline) and its signature lines, in order."""

    text: bytes
    signatures: tuple[NoteSignature, ...]

    def __post_init__(self) -> None:
        check_note_text(self.text)


class NoteVerifier(Protocol):
    """A key we know: its name and ID pick its signature lines, `verify` checks one of them."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> bytes: ...

    def verify(self, text: bytes, signature: bytes) -> None:
        """Raise NoteVerificationError unless `signature` is valid for the note `text`."""
        ...


class NoteSigner(Protocol):
    """A secret key that signs note texts under a name."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> bytes: ...

    def sign(self, text: bytes) -> bytes:
        """The signature (without the key ID) over the note `text`."""
        ...


def key_id(name: str, signature_type: int, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || type || public key)[:4] (signed-note §Signatures)."""
    check_key_name(name)
    if not 0 <= signature_type <= 0xFF:
        raise ValueError("a signature type is one byte")
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([signature_type]) + public_key)
    return digest.digest()[:KEY_ID_SIZE]


def check_key_name(name: str) -> None:
    """Key names are non-empty, hold no Unicode space and no `+`, and are bounded here."""
    if not name:
        raise NoteFormatError("a key name is empty", "key-name")
    try:
        encoded = name.encode()
    except UnicodeEncodeError:  # a lone surrogate (surrogateescape'd bytes from argv)
        raise NoteFormatError(f"key name {name[:60]!r} is not valid Unicode", "key-name") from None
    if len(encoded) > MAX_KEY_NAME_LENGTH:
        raise NoteFormatError(
            f"key name {name[:40]!r}… is longer than {MAX_KEY_NAME_LENGTH} bytes", "key-name"
        )
    if "+" in name or any(c.isspace() or ord(c) < 0x20 for c in name):
        raise NoteFormatError(f"key name {name[:60]!r} contains a space or a plus", "key-name")


def check_note_text(text: bytes) -> None:
    """A note text is UTF-8 without control characters other than newline, and ends in one."""
    _check_characters(text, "note text")
    if not text.endswith(b"\n"):
        raise NoteFormatError("a note text must end with a newline", "note-malformed")


def parse_note(
    data: bytes, *, max_size: int = MAX_NOTE_SIZE, max_signatures: int = MAX_NOTE_SIGNATURES
) -> Note:
    """Split a signed note into text and signature lines; checks form only, not signatures.

    The text is everything up to and including the newline before the last blank line; each
    line after it must be a signature line. Raises NoteFormatError with a `reason` code.
    """
    if len(data) > max_size:
        raise NoteFormatError(
            f"signed note is {len(data)} bytes, more than the {max_size} allowed", "oversized"
        )
    _check_characters(data, "signed note")
    separator = data.rfind(b"\n\n")
    if separator < 0:
        raise NoteFormatError("signed note has no blank line before its signatures")
    text, block = data[: separator + 1], data[separator + 2 :]
    if not block:
        raise NoteFormatError("signed note has no signature lines after its blank line")
    if not block.endswith(b"\n"):
        raise NoteFormatError("the last signature line of a note must end with a newline")
    lines = block[:-1].split(b"\n")
    if len(lines) > max_signatures:
        raise NoteFormatError(
            f"signed note has {len(lines)} signatures, more than the {max_signatures} allowed",
            "oversized",
        )
    signatures = tuple(_parse_signature_line(line.decode()) for line in lines)
    return Note(text, signatures)


def render_note(note: Note) -> bytes:
    """The note's bytes: text, blank line, signature lines. Within `parse_note`'s bounds: a
    note is never written that this module would refuse to read (a cosignature added to a
    note that already has the most signature lines allowed, say)."""
    if not note.signatures:
        raise NoteFormatError("a signed note needs at least one signature")
    if len(note.signatures) > MAX_NOTE_SIGNATURES:
        raise NoteFormatError(
            f"a note of {len(note.signatures)} signatures would be refused when read "
            f"(at most {MAX_NOTE_SIGNATURES})",
            "oversized",
        )
    data = note.text + b"\n" + b"".join(s.render() for s in note.signatures)
    if len(data) > MAX_NOTE_SIZE:
        raise NoteFormatError(
            f"a note of {len(data)} bytes would be refused when read (at most {MAX_NOTE_SIZE})",
            "oversized",
        )
    return data


def sign_note(text: bytes, signers: Sequence[NoteSigner]) -> Note:
    """Sign `text` with each signer, in order."""
    check_note_text(text)
    if not signers:
        raise ValueError("signing a note needs at least one signer")
    return Note(text, tuple(NoteSignature(s.name, s.key_id, s.sign(text)) for s in signers))


def add_signatures(note: Note, signatures: Sequence[NoteSignature]) -> Note:
    """The note with more signature lines (cosignatures) after its own, duplicates dropped."""
    merged = list(note.signatures)
    merged.extend(s for s in signatures if s not in merged)
    return Note(note.text, tuple(merged))


def verify_note(
    note: Note, verifiers: Sequence[NoteVerifier]
) -> tuple[tuple[NoteVerifier, NoteSignature], ...]:
    """Check the note's signatures by known keys; return each (verifier, signature) that passed.

    Signature lines whose (name, key ID) match no verifier are ignored, as the spec requires.
    A line matching a verifier must verify, or the whole note is rejected. A note with no
    verified signature is rejected. A verifier that signed twice is listed once.
    """
    known = {(v.name, v.key_id): v for v in verifiers}
    passed: dict[tuple[str, bytes], tuple[NoteVerifier, NoteSignature]] = {}
    for sig in note.signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            continue
        verifier.verify(note.text, sig.signature)
        passed.setdefault((sig.name, sig.key_id), (verifier, sig))
    if not passed:
        names = ", ".join(sorted({v.name for v in verifiers})) or "no key at all"
        raise NoteVerificationError(
            f"the note carries no signature by a known key (known: {names})", "no-known-signature"
        )
    return tuple(passed.values())


def check_named_ed25519_key(name: str, public_key: bytes) -> None:
    """A key a verifier knows: a valid key name, and 32 bytes of Ed25519 public key."""
    check_key_name(name)
    if len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise ValueError("an Ed25519 public key is 32 bytes")


@dataclass(frozen=True, slots=True)
class Ed25519NoteVerifier:
    """A known Ed25519 note key (type 0x01): signatures are Ed25519 over the note text."""

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        check_named_ed25519_key(self.name, self.public_key)

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, ED25519_SIGNATURE_TYPE, self.public_key)

    def verify(self, text: bytes, signature: bytes) -> None:
        if len(signature) != ED25519_SIGNATURE_SIZE:
            raise NoteVerificationError(
                f"the signature by {self.name} is {len(signature)} bytes, not 64", "bad-signature"
            )
        try:
            nacl.signing.VerifyKey(self.public_key).verify(text, signature)
        except nacl.exceptions.BadSignatureError:
            raise NoteVerificationError(
                f"the signature by {self.name} does not verify", "bad-signature"
            ) from None


class Ed25519NoteSigner:
    """Signs note texts with an Ed25519 key (type 0x01) under `name`."""

    def __init__(self, name: str, signing_key: nacl.signing.SigningKey) -> None:
        check_key_name(name)
        self._name = name
        self._key = signing_key
        self._key_id = key_id(name, ED25519_SIGNATURE_TYPE, bytes(signing_key.verify_key))

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> bytes:
        return self._key_id

    def sign(self, text: bytes) -> bytes:
        return self._key.sign(text).signature


def format_verifier_key(name: str, signature_type: int, public_key: bytes) -> str:
    """The vkey text `<name>+<8 hex key ID>+<base64(type || public key)>`."""
    kid = key_id(name, signature_type, public_key)
    blob = base64.b64encode(bytes([signature_type]) + public_key).decode("ascii")
    return f"{name}+{kid.hex()}+{blob}"


def parse_verifier_key(vkey: str) -> tuple[str, int, bytes]:
    """(name, signature type, public key) from a vkey; the key ID in it must match the key."""
    name, plus1, rest = vkey.partition("+")
    hex_id, plus2, blob = rest.partition("+")
    if not plus1 or not plus2:
        raise NoteFormatError(f"verifier key {vkey[:80]!r} is not <name>+<id>+<key>", "vkey")
    check_key_name(name)
    if len(hex_id) != 2 * KEY_ID_SIZE or hex_id != hex_id.lower():
        raise NoteFormatError(
            f"verifier key ID {hex_id[:20]!r} is not 8 lowercase hex digits", "vkey"
        )
    try:
        kid = bytes.fromhex(hex_id)
    except ValueError:
        raise NoteFormatError(f"verifier key ID {hex_id!r} is not hex", "vkey") from None
    raw = decode_canonical_base64(blob, "verifier key")
    if len(raw) < 2:
        raise NoteFormatError("verifier key holds no public key", "vkey")
    signature_type, public_key = raw[0], raw[1:]
    if key_id(name, signature_type, public_key) != kid:
        raise NoteFormatError(f"verifier key {name!r}: the key ID does not match the key", "vkey")
    return name, signature_type, public_key


def decode_canonical_base64(text: str, what: str) -> bytes:
    """Standard base64 (RFC 4648 §4) with padding, accepted only in its one canonical spelling.

    Python's decoder ignores non-zero bits in the last character; re-encoding and comparing
    rejects those variants, so every value has exactly one text form.
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteFormatError(f"{what} is not valid base64", "base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteFormatError(f"{what} is not canonical base64", "base64-non-canonical")
    return raw


def _check_characters(data: bytes, what: str) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NoteFormatError(f"{what} is not valid UTF-8 (byte {e.start})", "encoding") from None
    bad = _CONTROL_CHARACTER.search(text)
    if bad is not None:
        raise NoteFormatError(
            f"{what} contains control character {bad.group()!r} at position {bad.start()}",
            "encoding",
        )


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(SIGNATURE_LINE_PREFIX):
        raise NoteFormatError(f"note signature line {line[:60]!r} does not start with an em dash")
    fields = line[len(SIGNATURE_LINE_PREFIX) :].split(" ")
    if len(fields) != 2:
        raise NoteFormatError(f"note signature line {line[:60]!r} is not '— <name> <signature>'")
    name, blob = fields
    check_key_name(name)
    raw = decode_canonical_base64(blob, f"the signature by {name[:60]!r}")
    if len(raw) <= KEY_ID_SIZE:
        raise NoteFormatError(f"the signature by {name[:60]!r} holds no signature bytes")
    return NoteSignature(name, raw[:KEY_ID_SIZE], raw[KEY_ID_SIZE:])
