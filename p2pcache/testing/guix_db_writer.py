"""Writing a store database the way guix-daemon does, for tests (the daemon's side of the db).

`GUIX_SCHEMA` is Guix's `nix/libstore/schema.sql` (store schema version 7, the only one Guix
has used): the same tables, columns, indexes and trigger. Like the daemon (`LocalStore::openDB`)
the writer enables foreign keys, puts the database in WAL mode and registers an item's row,
then its references (self-references included), then, for a `.drv`, its outputs.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

GUIX_SCHEMA_VERSION = 7

GUIX_SCHEMA = """\
create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer
);

create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);

create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);

-- Paths can refer to themselves, causing a tuple (N, N) in the Refs
-- table.  This causes a deletion of the corresponding row in
-- ValidPaths to cause a foreign key constraint violation (due to `on
-- delete restrict' on the `reference' column).  Therefore, explicitly
-- get rid of self-references.
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;

create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);

create index if not exists IndexDerivationOutputs on DerivationOutputs(path);

create table if not exists FailedPaths (
    path text primary key not null,
    time integer not null
);
"""


def create_store_database(db_path: Path) -> None:
    """Create an empty store database (and the `schema` file beside it), as a new daemon does."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    (db_path.parent / "schema").write_text(str(GUIX_SCHEMA_VERSION))
    with open_for_writing(db_path, create=True) as conn:
        for statement in _statements(GUIX_SCHEMA):
            conn.execute(statement)


def _statements(script: str) -> list[str]:
    """Split a schema into statements (executescript would commit our transaction)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements


@contextmanager
def open_for_writing(db_path: Path, *, create: bool = False) -> Iterator[sqlite3.Connection]:
    """A read-write connection set up as the daemon sets up its own; commits on success."""
    mode = "rwc" if create else "rw"
    uri = f"file:{urllib.parse.quote(str(db_path))}?mode={mode}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        conn.execute("pragma foreign_keys = 1")
        conn.execute("pragma journal_mode = wal")
        conn.execute("pragma wal_autocheckpoint = 40000")
        conn.execute("begin")
        yield conn
        conn.execute("commit")
    except BaseException:
        if conn.in_transaction:
            conn.execute("rollback")
        raise
    finally:
        conn.close()


def register_valid_path(
    conn: sqlite3.Connection,
    *,
    path: str,
    nar_sha256: bytes,
    nar_size: int,
    registration_time: int,
    deriver: str | None,
    references: tuple[str, ...],
) -> int:
    """Insert a ValidPaths row and its Refs; returns the new row id.

    References are full store paths, all already registered except possibly `path` itself.
    """
    cursor = conn.execute(
        "insert into ValidPaths (path, hash, registrationTime, deriver, narSize)"
        " values (?, ?, ?, ?, ?)",
        (path, "sha256:" + nar_sha256.hex(), registration_time, deriver, nar_size),
    )
    row_id = cursor.lastrowid
    assert row_id is not None
    for ref in references:
        conn.execute(
            "insert or replace into Refs (referrer, reference)"
            " select ?, id from ValidPaths where path = ?",
            (row_id, ref),
        )
        if conn.execute("select changes()").fetchone()[0] != 1:
            raise ValueError(f"{path} refers to {ref}, which is not registered")
    return row_id


def register_derivation_outputs(
    conn: sqlite3.Connection, drv_id: int, outputs: Mapping[str, str]
) -> None:
    """Record which outputs a `.drv` produces (done when the `.drv` is registered)."""
    conn.executemany(
        "insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?)",
        [(drv_id, name, path) for name, path in sorted(outputs.items())],
    )
