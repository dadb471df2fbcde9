"""A witness: cosigns a builder's checkpoint only after checking it extends what it cosigned.

protocol/attestation.md §5 and C2SP tlog-witness: a witness keeps, per log, the newest
checkpoint it cosigned; it cosigns a new one only when the log's signature verifies and a
consistency proof from that checkpoint (served by the builder itself) verifies too. So a
verifier that requires N cosignatures cannot be shown a split view unless N witnesses collude.

The consistency rules are exactly a verifier's (§7), so the witness keeps its own
CheckpointStore (`<data dir>/trust/witness.sqlite`, separate from the node's verifier store:
what this node cosigned is a promise to others, what it accepted is its own business):

- first checkpoint of a log: accepted on its signature and cosigned (trust on first use);
- newer: cosigned only with a verifying consistency proof; without one, nothing (retry later);
- older, or the same size with the same root as the one cosigned: never a new cosignature;
- same size, different root, or a proof from the builder that fails: fork evidence is kept,
  and the witness never cosigns that log again.

A checkpoint is cosigned once, at the moment it is first accepted; the note served is the
builder's signature line(s) and this witness's cosignature line (other witnesses' lines are
dropped: they are theirs to serve, and a verifier may not know their keys).

Key: the witness signs with the node's identity key under the key name
`p2pcache/witness/<64 hex of the key>` (see attestation.md §5 for why).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from p2pcache.trust.checkpoint import MAX_CHECKPOINT_SIZE, VerifiedCheckpoint, builder_origin
from p2pcache.trust.checkpoint_store import CheckpointStore, ForkEvidence, Outcome
from p2pcache.trust.cosignature import CosignatureVerifier, Cosigner
from p2pcache.trust.signed_note import Ed25519NoteVerifier, Note, parse_note, render_note
from p2pcache.trust.sqlite_file import ClosesOnExit, open_durable, write_transaction

WITNESS_NAME_PREFIX = "p2pcache/witness/"
WITNESS_FILE = "witness.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cosigned (
    origin TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    note BLOB NOT NULL,
    cosigned_at INTEGER NOT NULL
) WITHOUT ROWID;
"""


def witness_name(public_key: bytes) -> str:
    """The key name a p2pcache witness cosigns under: bound to its key, one name per key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return WITNESS_NAME_PREFIX + public_key.hex()


def witness_verifier(public_key: bytes) -> CosignatureVerifier:
    """How a verifier (or a builder collecting cosignatures) checks a p2pcache witness."""
    return CosignatureVerifier(witness_name(public_key), public_key)


@dataclass(frozen=True, slots=True)
class WatchedLog:
    """A builder log a witness watches: the builder's Ed25519 key and its peer API URL."""

    key: bytes
    url: str

    @property
    def origin(self) -> str:
        return builder_origin(self.key)


def parse_watched_log(text: str) -> WatchedLog:
    """`<64 hex digits of the builder key> <peer URL>`, as `[witness] logs` lists them."""
    words = text.split()
    if len(words) != 2 or len(words[0]) != 64:
        raise ValueError(f'expected "<64 hex digits of a builder key> <peer URL>", got {text!r}')
    try:
        key = bytes.fromhex(words[0])
    except ValueError:
        raise ValueError(f"{words[0]!r} is not 64 hex digits") from None
    if not words[1].startswith(("http://", "https://")):
        raise ValueError(f"{words[1]!r} is not an http:// or https:// URL")
    return WatchedLog(key, words[1].rstrip("/"))


class WitnessOutcome(enum.Enum):
    """What the witness did with a checkpoint (the metric label)."""

    COSIGNED = "cosigned"
    """Accepted (first seen, or proven to extend the last one cosigned) and cosigned now."""
    ALREADY_COSIGNED = "already-cosigned"
    """The checkpoint cosigned before: its cosignature stands."""
    AWAITING_PROOF = "awaiting-proof"
    """Newer, but no consistency proof could be had: not cosigned, retried later."""
    OLDER = "older"
    """Older than the last one cosigned: never cosigned (a witness never goes back)."""
    FORK_DETECTED = "fork-detected"
    """This checkpoint contradicts the cosigned history: evidence kept, the log abandoned."""
    LOG_FORKED = "log-forked"
    """The log was found forked before: nothing it signs is cosigned again."""


@dataclass(frozen=True, slots=True)
class WitnessVerdict:
    outcome: WitnessOutcome
    cosigned: bytes | None
    """The cosigned note now served for the log (None if the witness never cosigned it)."""
    evidence: ForkEvidence | None = None


_OUTCOMES = {
    Outcome.AWAITING_PROOF: WitnessOutcome.AWAITING_PROOF,
    Outcome.OLDER_CONSISTENT: WitnessOutcome.OLDER,
    Outcome.ROLLBACK_REFUSED: WitnessOutcome.OLDER,
    Outcome.FORK_DETECTED: WitnessOutcome.FORK_DETECTED,
    Outcome.BUILDER_FORKED: WitnessOutcome.LOG_FORKED,
}


class Witness(ClosesOnExit):
    """The witness's decisions and its cosigned checkpoints, in `witness.sqlite`."""

    def __init__(
        self, path: str | Path, cosigner: Cosigner, *, now: Callable[[], float] = time.time
    ) -> None:
        self._now = now
        self._cosigner = cosigner
        self._lock = threading.Lock()
        self.history = CheckpointStore(path, now=now)
        try:
            self._db = open_durable(path, _SCHEMA)
        except BaseException:
            self.history.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self.history.close()

    @property
    def name(self) -> str:
        return self._cosigner.name

    @property
    def verifier(self) -> CosignatureVerifier:
        return self._cosigner.verifier

    def last_size(self, origin: str) -> int | None:
        """The size of the newest checkpoint of `origin` accepted so far (to ask a proof from)."""
        latest = self.history.latest(origin)
        return None if latest is None else latest.size

    def consider(
        self, checkpoint: VerifiedCheckpoint, consistency_proof: Sequence[bytes] | None
    ) -> WitnessVerdict:
        """Judge a checkpoint whose log signature verified; cosign it if it extends history.

        `consistency_proof` is from the last accepted checkpoint to this one and MUST come from
        the builder itself: one that fails verification is kept as fork evidence against it.
        """
        with self._lock:
            observation = self.history.observe(checkpoint, consistency_proof)
            outcome = observation.outcome
            if outcome in _OUTCOMES:
                served = self._cosigned(checkpoint.origin)
                return WitnessVerdict(_OUTCOMES[outcome], served, observation.evidence)
            # FIRST_SEEN, ADVANCED, UNCHANGED: the checkpoint is now the newest accepted one.
            existing = self._db.execute(
                "SELECT size, note FROM cosigned WHERE origin = ?", (checkpoint.origin,)
            ).fetchone()
            if existing is not None and existing[0] == checkpoint.size:
                return WitnessVerdict(WitnessOutcome.ALREADY_COSIGNED, bytes(existing[1]))
            note = self._cosign(checkpoint)
            with write_transaction(self._db) as db:
                db.execute(
                    "INSERT OR REPLACE INTO cosigned (origin, size, note, cosigned_at)"
                    " VALUES (?, ?, ?, ?)",
                    (checkpoint.origin, checkpoint.size, note, int(self._now())),
                )
            return WitnessVerdict(WitnessOutcome.COSIGNED, note)

    def cosigned(self, origin: str) -> bytes | None:
        """The newest checkpoint of `origin` this witness cosigned, with its cosignature line."""
        with self._lock:
            return self._cosigned(origin)

    def is_forked(self, origin: str) -> bool:
        return self.history.is_forked(origin)

    def _cosigned(self, origin: str) -> bytes | None:
        row = self._db.execute("SELECT note FROM cosigned WHERE origin = ?", (origin,)).fetchone()
        return None if row is None else bytes(row[0])

    def _cosign(self, checkpoint: VerifiedCheckpoint) -> bytes:
        note = parse_note(checkpoint.note, max_size=MAX_CHECKPOINT_SIZE)
        log_key_id = Ed25519NoteVerifier(checkpoint.origin, checkpoint.log_key).key_id
        # The builder's first line only: a note may carry it more than once (each copy
        # verifies), and copies kept would crowd out cosignatures, or make the note too long
        # to be read back.
        own = next(
            s for s in note.signatures if (s.name, s.key_id) == (checkpoint.origin, log_key_id)
        )
        line = self._cosigner.cosign(note.text, int(self._now()))
        return render_note(Note(note.text, (own, line)))
