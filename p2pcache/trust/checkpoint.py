"""Builder log checkpoints: C2SP tlog-checkpoint notes, signed by builders, cosigned by witnesses.

A checkpoint is the signed head of a builder's Merkle log (c2sp.org/tlog-checkpoint §Note
text): the origin line, the tree size in decimal, the RFC 6962 root in base64, each ending in a
newline, then the signed-note blank line and signature lines. p2pcache logs write no extension
lines and refuse checkpoints that have any: they are unauditable (the spec does not recommend
them) and every accepted checkpoint then has exactly one text for its (origin, size, root).

Identity: a builder's log key is its node identity key, and its origin (also the signature's
key name, as §Signatures recommends) is `p2pcache/builder/<64 lowercase hex of the public
key>`. Binding the origin to the key means a checkpoint of one builder can never be passed off
as another's, and a verifier needs nothing but the key from the trust file.

Verification follows signed-note's rules (unknown signatures ignored, a failing known one
rejects the note) and then asks for the builder's own signature and the required number of
cosignatures from the named witnesses. Whether a checkpoint is consistent with earlier ones is
not decided here (see checkpoint_store.py): this module is pure.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

import nacl.signing

from p2pcache.errors import P2PCacheError
from p2pcache.trust.cosignature import Cosignature, CosignatureVerifier, Cosigner
from p2pcache.trust.merkle_proof import HASH_SIZE
from p2pcache.trust.signed_note import (
    MAX_NOTE_SIZE,
    Ed25519NoteSigner,
    Ed25519NoteVerifier,
    NoteFormatError,
    add_signatures,
    decode_canonical_base64,
    parse_note,
    render_note,
    sign_note,
    verify_note,
)

BUILDER_ORIGIN_PREFIX = "p2pcache/builder/"
MAX_TREE_SIZE = (1 << 63) - 1
"""Sizes are stored as SQLite integers (signed 64-bit); no real log comes near."""

MAX_ORIGIN_LENGTH = 256
MAX_CHECKPOINT_SIZE = MAX_NOTE_SIZE
"""A checkpoint note (text and all signature lines) is at most this many bytes."""


class CheckpointFormatError(NoteFormatError):
    """A note's text is not a checkpoint as p2pcache writes and accepts them."""

    def __init__(self, message: str, reason: str = "checkpoint-malformed") -> None:
        super().__init__(message, reason)


class CheckpointVerificationError(P2PCacheError):
    """A checkpoint is well formed but not signed as the trust policy requires."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: origin, size (number of leaves) and RFC 6962 root hash."""

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        check_origin(self.origin)
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointFormatError(f"tree size {self.size} is out of range")
        if len(self.root) != HASH_SIZE:
            raise CheckpointFormatError(f"a root hash is {HASH_SIZE} bytes, not {len(self.root)}")


@dataclass(frozen=True, slots=True)
class VerifiedCheckpoint:
    """A checkpoint whose log signature (and required cosignatures) checked out.

    `note` is the exact signed note as received: kept as evidence, and relayed as it is.
    """

    checkpoint: Checkpoint
    note: bytes
    log_key: bytes
    cosignatures: tuple[Cosignature, ...]

    @property
    def origin(self) -> str:
        return self.checkpoint.origin

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root(self) -> bytes:
        return self.checkpoint.root


def builder_origin(public_key: bytes) -> str:
    """The origin (and log key name) of the builder whose identity key is `public_key`."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return BUILDER_ORIGIN_PREFIX + public_key.hex()


def check_origin(origin: str) -> None:
    """An origin is a non-empty line without spaces or plus signs (it is also a key name)."""
    if not origin or len(origin.encode()) > MAX_ORIGIN_LENGTH:
        raise CheckpointFormatError(f"checkpoint origin {origin[:60]!r} is empty or too long")
    if "+" in origin or any(c.isspace() or ord(c) < 0x20 for c in origin):
        raise CheckpointFormatError(f"checkpoint origin {origin[:60]!r} has a space or a plus")


def render_checkpoint(checkpoint: Checkpoint) -> bytes:
    """The note text: origin, size, base64 root, each followed by a newline."""
    root = base64.b64encode(checkpoint.root).decode("ascii")
    return f"{checkpoint.origin}\n{checkpoint.size}\n{root}\n".encode()


def parse_checkpoint(text: bytes) -> Checkpoint:
    """Parse a checkpoint note text (no signatures); exactly the three lines, canonical."""
    if not text.endswith(b"\n"):
        raise CheckpointFormatError("a checkpoint text must end with a newline")
    lines = text[:-1].split(b"\n")
    if len(lines) < 3:
        raise CheckpointFormatError(f"a checkpoint has 3 lines, this text has {len(lines)}")
    if len(lines) > 3:
        raise CheckpointFormatError(
            "the checkpoint has extension lines, which p2pcache logs never write",
            "checkpoint-extension",
        )
    try:
        origin, size_text, root_text = (line.decode("utf-8") for line in lines)
    except UnicodeDecodeError:
        raise CheckpointFormatError("a checkpoint text is not valid UTF-8") from None
    check_origin(origin)
    size = _parse_tree_size(size_text)
    try:
        root = decode_canonical_base64(root_text, "the checkpoint root hash")
    except NoteFormatError as e:
        raise CheckpointFormatError(str(e)) from None
    if len(root) != HASH_SIZE:
        raise CheckpointFormatError(f"the checkpoint root hash is {len(root)} bytes, not 32")
    return Checkpoint(origin, size, root)


def sign_checkpoint(checkpoint: Checkpoint, signing_key: nacl.signing.SigningKey) -> bytes:
    """The signed note of `checkpoint`, signed by the log key under the origin as key name."""
    signer = Ed25519NoteSigner(checkpoint.origin, signing_key)
    return render_note(sign_note(render_checkpoint(checkpoint), [signer]))


def verify_checkpoint(
    data: bytes,
    log_key: bytes,
    *,
    origin: str | None = None,
    witnesses: Sequence[CosignatureVerifier] = (),
    required_cosignatures: int = 0,
) -> VerifiedCheckpoint:
    """Parse a checkpoint note and check it is the log's, as cosigned as the policy requires.

    `origin` defaults to `builder_origin(log_key)`. Requires the log's Ed25519 signature under
    that name, and valid cosignatures from at least `required_cosignatures` distinct entries of
    `witnesses`. Any signature line by the log key or a named witness that does not verify
    rejects the checkpoint (signed-note §Signatures); lines by other keys are ignored.
    Raises NoteFormatError (CheckpointFormatError for the text), NoteVerificationError or
    CheckpointVerificationError.
    """
    if len(log_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    expected_origin = builder_origin(log_key) if origin is None else origin
    note = parse_note(data, max_size=MAX_CHECKPOINT_SIZE)
    checkpoint = parse_checkpoint(note.text)
    if checkpoint.origin != expected_origin:
        raise CheckpointVerificationError(
            f"the checkpoint is for log {checkpoint.origin[:80]!r}, not {expected_origin!r}",
            "wrong-origin",
        )
    log_verifier = Ed25519NoteVerifier(expected_origin, log_key)
    passed = verify_note(note, [log_verifier, *witnesses])
    if not any(verifier is log_verifier for verifier, _ in passed):
        raise CheckpointVerificationError(
            f"the checkpoint of {expected_origin} carries no signature by the log's own key",
            "checkpoint-unsigned",
        )
    cosignatures = tuple(v.accept(sig) for v, sig in passed if isinstance(v, CosignatureVerifier))
    # Distinct keys, not distinct names: one key listed under two names is one witness.
    witness_count = len({c.public_key for c in cosignatures})
    if witness_count < required_cosignatures:
        raise CheckpointVerificationError(
            f"the checkpoint of {expected_origin} at size {checkpoint.size} has valid "
            f"cosignatures from {witness_count} witnesses, {required_cosignatures} required",
            "too-few-cosignatures",
        )
    return VerifiedCheckpoint(checkpoint, data, bytes(log_key), cosignatures)


def cosign_checkpoint(verified: VerifiedCheckpoint, cosigner: Cosigner, timestamp: int) -> bytes:
    """The checkpoint note with this witness's cosignature line added after the others.

    Taking a VerifiedCheckpoint makes the witness check the log's signature first; checking
    consistency with the last checkpoint it cosigned is the caller's duty (a CheckpointStore).
    """
    note = parse_note(verified.note, max_size=MAX_CHECKPOINT_SIZE)
    line = cosigner.cosign(note.text, timestamp)
    return render_note(add_signatures(note, [line]))


def _parse_tree_size(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise CheckpointFormatError(f"checkpoint tree size {text[:30]!r} is not a decimal number")
    if len(text) > 1 and text.startswith("0"):
        raise CheckpointFormatError(f"checkpoint tree size {text[:30]!r} has leading zeros")
    if len(text) > 19 or int(text) > MAX_TREE_SIZE:
        raise CheckpointFormatError(f"checkpoint tree size {text[:30]!r} is out of range")
    return int(text)
