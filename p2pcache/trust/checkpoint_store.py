"""The checkpoints a node has seen, per builder log: append-only growth, or evidence of a fork.

A signed checkpoint only protects anyone if every later one extends it. So the node keeps,
per log origin, the newest checkpoint it accepted (and the earlier ones it accepted on the way,
which are just as binding), and judges each new one (RFC 9162 §2.1.4, C2SP tlog-checkpoint
§Signatures: "a log MUST NOT sign any checkpoint which is inconsistent with any checkpoint it
previously signed"):

- the first checkpoint of a log is accepted on its signatures alone (trust on first use:
  there is nothing earlier to be consistent with; the merkle vectors' README says the same)
  and recorded;
- a newer one is accepted only with a consistency proof from the newest one that verifies;
  without a proof the old one stays (a missing proof is not evidence: retry later);
- an older one never replaces the newest (rollback refused); with a proof that it is a prefix
  of the newest it is confirmed consistent (and a bundle relative to it is usable);
- evidence of a fork, kept with both signed notes, after which the builder is untrusted:
  two checkpoints of one size with different roots, or a consistency proof between two of
  its checkpoints that fails verification. Nothing else counts as evidence.

Caution for callers: a consistency proof is not signed, so a failing proof is only evidence
against the builder if the builder itself served it. Pass proofs fetched from the builder's
own log endpoint; treat a failing proof relayed by a third party as missing.

The input is a VerifiedCheckpoint: signature and required cosignatures are checked before a
checkpoint gets here (checkpoint.verify_checkpoint). Synchronous sqlite3 in WAL mode; the
async shell runs calls in a thread, and a lock serializes calls from several threads.
"""

from __future__ import annotations

import base64
import enum
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from p2pcache.errors import P2PCacheError
from p2pcache.trust.checkpoint import VerifiedCheckpoint
from p2pcache.trust.merkle_hash import EMPTY_ROOT
from p2pcache.trust.merkle_proof import ProofError, verify_consistency
from p2pcache.trust.sqlite_file import ClosesOnExit, open_durable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS builders (
    origin TEXT PRIMARY KEY,
    log_key BLOB NOT NULL,
    latest_size INTEGER NOT NULL,
    forked_at REAL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    origin TEXT NOT NULL,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note BLOB NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (origin, size)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fork_evidence (
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    kind TEXT NOT NULL,
    first_note BLOB NOT NULL,
    second_note BLOB NOT NULL,
    proof TEXT,
    detail TEXT NOT NULL,
    recorded_at REAL NOT NULL
);
"""


class CheckpointStoreError(P2PCacheError):
    """The store cannot judge this checkpoint (for example, the log's key changed)."""


class Outcome(enum.Enum):
    """What observing a checkpoint did."""

    FIRST_SEEN = "first-seen"
    """No checkpoint was known for the log; this one is accepted on its signatures."""
    UNCHANGED = "unchanged"
    """The same size and root as the newest one: nothing new."""
    ADVANCED = "advanced"
    """Newer, with a valid consistency proof: it is now the newest."""
    AWAITING_PROOF = "awaiting-proof"
    """Newer, but no proof was given: the old one stays; ask the builder for a proof."""
    OLDER_CONSISTENT = "older-consistent"
    """Older than the newest and proven (or known) to be its prefix; the newest stays."""
    ROLLBACK_REFUSED = "rollback-refused"
    """Older than the newest and not proven consistent with it; the newest stays."""
    FORK_DETECTED = "fork-detected"
    """This checkpoint and a recorded one cannot both be true; evidence kept, builder untrusted."""
    BUILDER_FORKED = "builder-forked"
    """The builder was already found forked; nothing it signs is considered."""


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    origin: str
    size: int
    root: bytes
    note: bytes
    seen_at: float


@dataclass(frozen=True, slots=True)
class ForkEvidence:
    """Two signed checkpoints of one log that cannot both be true (and the failing proof).

    `kind`: `same-size` (equal sizes, different roots), `inconsistent` (a consistency proof
    between them failed: `detail` says how), `bad-empty-root` (a signed tree of size 0 whose
    root is not the empty hash; then both notes are that checkpoint).
    """

    id: int
    origin: str
    kind: str
    first_note: bytes
    second_note: bytes
    proof: tuple[bytes, ...] | None
    detail: str
    recorded_at: float


@dataclass(frozen=True, slots=True)
class Observation:
    outcome: Outcome
    latest: StoredCheckpoint | None
    """The newest accepted checkpoint of the log after this call (None once it forked at first)."""
    evidence: ForkEvidence | None = None

    @property
    def is_consistent(self) -> bool:
        """May the observed checkpoint be used (to check inclusion proofs against it)?"""
        return self.outcome in _CONSISTENT


_CONSISTENT = frozenset(
    {Outcome.FIRST_SEEN, Outcome.UNCHANGED, Outcome.ADVANCED, Outcome.OLDER_CONSISTENT}
)


class CheckpointStore(ClosesOnExit):
    """Per-log newest checkpoint, history and fork evidence, in one SQLite file."""

    def __init__(self, path: str | Path, *, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._db = open_durable(path, _SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def latest(self, origin: str) -> StoredCheckpoint | None:
        """The newest checkpoint accepted for `origin`, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT latest_size FROM builders WHERE origin = ?", (origin,)
            ).fetchone()
            return None if row is None else self._checkpoint(origin, row[0])

    def latest_checkpoints(self, limit: int) -> list[StoredCheckpoint]:
        """The newest accepted checkpoint of every log known (at most `limit`, by origin):
        what a node passes on to its peers by gossip."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.origin, c.size, c.root, c.note, c.seen_at FROM builders AS b"
                " JOIN checkpoints AS c ON c.origin = b.origin AND c.size = b.latest_size"
                " ORDER BY b.origin LIMIT ?",
                (limit,),
            ).fetchall()
        return [StoredCheckpoint(o, n, bytes(r), bytes(t), s) for o, n, r, t, s in rows]

    def is_forked(self, origin: str) -> bool:
        """Has fork evidence been recorded for this log (so its builder is untrusted)?"""
        with self._lock:
            row = self._db.execute(
                "SELECT forked_at FROM builders WHERE origin = ?", (origin,)
            ).fetchone()
            return row is not None and row[0] is not None

    def fork_evidence(self, origin: str | None = None) -> list[ForkEvidence]:
        """The evidence recorded (for one log, or all), oldest first."""
        sql = "SELECT * FROM fork_evidence"
        args: tuple[str, ...] = ()
        if origin is not None:
            sql, args = sql + " WHERE origin = ?", (origin,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [_evidence(row) for row in rows]

    def observe(
        self, checkpoint: VerifiedCheckpoint, consistency_proof: Sequence[bytes] | None = None
    ) -> Observation:
        """Judge a verified checkpoint against what was seen before, and record the result.

        `consistency_proof` links it with the newest recorded checkpoint of its log: from the
        newest to this one when this one is newer, from this one to the newest when it is older
        (None: no proof could be had). Returns an Observation; raises CheckpointStoreError when
        the log's key differs from the one first recorded for its origin.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = self._observe(checkpoint, consistency_proof)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            return result

    # -- the decision ------------------------------------------------------------------------

    def _observe(self, new: VerifiedCheckpoint, proof: Sequence[bytes] | None) -> Observation:
        origin = new.origin
        row = self._db.execute(
            "SELECT log_key, latest_size, forked_at FROM builders WHERE origin = ?", (origin,)
        ).fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO builders (origin, log_key, latest_size) VALUES (?, ?, ?)",
                (origin, new.log_key, new.size),
            )
            if new.size == 0 and new.root != EMPTY_ROOT:
                return self._fork(new, new, "bad-empty-root", None, "size 0 with a non-empty root")
            return Observation(Outcome.FIRST_SEEN, self._record(new))
        log_key, latest_size, forked_at = row
        if bytes(log_key) != new.log_key:
            raise CheckpointStoreError(
                f"log {origin} was recorded with another key; a builder's key cannot change"
            )
        latest = self._checkpoint(origin, latest_size)
        if forked_at is not None:
            return Observation(Outcome.BUILDER_FORKED, latest)
        if new.size == 0 and new.root != EMPTY_ROOT:
            return self._fork(new, new, "bad-empty-root", None, "size 0 with a non-empty root")
        known = self._checkpoint(origin, new.size)
        if known is not None:
            if known.root != new.root:
                detail = f"two roots for size {new.size}"
                return self._fork(known, new, "same-size", None, detail)
            outcome = Outcome.UNCHANGED if new.size == latest_size else Outcome.OLDER_CONSISTENT
            return Observation(outcome, latest)
        if new.size > latest_size:
            if latest_size == 0:  # every tree extends the empty tree: nothing to prove
                return self._advance(new)
            if proof is None:
                return Observation(Outcome.AWAITING_PROOF, latest)
            try:
                verify_consistency(latest_size, new.size, proof, latest.root, new.root)
            except ProofError as e:
                return self._fork(latest, new, "inconsistent", proof, str(e))
            return self._advance(new)
        if new.size == 0:
            self._record(new)
            return Observation(Outcome.OLDER_CONSISTENT, latest)
        if proof is None:
            return Observation(Outcome.ROLLBACK_REFUSED, latest)
        try:
            verify_consistency(new.size, latest_size, proof, new.root, latest.root)
        except ProofError as e:
            return self._fork(new, latest, "inconsistent", proof, str(e))
        self._record(new)
        return Observation(Outcome.OLDER_CONSISTENT, latest)

    def _advance(self, new: VerifiedCheckpoint) -> Observation:
        stored = self._record(new)
        self._db.execute(
            "UPDATE builders SET latest_size = ? WHERE origin = ?", (new.size, new.origin)
        )
        return Observation(Outcome.ADVANCED, stored)

    def _fork(
        self,
        first: StoredCheckpoint | VerifiedCheckpoint,
        second: StoredCheckpoint | VerifiedCheckpoint,
        kind: str,
        proof: Sequence[bytes] | None,
        detail: str,
    ) -> Observation:
        now = self._now()
        proof_text = None if proof is None else "\n".join(_b64(h) for h in proof)
        cursor = self._db.execute(
            "INSERT INTO fork_evidence (origin, kind, first_note, second_note, proof, detail,"
            " recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (second.origin, kind, first.note, second.note, proof_text, detail, now),
        )
        self._db.execute("UPDATE builders SET forked_at = ? WHERE origin = ?", (now, second.origin))
        row = self._db.execute(
            "SELECT * FROM fork_evidence WHERE id = ?", (cursor.lastrowid,)
        ).fetchone()
        latest_size = self._db.execute(
            "SELECT latest_size FROM builders WHERE origin = ?", (second.origin,)
        ).fetchone()[0]
        latest = self._checkpoint(second.origin, latest_size)
        return Observation(Outcome.FORK_DETECTED, latest, _evidence(row))

    def _record(self, new: VerifiedCheckpoint) -> StoredCheckpoint:
        now = self._now()
        self._db.execute(
            "INSERT OR IGNORE INTO checkpoints (origin, size, root, note, seen_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (new.origin, new.size, new.root, new.note, now),
        )
        return StoredCheckpoint(new.origin, new.size, new.root, new.note, now)

    def _checkpoint(self, origin: str, size: int) -> StoredCheckpoint | None:
        row = self._db.execute(
            "SELECT root, note, seen_at FROM checkpoints WHERE origin = ? AND size = ?",
            (origin, size),
        ).fetchone()
        if row is None:
            return None
        root, note, seen_at = row
        return StoredCheckpoint(origin, size, bytes(root), bytes(note), seen_at)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _evidence(row: tuple) -> ForkEvidence:
    id_, origin, kind, first, second, proof, detail, recorded_at = row
    hashes = None
    if proof is not None:
        hashes = tuple(base64.b64decode(h) for h in proof.split("\n")) if proof else ()
    return ForkEvidence(id_, origin, kind, bytes(first), bytes(second), hashes, detail, recorded_at)
