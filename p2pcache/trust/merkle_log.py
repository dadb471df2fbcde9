"""A builder's append-only Merkle log, stored in one SQLite file, with proofs in logarithmic work.

The tree is RFC 9162 §2.1 (merkle_hash.py). What is stored is every *complete* subtree hash:
leaf hashes (level 0) and, for each level l >= 1, the hash of every aligned block of 2**l
leaves once the block is full. Those never change once written, so the table only grows, and
every node a proof needs is either one of them or the hash of a range ending at the tree's
right edge, which is the fold of at most log2(n) of them (RFC 9162 §2.1.1: split at the
largest power of two). Hence, for a tree of n leaves:

- `append`: one leaf row and the subtrees it completes (trailing ones of the index, O(log n),
  one on average), computed from the in-memory right border (the "compact range"), no reads;
- `root(size)`: popcount(size) reads;
- `inclusion_proof`, `consistency_proof`: at most one read per proof hash plus the
  decomposition of the one right-edge node a proof can contain: under 2*log2(n) reads, in one
  query per table. `nodes_read` counts them (tests/trust/test_merkle_log.py asserts the
  bound at 2**20 leaves).

Leaf hashes live in the leaf's row. Complete subtrees of level >= 1 are numbered in the order
they are completed (post-order), so appends write keys in increasing order (sequential B-tree
inserts) and a node's key is a formula of its (level, index): after m leaves, m - popcount(m)
of them are complete.

Durability: WAL with synchronous=FULL. A builder must never sign a checkpoint for a tree it
could lose in a power cut, or it would later sign a different tree of the same size: a fork,
and evidence against itself. Appends commit before they return, and `checkpoint` signs what is
committed.

One writer per file (SQLite's lock serializes processes; a writer that finds the file grown by
another reloads its right border). The class is synchronous; the async shell runs it in a
thread, and a lock serializes calls made from several threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import nacl.signing

from p2pcache.errors import P2PCacheError
from p2pcache.trust.checkpoint import MAX_TREE_SIZE, Checkpoint, check_origin, sign_checkpoint
from p2pcache.trust.merkle_hash import EMPTY_ROOT, leaf_hash, node_hash
from p2pcache.trust.sqlite_file import ClosesOnExit, open_durable

FORMAT_VERSION = "1"

# An attestation is at most 1 MiB (attestation.py); the log itself is generic over leaf bytes.
MAX_LEAF_SIZE = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leaves (idx INTEGER PRIMARY KEY, hash BLOB NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (pos INTEGER PRIMARY KEY, hash BLOB NOT NULL);
"""

# Host parameters per query: SQLite before 3.32 allows 999. A proof needs at most 128.
_MAX_PARAMETERS = 999


class LogError(P2PCacheError):
    """The Merkle log cannot do what was asked."""


class LogRangeError(LogError):
    """A leaf index or tree size the log does not have (yet)."""


class LogCorruptError(LogError):
    """The log file does not hold the rows its own size implies; it must not be served."""


Subtree = tuple[int, int]
"""A complete subtree: (level, index); it covers leaves [index * 2**level, (index+1) * 2**level)."""


class MerkleLog(ClosesOnExit):
    """An append-only RFC 9162 Merkle log of opaque leaves in a SQLite file.

    `origin` names the log in its checkpoints (a builder's is `builder_origin(its key)`); a
    file created for one origin refuses to be opened as another's.
    """

    def __init__(
        self, path: str | Path, origin: str, *, max_leaf_size: int = MAX_LEAF_SIZE
    ) -> None:
        check_origin(origin)
        self._origin = origin
        self._max_leaf_size = max_leaf_size
        self._lock = threading.Lock()
        self._db = open_durable(path, _SCHEMA)
        self.nodes_read = 0
        """Subtree hashes read from storage since the log was opened (for tests and metrics)."""
        try:
            self._claim_origin(origin)
            self._border = self._load_border()
        except BaseException:
            self._db.close()
            raise

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def size(self) -> int:
        """The number of leaves committed to the file."""
        with self._lock:
            return self._stored_size()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, leaf_data: bytes) -> int:
        """Append one leaf, commit, and return its index. O(log n) hashing, no reads."""
        return self.append_many([leaf_data]).start

    def append_many(self, leaves: Iterable[bytes]) -> range:
        """Append leaves in one transaction (all or none); return their indexes."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._stored_size() != self._border_size():
                    self._border = self._load_border()  # another writer appended
                first = self._border_size()
                leaf_rows: list[tuple[int, bytes, bytes]] = []
                node_rows: list[tuple[int, bytes]] = []
                border = list(self._border)
                size = first
                for data in leaves:
                    self._check_leaf(data, size)
                    digest = leaf_hash(data)
                    leaf_rows.append((size, digest, data))
                    _push(border, size, digest, node_rows)
                    size += 1
                self._db.executemany(
                    "INSERT INTO leaves (idx, hash, data) VALUES (?, ?, ?)", leaf_rows
                )
                self._db.executemany("INSERT INTO nodes (pos, hash) VALUES (?, ?)", node_rows)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._border = self._load_border()
                raise
            self._border = border
            return range(first, size)

    def leaf(self, index: int) -> bytes:
        """The data of leaf `index`."""
        with self._lock:
            row = self._db.execute("SELECT data FROM leaves WHERE idx = ?", (index,)).fetchone()
        if row is None:
            raise LogRangeError(f"log {self._origin} has no leaf {index}")
        return bytes(row[0])

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (default: all). popcount(size) reads."""
        with self._lock:
            size = self._check_size(size)
            if size == 0:
                return EMPTY_ROOT
            subtrees = _decompose(0, size)
            return _fold(subtrees, self._read(subtrees))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The RFC 9162 §2.1.3.1 inclusion proof of leaf `index` in the tree of `size` leaves.

        Requires 0 <= index < size <= self.size. Verify with merkle_proof.verify_inclusion.
        """
        with self._lock:
            size = self._check_size(size)
            if not 0 <= index < size:
                raise LogRangeError(f"leaf {index} is not in the tree of {size} leaves")
            return self._proof(_inclusion_ranges(index, size))

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """The RFC 9162 §2.1.4.1 consistency proof from the tree of `old` leaves to `new`.

        Requires 0 < old <= new <= self.size (the empty tree has no consistency proof; equal
        sizes give the empty proof). Verify with merkle_proof.verify_consistency.
        """
        with self._lock:
            new = self._check_size(new)
            if not 0 < old <= new:
                raise LogRangeError(
                    f"no consistency proof from {old} to {new} leaves (needs 0 < old <= new)"
                )
            return self._proof(_consistency_ranges(old, new))

    def checkpoint(self, signing_key: nacl.signing.SigningKey) -> bytes:
        """A signed checkpoint note of the committed tree, under this log's origin."""
        with self._lock:
            size = self._stored_size()
            subtrees = _decompose(0, size)
            root = _fold(subtrees, self._read(subtrees)) if size else EMPTY_ROOT
        return sign_checkpoint(Checkpoint(self._origin, size, root), signing_key)

    # -- storage ---------------------------------------------------------------------------

    def _claim_origin(self, origin: str) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            rows = dict(self._db.execute("SELECT key, value FROM log_meta").fetchall())
            if not rows:
                self._db.executemany(
                    "INSERT INTO log_meta (key, value) VALUES (?, ?)",
                    [("origin", origin), ("format", FORMAT_VERSION)],
                )
            elif rows.get("origin") != origin:
                raise LogError(f"this log file belongs to {rows.get('origin')!r}, not {origin!r}")
            elif rows.get("format") != FORMAT_VERSION:
                raise LogError(f"log file format {rows.get('format')!r} is not supported")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _stored_size(self) -> int:
        row = self._db.execute("SELECT max(idx) FROM leaves").fetchone()
        return 0 if row[0] is None else row[0] + 1

    def _load_border(self) -> list[tuple[Subtree, bytes]]:
        """The complete subtrees along the right edge (largest first) and a sanity check."""
        size = self._stored_size()
        last = self._db.execute("SELECT max(pos) FROM nodes").fetchone()[0]
        internal = size - size.bit_count()
        expected = internal - 1 if internal else None
        if last != expected:
            raise LogCorruptError(
                f"log {self._origin} has {size} leaves but its last subtree is {last}, "
                f"not {expected}"
            )
        subtrees = _decompose(0, size)
        hashes = self._read(subtrees)
        return list(zip(subtrees, hashes, strict=True))

    def _border_size(self) -> int:
        return sum(1 << level for (level, _), _h in self._border)

    def _check_leaf(self, data: bytes, index: int) -> None:
        if not isinstance(data, bytes | bytearray):
            raise TypeError("a log leaf is bytes")
        if len(data) > self._max_leaf_size:
            raise LogError(f"a log leaf is at most {self._max_leaf_size} bytes, not {len(data)}")
        if index >= MAX_TREE_SIZE:
            raise LogError(f"log {self._origin} is full")

    def _check_size(self, size: int | None) -> int:
        stored = self._stored_size()
        if size is None:
            return stored
        if not 0 <= size <= stored:
            raise LogRangeError(f"log {self._origin} has {stored} leaves, no tree of {size}")
        return size

    def _read(self, subtrees: Sequence[Subtree]) -> list[bytes]:
        """Hashes of complete subtrees, in the order asked: one query per table (leaves, nodes)."""
        leaf_keys = {index for level, index in subtrees if level == 0}
        node_keys = {_position(level, index) for level, index in subtrees if level > 0}
        leaves = self._select("SELECT idx, hash FROM leaves WHERE idx IN", leaf_keys)
        nodes = self._select("SELECT pos, hash FROM nodes WHERE pos IN", node_keys)
        self.nodes_read += len(leaves) + len(nodes)
        try:
            return [
                leaves[index] if level == 0 else nodes[_position(level, index)]
                for level, index in subtrees
            ]
        except KeyError:
            raise LogCorruptError(f"log {self._origin} is missing subtree hashes") from None

    def _select(self, sql: str, keys: set[int]) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        ordered = sorted(keys)
        for i in range(0, len(ordered), _MAX_PARAMETERS):
            batch = ordered[i : i + _MAX_PARAMETERS]
            query = f"{sql} ({','.join('?' * len(batch))})"
            found.update((key, bytes(h)) for key, h in self._db.execute(query, batch))
        return found

    def _proof(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        decomposed = [_decompose(start, end) for start, end in ranges]
        flat = [s for subtrees in decomposed for s in subtrees]
        hashes = iter(self._read(flat))
        return [_fold(subtrees, [next(hashes) for _ in subtrees]) for subtrees in decomposed]


def _push(
    border: list[tuple[Subtree, bytes]], index: int, digest: bytes, rows: list[tuple[int, bytes]]
) -> None:
    """Add leaf `index` to the right border, merging the equal-sized subtrees it completes.

    The subtrees it completes are the next ones in completion order: their keys follow on from
    the number completed before, index - popcount(index).
    """
    level, position = 0, index
    key = index - index.bit_count()
    while border and border[-1][0][0] == level:
        left = border.pop()[1]
        digest = node_hash(left, digest)
        level, position = level + 1, position >> 1
        rows.append((key, digest))
        key += 1
    border.append(((level, position), digest))


def _position(level: int, index: int) -> int:
    """Storage key of a complete subtree of level >= 1: its rank in completion (post-)order."""
    m = (index + 1) << level  # leaves appended when it completed
    return m - m.bit_count() - 1 - ((m & -m).bit_length() - 1 - level)


def _decompose(start: int, end: int) -> list[Subtree]:
    """The complete subtrees covering leaves [start, end), largest first.

    Requires `start` to be aligned to the largest power of two not above end - start, which
    holds for every range an RFC 9162 proof names. MTH of the range is their right fold.
    """
    out = []
    while start < end:
        level = (end - start).bit_length() - 1
        out.append((level, start >> level))
        start += 1 << level
    return out


def _fold(subtrees: Sequence[Subtree], hashes: Sequence[bytes]) -> bytes:
    """MTH of consecutive complete subtrees of decreasing size: node(a, node(b, node(c, ...)))."""
    digest = hashes[-1]
    for h in reversed(hashes[:-1]):
        digest = node_hash(h, digest)
    return digest


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose MTHs form PATH(index, D[size]) (RFC 9162 §2.1.3.1), bottom-up."""
    ranges = []
    start, end = 0, size
    while end - start > 1:
        k = 1 << ((end - start - 1).bit_length() - 1)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def _consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """Leaf ranges whose MTHs form PROOF(old, D[new]) = SUBPROOF(old, D[new], true) (§2.1.4.1)."""
    ranges = []
    start, end, m, whole_old_tree = 0, new, old, True
    while m != end - start:
        k = 1 << ((end - start - 1).bit_length() - 1)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            m -= k
            start += k
            whole_old_tree = False
    if not whole_old_tree:
        ranges.append((start, end))
    ranges.reverse()
    return ranges
