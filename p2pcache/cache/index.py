"""The cache index: one SQLite file (WAL) holding everything a narinfo and a NAR response need.

Reads on the hit path are synchronous: an indexed sqlite3 lookup costs ~10 µs here, against
~300 µs for a hop through aiosqlite's thread, and the Guix endpoint must answer a hit without a
thread hop. The endpoint's fast path reads through a second connection whose read
transaction spans one event-loop iteration (`narinfo_fields_in_snapshot`), which saves the
per-lookup locking system calls. Writes (and maintenance) go through aiosqlite, so the event
loop never waits for an fsync. WAL lets the synchronous readers see committed rows while the
writer works.

Migrations are numbered, dated and never edited once released: a schema change is a new entry
in MIGRATIONS.

`items` is an ordinary rowid table, not WITHOUT ROWID: its rows carry ~1 KiB of signed
narinfo, and SQLite advises WITHOUT ROWID only for small rows (measured 2026-11-25 with 200k
rows: WITHOUT ROWID 894 MiB and 29 µs a lookup, rowid table 269 MiB and 10 µs). Its rowid is
derived from the hash part (`row_key`: the first 12 nix32 characters, 60 bits), so the hit
path descends one B-tree instead of the hash index and then the table: one page read per
lookup instead of two once the interior pages are cached, which matters when a million items
do not fit in any cache. Two hashes sharing 60 bits (about one chance in 10^6 at 10^6 items)
are handled: the second row gets an ordinary rowid, and a lookup whose row is not the one
asked for falls back to the unique index on the hash.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple, TypeVar

import aiosqlite

from p2pcache.errors import P2PCacheError

T = TypeVar("T")


class CacheIndexError(P2PCacheError):
    """The cache index cannot be opened or is newer than this version of p2pcache."""


class Origin(StrEnum):
    """Where an item came from, which decides what backs it."""

    STORE = "store"
    """The local Guix store: vouched for by the daemon's own record (db NarHash)."""
    PEER = "peer"
    UPSTREAM = "upstream"


class State(StrEnum):
    UNBAKED = "unbaked"
    """Known, not in the cache yet (store items are then served uncompressed from the store)."""
    BAKED = "baked"
    """Its chunked zstd NAR is in the cache, verified."""
    CORRUPT = "corrupt"
    """The store copy did not hash to its NarHash: never served."""


# (version, date, description, SQL). Never edit a released entry; append a new one.
MIGRATIONS: tuple[tuple[int, str, str, str], ...] = (
    (
        1,
        "2026-11-25",
        "items: one row per store item, with its signed narinfo part and chunk table",
        """
        CREATE TABLE items (
            key          INTEGER PRIMARY KEY,
            hash_part    TEXT NOT NULL UNIQUE,
            store_path   TEXT NOT NULL,
            nar_hash     TEXT NOT NULL,
            nar_size     INTEGER NOT NULL,
            refs         TEXT NOT NULL,
            deriver      TEXT,
            origin       TEXT NOT NULL,
            state        TEXT NOT NULL,
            store_id     INTEGER,
            signed_part  BLOB,
            signature    BLOB,
            nar_file     TEXT,
            file_size    INTEGER,
            chunk_table  BLOB,
            chunk_root   BLOB,
            added_at     INTEGER NOT NULL,
            last_access  INTEGER NOT NULL
        );
        CREATE INDEX items_baked_lru ON items (last_access) WHERE nar_file IS NOT NULL;
        CREATE INDEX items_store_id ON items (store_id) WHERE store_id IS NOT NULL;
        CREATE TABLE node_state (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
        """,
    ),
    (
        2,
        "2026-11-25",
        "item_totals: what `stats` reports, kept current by triggers instead of counted",
        # Counting read the whole table: with a million items, 1.3 s of CPU every
        # housekeeping round (15 s) and on every quota check, on the serving machine's cores
        # and holding the writer meanwhile (perf, 2026-11-25).
        """
        CREATE TABLE item_totals (
            id            INTEGER PRIMARY KEY CHECK (id = 1),
            items         INTEGER NOT NULL,
            baked         INTEGER NOT NULL,
            corrupt       INTEGER NOT NULL,
            cached_bytes  INTEGER NOT NULL
        );
        INSERT INTO item_totals
            SELECT 1, count(*), count(nar_file), coalesce(sum(state = 'corrupt'), 0),
                   coalesce(sum(file_size) FILTER (WHERE nar_file IS NOT NULL), 0)
            FROM items;
        CREATE TRIGGER item_totals_insert AFTER INSERT ON items BEGIN
            UPDATE item_totals SET
                items = items + 1,
                baked = baked + (NEW.nar_file IS NOT NULL),
                corrupt = corrupt + (NEW.state = 'corrupt'),
                cached_bytes = cached_bytes
                    + iif(NEW.nar_file IS NOT NULL, coalesce(NEW.file_size, 0), 0);
        END;
        CREATE TRIGGER item_totals_delete AFTER DELETE ON items BEGIN
            UPDATE item_totals SET
                items = items - 1,
                baked = baked - (OLD.nar_file IS NOT NULL),
                corrupt = corrupt - (OLD.state = 'corrupt'),
                cached_bytes = cached_bytes
                    - iif(OLD.nar_file IS NOT NULL, coalesce(OLD.file_size, 0), 0);
        END;
        CREATE TRIGGER item_totals_update AFTER UPDATE OF nar_file, state, file_size ON items
        BEGIN
            UPDATE item_totals SET
                baked = baked + (NEW.nar_file IS NOT NULL) - (OLD.nar_file IS NOT NULL),
                corrupt = corrupt + (NEW.state = 'corrupt') - (OLD.state = 'corrupt'),
                cached_bytes = cached_bytes
                    + iif(NEW.nar_file IS NOT NULL, coalesce(NEW.file_size, 0), 0)
                    - iif(OLD.nar_file IS NOT NULL, coalesce(OLD.file_size, 0), 0);
        END;
        """,
    ),
    (
        3,
        "2026-11-26",
        "narinfo_changes: which items' narinfo columns changed, for the rendered narinfos",
        # Written by triggers, so that a change made by any process (a `cache gc` while the
        # node serves) reaches the node's rendered narinfos; the node deletes what it has
        # applied. AUTOINCREMENT: a seq is never reused once the log is emptied.
        """
        CREATE TABLE narinfo_changes (
            seq        INTEGER PRIMARY KEY AUTOINCREMENT,
            hash_part  TEXT NOT NULL
        );
        CREATE TRIGGER narinfo_changes_update AFTER UPDATE OF
            hash_part, store_path, nar_size, state, signed_part, signature, nar_file, file_size
            ON items
        BEGIN
            INSERT INTO narinfo_changes (hash_part) VALUES (OLD.hash_part);
        END;
        CREATE TRIGGER narinfo_changes_delete AFTER DELETE ON items BEGIN
            INSERT INTO narinfo_changes (hash_part) VALUES (OLD.hash_part);
        END;
        """,
    ),
    (
        4,
        "2026-11-26",
        "items_promises: items found for a miss and not fetched, by age, so that they expire",
        """
        CREATE INDEX items_promises ON items (added_at)
            WHERE nar_file IS NULL AND origin != 'store';
        """,
    ),
)


def sql_statements(script: str) -> list[str]:
    """The statements of a migration script, split where SQLite says one is complete (a
    trigger's body holds semicolons of its own)."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\n;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \t\n;"):
        raise ValueError(f"an incomplete SQL statement ends the script: {pending.strip()!r}")
    return statements


_ITEM_COLUMNS = (
    "hash_part, store_path, nar_hash, nar_size, refs, deriver, origin, state, store_id, "
    "signed_part, signature, nar_file, file_size, chunk_table, chunk_root, last_access"
)


_SELECT_BY_KEY = f"SELECT {_ITEM_COLUMNS} FROM items WHERE key = ?"
_SELECT_BY_HASH = f"SELECT {_ITEM_COLUMNS} FROM items WHERE hash_part = ?"
_NARINFO_COLUMNS = (
    "hash_part, store_path, nar_size, state, nar_file, file_size, signed_part, signature"
)
_SELECT_NARINFO_BY_KEY = f"SELECT {_NARINFO_COLUMNS} FROM items WHERE key = ?"
_SELECT_NARINFO_BY_HASH = f"SELECT {_NARINFO_COLUMNS} FROM items WHERE hash_part = ?"


class NarinfoFields(NamedTuple):
    """What answering a narinfo needs of an item: the row as read, no conversions.

    The Guix endpoint reads this on every narinfo that is not pre-rendered; with a million
    items and random keys that is every request, and building an `IndexedItem` (two enum
    conversions, sixteen frozen fields, the references split) was 4 us of its ~25 us.
    """

    hash_part: str
    store_path: str
    nar_size: int
    state: str
    """A `State` value, as the plain string stored."""
    nar_file: str | None
    file_size: int | None
    signed_part: bytes | None
    signature: bytes | None


_new_narinfo_fields = tuple.__new__  # NarinfoFields from a row without a Python-level __new__


class ServableNarinfo(NamedTuple):
    """A narinfo the fast path can answer at once: a signed item that is not corrupt.

    SQLite picks the row and hands back only what the answer is made of, already joined:
    with a million items and random keys the endpoint reads one of these for nearly every
    request, and eight columns (two of them ~0.5 KiB blobs joined again in Python) cost about
    a microsecond more per request.
    """

    hash_part: str
    signed: bytes
    """The signed part followed by its Signature line."""
    basename: str
    nar_size: int
    zstd_size: int | None
    """FileSize of the cached zstd NAR; None when it is not cached."""


# A basename is what follows the "/" before the hash part (a store directory never holds
# "/<hash>-" of its own items).
_SERVABLE_COLUMNS = (
    "hash_part, CAST(signed_part || signature AS BLOB),"
    " substr(store_path, instr(store_path, '/' || hash_part || '-') + 1), nar_size,"
    " iif(state = 'baked' AND nar_file IS NOT NULL, file_size, NULL)"
)
_SERVABLE = "state != 'corrupt' AND signed_part IS NOT NULL AND signature IS NOT NULL"
_SELECT_SERVABLE_BY_KEY = f"SELECT {_SERVABLE_COLUMNS} FROM items WHERE key = ? AND {_SERVABLE}"
_SELECT_SERVABLE_BY_HASH = (
    f"SELECT {_SERVABLE_COLUMNS} FROM items WHERE hash_part = ? AND {_SERVABLE}"
)
SELECT_ALL_SERVABLE = f"SELECT {_SERVABLE_COLUMNS} FROM items WHERE {_SERVABLE}"
"""Every servable item as ServableNarinfo rows, for building the rendered narinfos."""


@dataclass(frozen=True, slots=True)
class IndexedItem:
    hash_part: str
    store_path: str
    nar_hash: str
    nar_size: int
    references: tuple[str, ...]
    """Basenames, as in a narinfo."""
    deriver: str | None
    """Basename of the .drv, or None."""
    origin: Origin
    state: State
    store_id: int | None
    signed_part: bytes | None
    signature: bytes | None
    """The whole `Signature: ...\\n` line that goes with signed_part."""
    nar_file: str | None
    file_size: int | None
    chunk_table: bytes | None
    chunk_root: bytes | None
    last_access: int

    @property
    def basename(self) -> str:
        return self.store_path.rsplit("/", 1)[-1]

    @property
    def is_baked(self) -> bool:
        return self.state is State.BAKED and self.nar_file is not None


# A bytes table: bytes.translate is twice as fast as str.translate with a mapping, and
# row_key runs on every narinfo read from the index.
_NIX32_TO_BASE32 = bytes.maketrans(
    b"0123456789abcdfghijklmnpqrsvwxyz", b"0123456789abcdefghijklmnopqrstuv"
)


def row_key(hash_part: str) -> int:
    """The rowid an item is stored under: the first 60 bits of its hash part."""
    return encoded_row_key(hash_part.encode())


def encoded_row_key(hash_part: bytes) -> int:
    """`row_key` of a hash part given as ASCII bytes."""
    return int(hash_part[:12].translate(_NIX32_TO_BASE32), 32)


def _item(row: Sequence) -> IndexedItem:
    return IndexedItem(
        hash_part=row[0],
        store_path=row[1],
        nar_hash=row[2],
        nar_size=row[3],
        references=tuple(row[4].split()) if row[4] else (),
        deriver=row[5],
        origin=Origin(row[6]),
        state=State(row[7]),
        store_id=row[8],
        signed_part=row[9],
        signature=row[10],
        nar_file=row[11],
        file_size=row[12],
        chunk_table=row[13],
        chunk_root=row[14],
        last_access=row[15],
    )


@dataclass(frozen=True, slots=True)
class NewItem:
    """What the index needs to know to start answering for an item."""

    hash_part: str
    store_path: str
    nar_hash: str
    nar_size: int
    references: tuple[str, ...]
    deriver: str | None
    origin: Origin
    store_id: int | None = None
    signed_part: bytes | None = None
    signature: bytes | None = None


@dataclass(frozen=True, slots=True)
class IndexStats:
    items: int
    baked: int
    corrupt: int
    cached_bytes: int


class CacheIndex:
    """The SQLite index of a node's cache: synchronous reads, asynchronous writes."""

    def __init__(self, path: Path, *, read_cache_kib: int = 8192) -> None:
        self.path = path
        self._read_cache_kib = read_cache_kib
        self._writer: aiosqlite.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        # A second reader whose read transaction spans the lookups of one event-loop
        # iteration (see servable_narinfo_in_snapshot); None until opened.
        self._snapshot_reader: sqlite3.Connection | None = None
        self._snapshot_open = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # One connection serves every writer coroutine: a transaction must not interleave
        # with another coroutine's statements, so writes take turns.
        self._write_lock = asyncio.Lock()
        self._pending: set[asyncio.Task] = set()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await self._writer.execute("PRAGMA journal_mode=WAL")
            await self._writer.execute("PRAGMA synchronous=NORMAL")
            await self._writer.execute("PRAGMA busy_timeout=10000")
            await self._migrate()
            # The readers live on the event loop's thread; they never write and never wait
            # long (WAL readers do not block on the writer).
            self._reader = self._connect_reader()
            self._snapshot_reader = self._connect_reader()
            self._loop = asyncio.get_running_loop()
        except BaseException:
            # aiosqlite's thread is not a daemon: an unclosed connection would keep the
            # process from exiting.
            await self.close()
            raise

    def _connect_reader(self) -> sqlite3.Connection:
        reader = sqlite3.connect(
            f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        )
        reader.execute(f"PRAGMA cache_size=-{int(self._read_cache_kib)}")
        reader.execute("PRAGMA busy_timeout=1000")
        return reader

    async def close(self) -> None:
        if self._pending:
            # Let transactions whose callers were cancelled finish before the connection goes.
            await asyncio.gather(*self._pending, return_exceptions=True)
        self.end_snapshot()
        for reader in (self._reader, self._snapshot_reader):
            if reader is not None:
                reader.close()
        self._reader = self._snapshot_reader = None
        if self._writer is not None:
            await self._writer.close()
            self._writer = None

    async def __aenter__(self) -> CacheIndex:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _migrate(self) -> None:
        db = self._require_writer()
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, dated TEXT NOT NULL, description TEXT NOT NULL,"
            " applied_at INTEGER NOT NULL)"
        )
        async with db.execute("SELECT max(version) FROM schema_migrations") as cur:
            row = await cur.fetchone()
        current = row[0] or 0
        known = max(m[0] for m in MIGRATIONS)
        if current > known:
            raise CacheIndexError(
                f"the cache index {self.path} has schema version {current}, newer than this "
                f"p2pcache knows ({known}); upgrade p2pcache or use another data directory"
            )
        for version, dated, description, sql in MIGRATIONS:
            if version <= current:
                continue

            async def migrate(
                db: aiosqlite.Connection,
                version=version,
                dated=dated,
                description=description,
                sql=sql,
            ) -> None:
                for statement in sql_statements(sql):
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?, ?)",
                    (version, dated, description, int(time.time())),
                )

            await self._transaction(migrate)

    async def _transaction(self, body: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run `body` on the writer connection inside BEGIN/COMMIT (ROLLBACK on error).

        Transactions take turns (one connection serves every coroutine) and each runs as its
        own shielded task: a caller cancelled halfway (a node stopping) must not leave BEGIN
        executed in aiosqlite's thread without its COMMIT or ROLLBACK, or the next
        transaction fails with "cannot start a transaction within a transaction".
        IMMEDIATE takes the write lock up front, so a transaction never has to upgrade a read
        lock while another process (`p2pcache publish` beside `serve`) writes: that upgrade
        is the one case SQLite's busy timeout cannot wait out.
        """
        db = self._require_writer()

        async def run() -> T:
            async with self._write_lock:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    result = await body(db)
                except BaseException:
                    await db.execute("ROLLBACK")
                    raise
                await db.execute("COMMIT")
                return result

        task = asyncio.get_running_loop().create_task(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return await asyncio.shield(task)

    async def _write(self, sql: str, params: Sequence = ()) -> None:
        async def body(db: aiosqlite.Connection) -> None:
            await db.execute(sql, params)

        await self._transaction(body)

    def _require_writer(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise CacheIndexError("the cache index is not open")
        return self._writer

    def _require_reader(self) -> sqlite3.Connection:
        if self._reader is None:
            raise CacheIndexError("the cache index is not open")
        return self._reader

    # -- synchronous reads (hit path) ---------------------------------------------------------

    def get(self, hash_part: str) -> IndexedItem | None:
        row = self._lookup(_SELECT_BY_KEY, _SELECT_BY_HASH, hash_part)
        return _item(row) if row else None

    def narinfo_fields(self, hash_part: str) -> NarinfoFields | None:
        """The columns a narinfo answer needs (see NarinfoFields), or None if unknown."""
        row = self._lookup(_SELECT_NARINFO_BY_KEY, _SELECT_NARINFO_BY_HASH, hash_part)
        return _new_narinfo_fields(NarinfoFields, row) if row else None

    def servable_narinfo_in_snapshot(self, hash_part: str) -> ServableNarinfo | None:
        """The parts of a signed, not corrupt item's narinfo, read in one snapshot shared by
        the lookups of a loop iteration; None for anything else, which the caller must look
        up the ordinary way (the item may be unknown, unsigned, corrupt, or behind another
        item of the same row key that is one of those).

        In autocommit every lookup is its own read transaction: a WAL read-mark lock and
        unlock (two fcntl) and an fstat around the page reads, three of the five system calls
        of a lookup (2026-11-25, 1M items, random keys under wrk: about 44 requests per loop
        iteration). Here the first lookup of an iteration begins a read transaction and a
        callback ends it once the iteration's callbacks have run, so the rest share its locks.

        The snapshot may miss writes committed during the iteration, so only a positive
        answer that cannot be stale may come from here: the Guix endpoint's fast path uses
        it, and calls `end_snapshot` whenever the node says an item changed (the same hook
        that drops pre-rendered narinfos).
        """
        reader = self._snapshot_reader
        if reader is None:
            raise CacheIndexError("the cache index is not open")
        if not self._snapshot_open:
            reader.execute("BEGIN")
            self._snapshot_open = True
            self._loop.call_soon(self.end_snapshot)  # type: ignore[union-attr]
        row = self._lookup_on(reader, _SELECT_SERVABLE_BY_KEY, _SELECT_SERVABLE_BY_HASH, hash_part)
        return _new_narinfo_fields(ServableNarinfo, row) if row else None

    def end_snapshot(self) -> None:
        """End the shared read snapshot: the next lookup sees every committed write."""
        if self._snapshot_open and self._snapshot_reader is not None:
            self._snapshot_open = False
            self._snapshot_reader.execute("COMMIT")

    def _lookup(self, by_key: str, by_hash: str, hash_part: str) -> tuple | None:
        return self._lookup_on(self._require_reader(), by_key, by_hash, hash_part)

    @staticmethod
    def _lookup_on(
        reader: sqlite3.Connection, by_key: str, by_hash: str, hash_part: str
    ) -> tuple | None:
        """One row by its derived rowid; by the hash index when two hashes share the key.
        Both queries must select hash_part first."""
        row = reader.execute(by_key, (row_key(hash_part),)).fetchone()
        if row is not None and row[0] != hash_part:
            row = reader.execute(by_hash, (hash_part,)).fetchone()
        return row

    def schema_version(self) -> int:
        row = self._require_reader().execute("SELECT max(version) FROM schema_migrations")
        return row.fetchone()[0]

    def get_state(self, key: str) -> object | None:
        row = (
            self._require_reader()
            .execute("SELECT value FROM node_state WHERE key = ?", (key,))
            .fetchone()
        )
        return row[0] if row else None

    # -- asynchronous writes ------------------------------------------------------------------

    async def set_state(self, key: str, value: object) -> None:
        await self._write(
            "INSERT INTO node_state VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = ?",
            (key, value, value),
        )

    async def add_items(self, items: Iterable[NewItem]) -> int:
        """Insert items not yet known (known ones are left alone); returns how many were new."""
        rows = _new_rows(items)
        if not rows:
            return 0
        return await self._transaction(lambda db: _insert_new(db, rows))

    async def add_items_and_read(self, items: Iterable[NewItem]) -> dict[str, IndexedItem]:
        """`add_items`, then each of the items as the index now holds it (new, or known
        before and left alone), by hash part, read in the same transaction.

        For the miss path, which answers from the item it just added: reading it back on the
        event loop after the commit cost more than the insert, since a connection's page
        cache is discarded whenever another connection has committed; here the read runs in
        the writer's thread, one query per 500 items.
        """
        rows = _new_rows(items)
        if not rows:
            return {}

        async def body(db: aiosqlite.Connection) -> list[tuple]:
            await _insert_new(db, rows)
            return await _select_where_hash_in(db, _ITEM_COLUMNS, [r[1] for r in rows])

        return {item.hash_part: item for item in map(_item, await self._transaction(body))}

    async def set_signature(self, hash_part: str, signed_part: bytes, signature: bytes) -> None:
        await self._write(
            "UPDATE items SET signed_part = ?, signature = ? WHERE hash_part = ?",
            (signed_part, signature, hash_part),
        )

    async def mark_baked(
        self, hash_part: str, nar_file: str, file_size: int, chunk_table: bytes, chunk_root: bytes
    ) -> None:
        await self._write(
            "UPDATE items SET state = ?, nar_file = ?, file_size = ?, chunk_table = ?,"
            " chunk_root = ?, last_access = ? WHERE hash_part = ?",
            (
                str(State.BAKED),
                nar_file,
                file_size,
                chunk_table,
                chunk_root,
                int(time.time()),
                hash_part,
            ),
        )

    async def mark_corrupt(self, hash_part: str) -> None:
        await self._write(
            "UPDATE items SET state = ?, nar_file = NULL, file_size = NULL, chunk_table = NULL"
            " WHERE hash_part = ?",
            (str(State.CORRUPT), hash_part),
        )

    async def mark_unbaked(self, hash_part: str) -> None:
        """Forget the cached NAR of an item that stays servable some other way (store items)."""
        await self._write(
            "UPDATE items SET state = ?, nar_file = NULL, file_size = NULL, chunk_table = NULL"
            " WHERE hash_part = ?",
            (str(State.UNBAKED), hash_part),
        )

    async def remove(self, hash_parts: Sequence[str]) -> None:
        async def body(db: aiosqlite.Connection) -> None:
            await db.executemany(
                "DELETE FROM items WHERE hash_part = ?", [(h,) for h in hash_parts]
            )

        await self._transaction(body)

    async def expire_promises(
        self, added_before: int, limit: int, keep: Collection[str] = ()
    ) -> list[str]:
        """Forget up to `limit` items found for a miss (from peers or upstream) before
        `added_before` and never fetched, except those in `keep` (being fetched now);
        returns their hash parts. In one transaction, so an item fetched meanwhile (its NAR
        file recorded) is never forgotten: that would leave its file behind."""

        async def body(db: aiosqlite.Connection) -> list[str]:
            async with db.execute(
                "SELECT hash_part FROM items WHERE nar_file IS NULL AND origin != 'store'"
                " AND added_at < ? ORDER BY added_at LIMIT ?",
                (added_before, limit + len(keep)),
            ) as cur:
                found = [h for (h,) in await cur.fetchall() if h not in keep][:limit]
            await db.executemany("DELETE FROM items WHERE hash_part = ?", [(h,) for h in found])
            return found

        return await self._transaction(body)

    async def unbaked_store_ids(self, after: int, limit: int) -> list[tuple[int, str]]:
        """(store id, hash part) of up to `limit` store items not baked, with store ids above
        `after`, in id order: what is served from the store, and must go when the store
        loses it. Paged, so that a store of a million items is never read into memory whole."""
        async with self._require_writer().execute(
            "SELECT store_id, hash_part FROM items WHERE store_id > ? AND origin = 'store'"
            " AND nar_file IS NULL ORDER BY store_id LIMIT ?",
            (after, limit),
        ) as cur:
            return [(row[0], row[1]) for row in await cur.fetchall()]

    async def touch(self, accessed: dict[str, int]) -> None:
        """Record last-access times (batched by the caller: one write per flush, not per hit)."""
        if not accessed:
            return

        async def body(db: aiosqlite.Connection) -> None:
            await db.executemany(
                "UPDATE items SET last_access = max(last_access, ?) WHERE hash_part = ?",
                [(t, h) for h, t in accessed.items()],
            )

        await self._transaction(body)

    async def prune_narinfo_changes(self, up_to: int) -> None:
        """Delete the change-log entries up to `up_to`, which the rendered narinfos applied."""
        await self._write("DELETE FROM narinfo_changes WHERE seq <= ?", (up_to,))

    # -- maintenance (asynchronous reads on the writer's thread) ------------------------------

    async def stats(self) -> IndexStats:
        """The totals, as the triggers keep them (one row: no thread hop needed)."""
        row = (
            self._require_reader()
            .execute("SELECT items, baked, corrupt, cached_bytes FROM item_totals")
            .fetchone()
        )
        return IndexStats(items=row[0], baked=row[1], corrupt=row[2], cached_bytes=row[3])

    async def least_recently_used(self, limit: int) -> list[IndexedItem]:
        async with self._require_writer().execute(
            f"SELECT {_ITEM_COLUMNS} FROM items WHERE nar_file IS NOT NULL"
            " ORDER BY last_access LIMIT ?",
            (limit,),
        ) as cur:
            return [_item(row) for row in await cur.fetchall()]

    async def unbaked_store_items(self, limit: int, after: str = "") -> list[IndexedItem]:
        async with self._require_writer().execute(
            f"SELECT {_ITEM_COLUMNS} FROM items WHERE origin = 'store' AND state = 'unbaked'"
            " AND hash_part > ? ORDER BY hash_part LIMIT ?",
            (after, limit),
        ) as cur:
            return [_item(row) for row in await cur.fetchall()]

    async def baked_hash_parts(self, after: str = "", limit: int = 10_000) -> list[str]:
        """Hash parts of cached items, in order, a page at a time (for announcing them)."""
        async with self._require_writer().execute(
            "SELECT hash_part FROM items WHERE nar_file IS NOT NULL AND hash_part > ?"
            " ORDER BY hash_part LIMIT ?",
            (after, limit),
        ) as cur:
            return [row[0] for row in await cur.fetchall()]

    async def baked_files(self) -> set[str]:
        async with self._require_writer().execute(
            "SELECT nar_file FROM items WHERE nar_file IS NOT NULL"
        ) as cur:
            return {row[0] for row in await cur.fetchall()}


def _new_rows(items: Iterable[NewItem]) -> list[tuple]:
    """The `items` table rows of new items (state unbaked, added and accessed now)."""
    now = int(time.time())
    return [
        (
            row_key(i.hash_part),
            i.hash_part,
            i.store_path,
            i.nar_hash,
            i.nar_size,
            " ".join(i.references),
            i.deriver,
            str(i.origin),
            str(State.UNBAKED),
            i.store_id,
            i.signed_part,
            i.signature,
            now,
            now,
        )
        for i in items
    ]


_INSERT_NEW = (
    "INSERT OR IGNORE INTO items (key, hash_part, store_path, nar_hash, nar_size, refs,"
    " deriver, origin, state, store_id, signed_part, signature, added_at,"
    " last_access) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


async def _insert_new(db: aiosqlite.Connection, rows: list[tuple]) -> int:
    """Insert `rows` not yet known, inside a transaction; returns how many were new."""
    # rowcount, not total_changes: the latter counts the triggers' updates too.
    added = (await db.executemany(_INSERT_NEW, rows)).rowcount
    if added < len(rows):
        # Some rows were ignored: already known, or their key is taken by another hash with
        # the same first 60 bits. The latter get an ordinary rowid.
        known = {r[0] for r in await _select_where_hash_in(db, "hash_part", [r[1] for r in rows])}
        colliding = [(None, *r[1:]) for r in rows if r[1] not in known]
        if colliding:
            added += (await db.executemany(_INSERT_NEW, colliding)).rowcount
    return added


async def _select_where_hash_in(
    db: aiosqlite.Connection, columns: str, hashes: list[str]
) -> list[tuple]:
    """The rows of the items with these hash parts, 500 hashes a query."""
    found: list[tuple] = []
    for start in range(0, len(hashes), 500):
        part = hashes[start : start + 500]
        marks = ",".join("?" * len(part))
        async with db.execute(
            f"SELECT {columns} FROM items WHERE hash_part IN ({marks})", part
        ) as cur:
            found.extend(tuple(row) for row in await cur.fetchall())
    return found
