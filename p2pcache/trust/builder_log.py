"""A builder's own log as the node keeps and serves it: attestations in, checkpoints, proofs out.

`BuilderLog` puts together the Merkle log of the node's attestations (merkle_log.py, in
`<data dir>/trust/log.sqlite`, origin `p2pcache/builder/<identity key>`), the item map and
signed checkpoints (bundle_store.py), and the identity key that signs (protocol/attestation.md
§1: a builder's key is its node identity). `p2pcache attest` appends through it; the peer API
serves its checkpoint, proofs and bundles.

Order of durability (attestation.md §3): leaves are committed (synchronous=FULL) before any
checkpoint covering them is signed, and a checkpoint is recorded before it is served. Signing
is deterministic (Ed25519), so signing the same tree twice, even from two processes (the node
and an `attest` run), gives the same note, never two checkpoints of one size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import nacl.signing

from p2pcache.trust.attestation import (
    HEADER,
    SignedAttestation,
    parse_attestation,
    render_attestation,
)
from p2pcache.trust.attestation_bundle import AttestationBundle, render_bundle
from p2pcache.trust.bundle_store import BundleStore, OwnCheckpoint
from p2pcache.trust.checkpoint import builder_origin
from p2pcache.trust.merkle_log import LogCorruptError, MerkleLog
from p2pcache.trust.sqlite_file import ClosesOnExit

log = logging.getLogger(__name__)

TRUST_DIR = "trust"
LOG_FILE = "log.sqlite"
BUNDLES_FILE = "bundles.sqlite"

# Leaves read per batch when filing log entries by item (after a crash, or on first open).
_INDEX_BATCH = 10_000


def hash_part_of(store_path: str) -> str:
    """The 32-character hash part of a full store path (already checked by the parser)."""
    return store_path.rsplit("/", 1)[-1][:32]


def _store_path_of_leaf(leaf: bytes) -> str:
    """The StorePath of an attestation in this node's own log, read without a full parse.

    Only this node writes its log, and only attestations it rendered itself (checked when
    appended), so the third line is the StorePath; anything else means the file is not ours.
    """
    lines = leaf.split(b"\n", 3)
    prefix = b"StorePath: "
    if len(lines) < 4 or lines[0] != HEADER.encode() or not lines[2].startswith(prefix):
        raise LogCorruptError("a leaf of this builder's log is not an attestation")
    try:
        return lines[2][len(prefix) :].decode("ascii")
    except UnicodeDecodeError:
        raise LogCorruptError("a leaf of this builder's log is not an attestation") from None


class BuilderLog(ClosesOnExit):
    """This node's attestation log: append, sign checkpoints, make bundles and proofs."""

    def __init__(self, log: MerkleLog, bundles: BundleStore, signing_key: nacl.signing.SigningKey):
        self.log = log
        self.bundles = bundles
        self._signing_key = signing_key
        self.public_key = bytes(signing_key.verify_key)
        self.origin = builder_origin(self.public_key)
        if log.origin != self.origin:
            raise ValueError("the log's origin is not this key's")

    @classmethod
    def open(cls, data_dir: Path, signing_key: nacl.signing.SigningKey) -> BuilderLog:
        """Open (creating if needed) `<data_dir>/trust/log.sqlite` and `bundles.sqlite`."""
        folder = Path(data_dir) / TRUST_DIR
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        origin = builder_origin(bytes(signing_key.verify_key))
        merkle_log = MerkleLog(folder / LOG_FILE, origin)
        try:
            bundles = BundleStore(folder / BUNDLES_FILE)
        except BaseException:
            merkle_log.close()
            raise
        builder_log = cls(merkle_log, bundles, signing_key)
        try:
            builder_log.file_entries()
        except BaseException:
            builder_log.close()
            raise
        return builder_log

    def close(self) -> None:
        self.log.close()
        self.bundles.close()

    @property
    def size(self) -> int:
        return self.log.size

    # -- writing -----------------------------------------------------------------------------

    def append(self, attestations: Sequence[SignedAttestation]) -> range:
        """Append attestations (signed by this node) in one transaction; file them by item."""
        for signed in attestations:
            if signed.attestation.builder != self.public_key:
                raise ValueError("only this node's own attestations go into its log")
        indexes = self.log.append_many(render_attestation(a) for a in attestations)
        if self.bundles.indexed_size == indexes.start:
            hash_parts = [hash_part_of(a.attestation.store_path) for a in attestations]
            self.bundles.record_own(indexes.start, hash_parts)
        self.file_entries()  # only if another writer appended meanwhile
        return indexes

    def file_entries(self) -> None:
        """File every leaf not yet filed by item (all of them after a cut-short run, too)."""
        size = self.log.size
        filed = self.bundles.indexed_size
        while filed < size:
            end = min(size, filed + _INDEX_BATCH)
            hash_parts = [
                hash_part_of(_store_path_of_leaf(self.log.leaf(i))) for i in range(filed, end)
            ]
            self.bundles.record_own(filed, hash_parts)
            filed = end

    def checkpoint(self) -> OwnCheckpoint | None:
        """The newest signed checkpoint, signing one first if the log has grown past it.

        None while the log is empty (a checkpoint of nothing is of no use to anyone).
        """
        latest = self.bundles.latest_own_checkpoint()
        size = self.log.size
        if size == 0:
            return None
        if latest is not None and latest.size >= size:
            return latest
        note = self.log.checkpoint(self._signing_key)
        signed = self.bundles.record_own_checkpoint(note)
        log.info("signed a checkpoint of this builder's log at size %d", signed.size)
        return signed

    # -- reading -----------------------------------------------------------------------------

    def latest_own(self, hash_part: str) -> tuple[int, SignedAttestation] | None:
        """The newest own attestation of an item, with its leaf index."""
        indexes = self.bundles.own_indexes(hash_part)
        if not indexes:
            return None
        index = indexes[-1]
        return index, parse_attestation(self.log.leaf(index))

    def own_bundle(self, hash_part: str, checkpoint: OwnCheckpoint | None = None) -> bytes | None:
        """The bundle of this node's newest attestation of an item, proven against the newest
        checkpoint (or `checkpoint`, given one), or None if it never attested the item or no
        checkpoint covers the attestation yet."""
        found = self.latest_own(hash_part)
        checkpoint = checkpoint or self.bundles.latest_own_checkpoint()
        if found is None or checkpoint is None or found[0] >= checkpoint.size:
            return None
        index, signed = found
        proof = self.log.inclusion_proof(index, checkpoint.size)
        return render_bundle(AttestationBundle(signed, index, tuple(proof), checkpoint.note))

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return self.log.inclusion_proof(index, size)

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        return self.log.consistency_proof(old, new)
