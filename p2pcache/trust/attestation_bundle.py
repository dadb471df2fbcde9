"""Attestation bundles: what a seeding node carries with an item so it can be checked offline.

A bundle is an attestation, the inclusion proof of that attestation in its builder's log, and
the builder's signed checkpoint the proof is relative to (protocol/attestation.md §Bundles).
With it, a node can check the builder's word while the builder is offline; whether that
checkpoint is consistent with the newest one the node has seen from the builder is the
checkpoint store's question, asked afterwards with the VerifiedCheckpoint this returns.

Layout (text, LF line ends, at most MAX_BUNDLE_SIZE bytes):

    p2pcache-bundle/v1
    Index: <leaf index, decimal>
    Proof: <base64 hash> <base64 hash> ...      ("Proof:" alone when the tree has one leaf)
    <the attestation: its 12 lines, canonical>
    <the checkpoint signed note, to the end>

The attestation's line count is fixed by its version, so the parts need no length prefixes.
The log leaf is the attestation's exact bytes (signature line included): RFC 9162 §2.1.1
leaf hash SHA-256(0x00 || attestation).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

from p2pcache.errors import FormatError
from p2pcache.trust.attestation import (
    FIELDS,
    MAX_ATTESTATION_SIZE,
    Attestation,
    AttestationFormatError,
    AttestationVerificationError,
    SignedAttestation,
    check_store_path,
    parse_attestation,
    render_attestation,
    verify_attestation,
)
from p2pcache.trust.checkpoint import (
    MAX_CHECKPOINT_SIZE,
    MAX_TREE_SIZE,
    VerifiedCheckpoint,
    parse_checkpoint,
    verify_checkpoint,
)
from p2pcache.trust.cosignature import CosignatureVerifier
from p2pcache.trust.merkle_hash import leaf_hash
from p2pcache.trust.merkle_proof import HASH_SIZE, MAX_PROOF_LENGTH, verify_inclusion
from p2pcache.trust.signed_note import NoteFormatError, decode_canonical_base64, parse_note

HEADER = b"p2pcache-bundle/v1"
_ATTESTATION_LINES = 2 + len(FIELDS)  # header, fields, Signature
MAX_BUNDLE_SIZE = MAX_ATTESTATION_SIZE + MAX_CHECKPOINT_SIZE + 4096
"""An attestation, a checkpoint note and a proof of at most 64 hashes, with room for framing."""


class BundleFormatError(FormatError):
    """Bundle bytes are malformed or oversized.

    `reason`: oversized, version, structure, index, proof, attestation (the attestation part is
    malformed; the cause says how) or checkpoint (the checkpoint part is malformed).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AttestationBundle:
    """An attestation with its inclusion proof and the signed checkpoint it is relative to."""

    attestation: SignedAttestation
    index: int
    proof: tuple[bytes, ...]
    checkpoint: bytes
    """The checkpoint's signed note, byte for byte."""

    def __post_init__(self) -> None:
        if not 0 <= self.index < MAX_TREE_SIZE:
            raise BundleFormatError(f"leaf index {self.index} is out of range", "index")
        if len(self.proof) > MAX_PROOF_LENGTH or any(len(h) != HASH_SIZE for h in self.proof):
            raise BundleFormatError("the proof is not a list of up to 64 SHA-256 hashes", "proof")

    @property
    def leaf_hash(self) -> bytes:
        """RFC 9162 leaf hash of the attestation's bytes: what the log holds at `index`."""
        return leaf_hash(render_attestation(self.attestation))


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """What a verified bundle establishes: this builder signed this, and logged it here."""

    attestation: Attestation
    index: int
    checkpoint: VerifiedCheckpoint


def render_bundle(bundle: AttestationBundle) -> bytes:
    """The bundle's bytes, in the layout above."""
    proof = b" ".join(base64.b64encode(h) for h in bundle.proof)
    proof_line = b"Proof: " + proof if proof else b"Proof:"
    head = b"%s\nIndex: %d\n%s\n" % (HEADER, bundle.index, proof_line)
    data = head + render_attestation(bundle.attestation) + bundle.checkpoint
    if len(data) > MAX_BUNDLE_SIZE:
        raise BundleFormatError(f"the bundle would be {len(data)} bytes", "oversized")
    return data


def parse_bundle(data: bytes, *, max_size: int = MAX_BUNDLE_SIZE) -> AttestationBundle:
    """Parse bundle bytes; checks the form of all three parts, no signature and no proof.

    Raises BundleFormatError, whose `reason` names the part that is wrong and whose cause
    (for the attestation and checkpoint parts) is the part's own parse error.
    """
    if len(data) > max_size:
        raise BundleFormatError(
            f"attestation bundle is {len(data)} bytes, more than the {max_size} allowed",
            "oversized",
        )
    lines = data.split(b"\n", 3 + _ATTESTATION_LINES)
    if len(lines) < 4 + _ATTESTATION_LINES:
        raise BundleFormatError("attestation bundle is truncated", "structure")
    if lines[0] != HEADER:
        raise BundleFormatError(
            f"attestation bundle starts with {_show(lines[0])!r}, not {HEADER.decode()!r}",
            "version",
        )
    index = _parse_index(lines[1])
    proof = _parse_proof(lines[2])
    attestation_bytes = b"\n".join(lines[3 : 3 + _ATTESTATION_LINES]) + b"\n"
    try:
        attestation = parse_attestation(attestation_bytes)
    except AttestationFormatError as e:
        raise BundleFormatError(f"the bundle's attestation is malformed: {e}", "attestation") from e
    checkpoint = lines[3 + _ATTESTATION_LINES]
    try:
        parse_checkpoint(parse_note(checkpoint, max_size=MAX_CHECKPOINT_SIZE).text)
    except NoteFormatError as e:
        raise BundleFormatError(f"the bundle's checkpoint is malformed: {e}", "checkpoint") from e
    return AttestationBundle(attestation, index, proof, checkpoint)


def verify_bundle(
    bundle: AttestationBundle,
    builder_key: bytes,
    store_path: str,
    *,
    witnesses: Sequence[CosignatureVerifier] = (),
    required_cosignatures: int = 0,
) -> VerifiedBundle:
    """Check that `builder_key` attested `store_path` and logged it under a checkpoint it signed.

    In order (cheap checks first, so a hostile bundle costs little): the attestation is for
    `store_path` and names `builder_key`; the inclusion proof leads from the attestation's leaf
    hash at `index` to the checkpoint's root; the checkpoint is the builder's log, signed by it
    and cosigned as required; the attestation's own signature verifies.

    Raises AttestationVerificationError, ProofError (merkle_proof), NoteFormatError,
    NoteVerificationError or CheckpointVerificationError. Consistency with checkpoints seen
    before is not checked here: hand the returned checkpoint to a CheckpointStore.
    """
    attestation = bundle.attestation.attestation
    check_store_path(attestation, store_path)
    if attestation.builder != builder_key:
        raise AttestationVerificationError(
            f"the bundle's attestation names builder {attestation.builder.hex()[:16]}…, "
            f"not {builder_key.hex()[:16]}…",
            "wrong-builder",
        )
    checkpoint = parse_checkpoint(parse_note(bundle.checkpoint, max_size=MAX_CHECKPOINT_SIZE).text)
    verify_inclusion(bundle.index, checkpoint.size, bundle.leaf_hash, bundle.proof, checkpoint.root)
    verified_checkpoint = verify_checkpoint(
        bundle.checkpoint,
        builder_key,
        witnesses=witnesses,
        required_cosignatures=required_cosignatures,
    )
    verify_attestation(bundle.attestation, builder_key)
    return VerifiedBundle(attestation, bundle.index, verified_checkpoint)


def _parse_index(line: bytes) -> int:
    prefix = b"Index: "
    text = line[len(prefix) :]
    if not line.startswith(prefix) or not text.isdigit() or len(text) > 19:
        raise BundleFormatError(f"bundle line {_show(line)!r} is not 'Index: <decimal>'", "index")
    if len(text) > 1 and text.startswith(b"0"):
        raise BundleFormatError("the bundle's leaf index has leading zeros", "index")
    index = int(text)
    if index >= MAX_TREE_SIZE:
        raise BundleFormatError(f"leaf index {index} is out of range", "index")
    return index


def _parse_proof(line: bytes) -> tuple[bytes, ...]:
    if line == b"Proof:":
        return ()
    if not line.startswith(b"Proof: "):
        raise BundleFormatError(
            f"bundle line {_show(line)!r} is not 'Proof: <base64 hash> ...'", "proof"
        )
    items = line[len(b"Proof: ") :].split(b" ")
    if len(items) > MAX_PROOF_LENGTH:
        raise BundleFormatError(
            f"the bundle's proof has {len(items)} hashes, more than {MAX_PROOF_LENGTH}", "proof"
        )
    hashes = []
    for item in items:
        try:
            digest = decode_canonical_base64(item.decode("ascii"), "a proof hash")
        except (NoteFormatError, UnicodeDecodeError) as e:
            raise BundleFormatError(f"the bundle's proof: {e}", "proof") from None
        if len(digest) != HASH_SIZE:
            raise BundleFormatError(f"a proof hash is {len(digest)} bytes, not 32", "proof")
        hashes.append(digest)
    return tuple(hashes)


def _show(line: bytes) -> str:
    """A bounded, printable excerpt of a hostile line for an error message."""
    return line[:40].decode("ascii", errors="replace")
