"""Checkpoint gossip: pass on the newest checkpoint accepted per builder log, judge those received.

A builder that shows one tree to some nodes and another tree to others (a split view) is
caught only when those nodes compare notes. So every node serves the newest checkpoint it has
accepted for each builder log it tracks (`GET /p2p/v1/checkpoints`), pulls that list from a
few peers now and then (gossip_service.py), and feeds every note into its own CheckpointStore,
the same one that attestation bundles' checkpoints go through (protocol/attestation.md §7).
Two signed checkpoints of one size with different roots are then fork evidence wherever they
meet.

A peer relaying a checkpoint vouches for nothing; the note is judged on the builder's
signature alone:

- a note whose origin is not the log of a builder this node tracks (trusted builders) is
  dropped before any signature is checked: gossip never grows the store with strangers' logs;
- the builder's signature must verify; cosignature lines are ignored here (a checkpoint the
  builder signed binds the builder, whoever cosigned it; witnesses gate the use of a
  checkpoint for accepting items, which the policy checks on the bundle's own checkpoint);
- a newer or older checkpoint needs a consistency proof to move the newest or be confirmed;
  one served by the builder itself that fails is fork evidence, one from anyone else that
  fails is treated as missing (§7: proofs are not signed).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass

from p2pcache.errors import P2PCacheError
from p2pcache.trust.attestation_verifier import ConsistencyProof
from p2pcache.trust.checkpoint import (
    BUILDER_ORIGIN_PREFIX,
    MAX_CHECKPOINT_SIZE,
    VerifiedCheckpoint,
    parse_checkpoint,
    verify_checkpoint,
)
from p2pcache.trust.checkpoint_list import MAX_LISTED_CHECKPOINTS
from p2pcache.trust.checkpoint_store import (
    CheckpointStore,
    CheckpointStoreError,
    Observation,
    Outcome,
)
from p2pcache.trust.merkle_proof import ProofError, verify_consistency
from p2pcache.trust.signed_note import parse_note


class Ignored(enum.Enum):
    """Why a received note never reached the store (metric labels, beside Outcome's)."""

    UNKNOWN_ORIGIN = "unknown-origin"
    """Not the log of a builder this node tracks."""
    INVALID = "invalid"
    """Malformed, or the builder's signature does not verify."""
    KEY_CHANGED = "key-changed"
    """The origin was recorded with another key (cannot happen for p2pcache origins)."""


@dataclass(frozen=True, slots=True)
class Received:
    """A received note that passed the cheap checks: whose log it is, verified."""

    checkpoint: VerifiedCheckpoint


def origin_key(note: bytes) -> bytes | None:
    """The builder key a note's origin names, from its text alone (None: not a builder log).

    Cheap (no signature checked), so strangers' notes are dropped before any Ed25519 work.
    Raises FormatError (a NoteFormatError) for a malformed note.
    """
    return builder_key_of(
        parse_checkpoint(parse_note(note, max_size=MAX_CHECKPOINT_SIZE).text).origin
    )


def builder_key_of(origin: str) -> bytes | None:
    """The key in a `p2pcache/builder/<64 hex>` origin (None for any other origin)."""
    hex_key = origin.removeprefix(BUILDER_ORIGIN_PREFIX)
    if hex_key == origin or len(hex_key) != 64 or hex_key != hex_key.lower():
        return None
    try:
        return bytes.fromhex(hex_key)
    except ValueError:
        return None


class CheckpointGossip:
    """What this node tells peers and how it takes what they tell it, over its CheckpointStore."""

    def __init__(
        self,
        store: CheckpointStore,
        tracked_keys: Callable[[], Iterable[bytes]],
        *,
        own_checkpoint: Callable[[], bytes | None] = lambda: None,
    ) -> None:
        self.store = store
        self.tracked_keys = tracked_keys
        """The builders whose logs this node follows (the trusted builders)."""
        self.own_checkpoint = own_checkpoint
        """This node's own log's newest checkpoint, if it is a builder (listed first)."""

    def newest_notes(self) -> list[bytes]:
        """The notes to serve: the own log's newest checkpoint, then each tracked log's."""
        own = self.own_checkpoint()
        notes = [own] if own is not None else []
        notes.extend(c.note for c in self.store.latest_checkpoints(MAX_LISTED_CHECKPOINTS))
        return notes

    def check(self, note: bytes, tracked: Set[bytes] | None = None) -> Received | Ignored:
        """The cheap checks, then the builder's signature.

        `tracked`: the keys of `tracked_keys()`, read once for a whole list by the caller.
        """
        try:
            key = origin_key(note)
        except P2PCacheError:
            return Ignored.INVALID
        if tracked is None:
            tracked = set(self.tracked_keys())
        if key is None or key not in tracked:
            return Ignored.UNKNOWN_ORIGIN
        try:
            return Received(verify_checkpoint(note, key))
        except P2PCacheError:
            return Ignored.INVALID

    def observe(
        self, received: Received, proof: ConsistencyProof | None = None
    ) -> Observation | Ignored:
        """Feed a checked note into the store, with a consistency proof to the newest if any.

        A proof not served by the builder is passed on only if it verifies (otherwise it is as
        good as none): only the builder's own failing proof is evidence against it.
        """
        hashes = None if proof is None else proof.hashes
        if proof is not None and not proof.from_builder:
            hashes = proof.hashes if self._proof_holds(received.checkpoint, proof) else None
        try:
            return self.store.observe(received.checkpoint, hashes)
        except CheckpointStoreError:
            return Ignored.KEY_CHANGED

    def proof_sizes(self, received: Received) -> tuple[int, int] | None:
        """(old, new) sizes of the consistency proof that would settle this checkpoint against
        the newest accepted one, or None when none is needed (or none can exist)."""
        latest = self.store.latest(received.checkpoint.origin)
        size = received.checkpoint.size
        if latest is None or latest.size == size or 0 in (latest.size, size):
            return None
        return (latest.size, size) if latest.size < size else (size, latest.size)

    def _proof_holds(self, checkpoint: VerifiedCheckpoint, proof: ConsistencyProof) -> bool:
        latest = self.store.latest(checkpoint.origin)
        if latest is None:
            return False
        older, newer = sorted([(latest.size, latest.root), (checkpoint.size, checkpoint.root)])
        try:
            verify_consistency(older[0], newer[0], list(proof.hashes), older[1], newer[1])
        except ProofError:
            return False
        return True


def outcome_label(result: Observation | Ignored) -> str:
    """The metric label of what became of a received note."""
    return result.value if isinstance(result, Ignored) else result.outcome.value


def is_fork(result: Observation | Ignored) -> bool:
    return isinstance(result, Observation) and result.outcome is Outcome.FORK_DETECTED
