"""Witness cosignatures: C2SP tlog-cosignature, timestamped Ed25519 (`cosignature/v1`).

A witness that has checked a builder's new checkpoint against the last one it cosigned (a
consistency proof) adds its own signature line to the checkpoint note. A client that requires
N cosignatures from witnesses it names cannot be shown a split view of a builder's log unless
N witnesses collude: that is what turns fork *detection* into fork *prevention*.

Format (c2sp.org/tlog-cosignature §Format, §Ed25519 signed message):

- the key ID is `SHA-256(name || 0x0A || 0x04 || 32-byte public key)[:4]`;
- the signature bytes are `u64be(timestamp) || Ed25519 signature` (72 bytes);
- the signed message is `cosignature/v1\\n`, `time <decimal timestamp>\\n`, then the whole
  checkpoint note text.

The header line is the domain separation: a cosignature can never be mistaken for a note
signature (type 0x01) by the same key over the same text. The v1 Ed25519 message does not
commit to the witness's name, so one key must serve one witness only (§Ed25519 signed message).

Pure: the timestamp is an argument, never read from a clock here.
"""

from __future__ import annotations

from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from p2pcache.trust.signed_note import (
    ED25519_SIGNATURE_SIZE,
    NoteSignature,
    NoteVerificationError,
    check_key_name,
    check_named_ed25519_key,
    check_note_text,
    key_id,
)

COSIGNATURE_SIGNATURE_TYPE = 0x04
"""Signature type byte of timestamped Ed25519 cosignatures (signed-note §Signature types)."""

COSIGNATURE_HEADER = b"cosignature/v1\n"
MAX_TIMESTAMP = (1 << 63) - 1
"""tlog-cosignature: the timestamp MUST NOT exceed 2**63 - 1."""

TIMESTAMP_SIZE = 8
COSIGNATURE_SIZE = TIMESTAMP_SIZE + ED25519_SIGNATURE_SIZE


def cosignature_key_id(name: str, public_key: bytes) -> bytes:
    """The key ID of an Ed25519 cosigner: the signed-note formula with type 0x04."""
    return key_id(name, COSIGNATURE_SIGNATURE_TYPE, public_key)


def cosigned_message(note_text: bytes, timestamp: int) -> bytes:
    """What an Ed25519 cosigner signs: header line, `time <t>` line, the checkpoint text."""
    check_note_text(note_text)
    _check_timestamp(timestamp)
    return COSIGNATURE_HEADER + b"time %d\n" % timestamp + note_text


def cosignature_timestamp(signature: bytes) -> int:
    """The POSIX timestamp at the start of a cosignature's signature bytes."""
    if len(signature) != COSIGNATURE_SIZE:
        raise NoteVerificationError(
            f"a cosignature is {COSIGNATURE_SIZE} bytes, not {len(signature)}", "bad-cosignature"
        )
    return int.from_bytes(signature[:TIMESTAMP_SIZE], "big")


@dataclass(frozen=True, slots=True)
class Cosignature:
    """A verified cosignature: which witness, and the time it vouched for the checkpoint."""

    name: str
    public_key: bytes
    timestamp: int


@dataclass(frozen=True, slots=True)
class CosignatureVerifier:
    """A witness the operator named: its name and Ed25519 public key (a NoteVerifier)."""

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        check_named_ed25519_key(self.name, self.public_key)

    @property
    def key_id(self) -> bytes:
        return cosignature_key_id(self.name, self.public_key)

    def verify(self, text: bytes, signature: bytes) -> None:
        """Check a cosignature over the note `text`; raises NoteVerificationError."""
        timestamp = cosignature_timestamp(signature)
        if timestamp > MAX_TIMESTAMP:
            raise NoteVerificationError(
                f"the cosignature by {self.name} has a timestamp beyond 2**63 - 1",
                "bad-cosignature",
            )
        try:
            nacl.signing.VerifyKey(self.public_key).verify(
                cosigned_message(text, timestamp), signature[TIMESTAMP_SIZE:]
            )
        except nacl.exceptions.BadSignatureError:
            raise NoteVerificationError(
                f"the cosignature by {self.name} does not verify", "bad-cosignature"
            ) from None

    def accept(self, signature: NoteSignature) -> Cosignature:
        """The Cosignature a verified signature line stands for (after `verify` passed)."""
        return Cosignature(self.name, self.public_key, cosignature_timestamp(signature.signature))


class Cosigner:
    """A witness's secret key: produces cosignature lines for checkpoint texts."""

    def __init__(self, name: str, signing_key: nacl.signing.SigningKey) -> None:
        check_key_name(name)
        self._name = name
        self._key = signing_key
        self._key_id = cosignature_key_id(name, bytes(signing_key.verify_key))

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @property
    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self._name, bytes(self._key.verify_key))

    def cosign(self, note_text: bytes, timestamp: int) -> NoteSignature:
        """The signature line stating that, at `timestamp`, this text is the newest head seen.

        The caller must have checked the checkpoint's signature and its consistency with the
        last checkpoint this witness cosigned for the same origin (c2sp.org/tlog-witness);
        this function only signs.
        """
        signature = self._key.sign(cosigned_message(note_text, timestamp)).signature
        return NoteSignature(self._name, self._key_id, timestamp.to_bytes(8, "big") + signature)


def _check_timestamp(timestamp: int) -> None:
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError(f"a cosignature timestamp is between 0 and 2**63 - 1, not {timestamp}")
