"""The SQLite set-up the trust stores share: durable WAL files, explicit write transactions.

A builder must never sign a checkpoint over entries it could lose, and a verifier must never
forget a checkpoint it accepted (protocol/attestation.md §3, §7), so these files are opened in
WAL mode with synchronous=FULL: a committed transaction survives a power cut.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType


def open_durable(path: str | Path, schema: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, synchronous=FULL,
    with `schema` (idempotent `CREATE ... IF NOT EXISTS` statements) applied."""
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE (the write lock at once, so no reader turns writer and deadlocks),
    COMMIT on success, ROLLBACK on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class ClosesOnExit:
    """`with thing:` closes it on the way out; subclasses define `close()`."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
