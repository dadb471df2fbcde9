"""The attestation bundles a node holds: its own log's entries and checkpoints, and carried ones.

Two kinds, one SQLite file (`<data dir>/trust/bundles.sqlite`), keyed by store-path hash part:

* **own**: for a builder, which leaf of its own Merkle log attests which item, and the
  checkpoints it signed. The attestation bytes live in the log itself (merkle_log.py), and a
  bundle for an own attestation is made when asked (builder_log.py), with its inclusion proof
  against the newest checkpoint: so own bundles are always fresh, and signing a checkpoint
  rewrites nothing. The item map is derived from the log (`indexed_size` says how far), so an
  attest run cut short between appending and recording loses nothing.
* **carried**: bundles of other builders that came with items this node fetched, kept so
  that it can hand them on while those builders are offline. One per (item, builder), the
  one with the largest tree kept; at most MAX_CARRIED_PER_ITEM per item, the least recently
  received one going first. Callers add only bundles they verified (the store checks that a
  bundle is for the item it is filed under, nothing more).

Synchronous sqlite3 in WAL mode, like the log; a lock serializes threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from p2pcache.errors import P2PCacheError
from p2pcache.guix.store_path import parse_store_path
from p2pcache.trust.attestation_bundle import AttestationBundle, render_bundle
from p2pcache.trust.checkpoint import MAX_CHECKPOINT_SIZE, parse_checkpoint
from p2pcache.trust.signed_note import parse_note
from p2pcache.trust.sqlite_file import ClosesOnExit, open_durable, write_transaction

MAX_CARRIED_PER_ITEM = 16
"""Builders whose bundles a node carries per item: a quorum is 2 by default, trust files short."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS own_entries (
    leaf_index INTEGER PRIMARY KEY,
    hash_part TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS own_entries_by_item ON own_entries (hash_part, leaf_index);
CREATE TABLE IF NOT EXISTS own_checkpoints (
    size INTEGER PRIMARY KEY,
    note BLOB NOT NULL,
    signed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS carried (
    hash_part TEXT NOT NULL,
    builder BLOB NOT NULL,
    tree_size INTEGER NOT NULL,
    bundle BLOB NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (hash_part, builder)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class BundleStoreError(P2PCacheError):
    """A bundle cannot be filed as asked."""


@dataclass(frozen=True, slots=True)
class OwnCheckpoint:
    size: int
    note: bytes


class BundleStore(ClosesOnExit):
    """Own log entries by item, own checkpoints, and carried bundles, in one SQLite file."""

    def __init__(self, path: str | Path, *, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._db = open_durable(path, _SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- own log entries ---------------------------------------------------------------------

    @property
    def indexed_size(self) -> int:
        """How many leaves of the own log have been filed by item (leaves 0 .. this - 1)."""
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM store_meta WHERE key = 'indexed_size'"
            ).fetchone()
        return 0 if row is None else row[0]

    def record_own(self, first_index: int, hash_parts: Sequence[str]) -> None:
        """File log leaves first_index, first_index + 1, ... under these items' hash parts.

        Requires first_index == indexed_size: entries are filed in log order, once.
        """
        with self._lock, write_transaction(self._db) as db:
            row = db.execute("SELECT value FROM store_meta WHERE key = 'indexed_size'").fetchone()
            indexed = 0 if row is None else row[0]
            if first_index != indexed:
                raise BundleStoreError(
                    f"own log entries are filed up to {indexed}, not {first_index}"
                )
            db.executemany(
                "INSERT INTO own_entries (leaf_index, hash_part) VALUES (?, ?)",
                [(first_index + i, h) for i, h in enumerate(hash_parts)],
            )
            db.execute(
                "INSERT INTO store_meta (key, value) VALUES ('indexed_size', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (first_index + len(hash_parts),),
            )

    def own_indexes(self, hash_part: str) -> list[int]:
        """The own log leaves that attest this item, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT leaf_index FROM own_entries WHERE hash_part = ? ORDER BY leaf_index",
                (hash_part,),
            ).fetchall()
        return [r[0] for r in rows]

    def own_count(self) -> int:
        """How many distinct items this node has attested."""
        with self._lock:
            return self._db.execute("SELECT count(DISTINCT hash_part) FROM own_entries").fetchone()[
                0
            ]

    def record_own_checkpoint(self, note: bytes) -> OwnCheckpoint:
        """Keep a checkpoint this node signed for its own log (one per tree size)."""
        size = parse_checkpoint(parse_note(note, max_size=MAX_CHECKPOINT_SIZE).text).size
        with self._lock:
            self._db.execute(
                "INSERT INTO own_checkpoints (size, note, signed_at) VALUES (?, ?, ?)"
                " ON CONFLICT (size) DO NOTHING",
                (size, note, self._now()),
            )
            row = self._db.execute(
                "SELECT note FROM own_checkpoints WHERE size = ?", (size,)
            ).fetchone()
        return OwnCheckpoint(size, bytes(row[0]))

    def replace_own_checkpoint_note(self, size: int, note: bytes) -> OwnCheckpoint:
        """Keep `note` for the own checkpoint of `size`: the same checkpoint text with more
        signature lines (witness cosignatures, attached by cosignature_collector.py).

        Raises BundleStoreError when no checkpoint of that size was signed, or when `note`
        has another text (a checkpoint, once signed, never changes).
        """
        text = parse_note(note, max_size=MAX_CHECKPOINT_SIZE).text
        with self._lock, write_transaction(self._db) as db:
            row = db.execute("SELECT note FROM own_checkpoints WHERE size = ?", (size,)).fetchone()
            if row is None:
                raise BundleStoreError(f"this node signed no checkpoint of size {size}")
            if parse_note(bytes(row[0]), max_size=MAX_CHECKPOINT_SIZE).text != text:
                raise BundleStoreError(f"a note of another text cannot replace checkpoint {size}")
            db.execute("UPDATE own_checkpoints SET note = ? WHERE size = ?", (note, size))
        return OwnCheckpoint(size, note)

    def own_checkpoint(self, size: int) -> OwnCheckpoint | None:
        """The checkpoint this node signed for its own tree of `size` leaves, if it signed one."""
        with self._lock:
            row = self._db.execute(
                "SELECT note FROM own_checkpoints WHERE size = ?", (size,)
            ).fetchone()
        return None if row is None else OwnCheckpoint(size, bytes(row[0]))

    def latest_own_checkpoint(self) -> OwnCheckpoint | None:
        """The checkpoint of the largest own tree signed so far."""
        with self._lock:
            row = self._db.execute(
                "SELECT size, note FROM own_checkpoints ORDER BY size DESC LIMIT 1"
            ).fetchone()
        return None if row is None else OwnCheckpoint(row[0], bytes(row[1]))

    # -- carried bundles ---------------------------------------------------------------------

    def add_carried(self, hash_part: str, bundle: AttestationBundle) -> bool:
        """Carry a (verified) bundle of another builder for item `hash_part`.

        Keeps the bundle with the largest tree per (item, builder): returns False when the one
        already held is at least as large. Raises BundleStoreError when the bundle attests
        another item than `hash_part`.
        """
        attestation = bundle.attestation.attestation
        store_path = attestation.store_path
        store_dir = store_path.rsplit("/", 1)[0]
        if parse_store_path(store_path, store_dir).hash_part != hash_part:
            raise BundleStoreError(
                f"a bundle for {store_path} cannot be carried for item {hash_part}"
            )
        tree_size = parse_checkpoint(
            parse_note(bundle.checkpoint, max_size=MAX_CHECKPOINT_SIZE).text
        ).size
        data = render_bundle(bundle)
        with self._lock, write_transaction(self._db) as db:
            row = db.execute(
                "SELECT tree_size FROM carried WHERE hash_part = ? AND builder = ?",
                (hash_part, attestation.builder),
            ).fetchone()
            if row is not None and row[0] >= tree_size:
                return False
            db.execute(
                "INSERT OR REPLACE INTO carried"
                " (hash_part, builder, tree_size, bundle, received_at) VALUES (?, ?, ?, ?, ?)",
                (hash_part, attestation.builder, tree_size, data, self._now()),
            )
            db.execute(
                "DELETE FROM carried WHERE hash_part = ? AND builder IN ("
                " SELECT builder FROM carried WHERE hash_part = ?"
                " ORDER BY received_at DESC, builder LIMIT -1 OFFSET ?)",
                (hash_part, hash_part, MAX_CARRIED_PER_ITEM),
            )
        return True

    def carried(self, hash_part: str) -> list[bytes]:
        """The bundles carried for an item, most recently received first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT bundle FROM carried WHERE hash_part = ? ORDER BY received_at DESC, builder",
                (hash_part,),
            ).fetchall()
        return [bytes(r[0]) for r in rows]

    def forget_carried(self, hash_parts: Iterable[str]) -> None:
        """Drop the carried bundles of items no longer in the cache (nothing to hand them with)."""
        with self._lock:
            self._db.executemany(
                "DELETE FROM carried WHERE hash_part = ?", [(h,) for h in hash_parts]
            )
