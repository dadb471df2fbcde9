"""Reading the Guix store database (`/var/guix/db/db.sqlite`) without disturbing guix-daemon.

Spec section 9 describes the tables. Why this module reads them the way it does:

* The database is opened with the URI `file:<db>?mode=ro` and nothing else: never read-write
  (a reader has no business holding write locks on the daemon's database, nor creating it), and
  never `immutable=1`, which tells SQLite the file cannot change and so lets it skip locking and
  read pages the daemon is rewriting.
* The daemon keeps the database in WAL mode, where even a reader needs the `-shm` index file.
  When the daemon is not running that file may not exist, and a reader that cannot create it in
  the database's directory fails with "attempt to write a readonly database" (or "unable to
  open database file"). We retry a few times, because the daemon may be starting, and then say
  what is going on. We never open read-write to get around it.
* Every read is a short read transaction, and none is held while the caller works on a batch:
  an open read transaction pins the WAL, so the daemon's checkpoints could not finish and the
  WAL would grow for as long as a publisher is busy. A batch of rows and its references are read
  in one transaction, so an item that the garbage collector deletes in between cannot come back
  with an empty reference list.
* Rows are parsed by pure functions. A row that does not parse (a hash that is not
  `sha256:<64 hex>`, a path outside the store directory, a reference to a missing row) is skipped
  with a warning: one odd row must not stop a node from publishing the rest of the store.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite

from p2pcache.errors import P2PCacheError, StorePathError
from p2pcache.guix.store_path import (
    DEFAULT_STORE_DIR,
    check_hash_part,
    check_store_dir,
    parse_store_path,
)

log = logging.getLogger(__name__)

DEFAULT_DB_PATH = Path("/var/guix/db/db.sqlite")

# How often and how far apart `open()` tries again when the database cannot be opened
# read-only because its WAL index is missing (the daemon is not running, or is just starting).
# Five tries a second apart ride out a daemon start without making a misconfiguration slow.
DEFAULT_OPEN_ATTEMPTS = 5
DEFAULT_RETRY_DELAY = 1.0

# How long one statement waits for a lock (seconds). Readers in WAL mode only wait while the
# daemon recovers or checkpoints the WAL, which takes milliseconds; a minute means something is
# wrong, and the caller should hear about it rather than hang.
BUSY_TIMEOUT = 60.0

# Rows read per batch at most: one batch is held in memory and read in one transaction.
MAX_BATCH = 10_000

_HEX_HASH = re.compile(r"sha256:([0-9a-fA-F]{64})")
_COLUMNS = "id, path, hash, registrationTime, deriver, narSize"


class StoreDatabaseError(P2PCacheError):
    """The Guix store database cannot be read (missing, not readable, or not a store database)."""


class StoreDatabaseNotFound(StoreDatabaseError):
    """There is no file where the Guix store database should be."""


class StoreDatabaseRowError(StoreDatabaseError):
    """One row of the store database is malformed; the reader skips it."""


@dataclass(frozen=True, slots=True)
class StoreItemInfo:
    """One valid store item as the daemon recorded it.

    `references` are full store paths, sorted, including the item itself when it refers to
    itself (as in the `Refs` table and in a narinfo). `nar_size` is None only on very old rows
    that never recorded it. `deriver` is the full path of the `.drv`, or None.
    """

    id: int
    path: str
    nar_sha256: bytes
    nar_size: int | None
    references: tuple[str, ...]
    deriver: str | None
    registration_time: int


def parse_db_hash(value: object) -> bytes:
    """Decode a `ValidPaths.hash` value, `sha256:<64 hex digits>`, into its 32-byte digest.

    The daemon writes base16 here (not nix32 as in a narinfo). Raises StoreDatabaseRowError.
    """
    if not isinstance(value, str) or not (match := _HEX_HASH.fullmatch(value)):
        raise StoreDatabaseRowError(f"hash {str(value)[:80]!r} is not of the form sha256:<64 hex>")
    return bytes.fromhex(match.group(1))


def parse_valid_path_row(
    row: Sequence[Any],
    references: Iterable[str | None],
    store_dir: str = DEFAULT_STORE_DIR,
) -> StoreItemInfo:
    """Turn a `ValidPaths` row and its reference paths into a StoreItemInfo.

    `row` is (id, path, hash, registrationTime, deriver, narSize); `references` are the paths of
    its `Refs` targets, None for a target id with no ValidPaths row. Raises StoreDatabaseRowError
    naming what is wrong. An empty or malformed deriver becomes None (it is informational only,
    so it does not cost the item).
    """
    row_id, path, db_hash, registration_time, deriver, nar_size = row
    if not isinstance(row_id, int):
        raise StoreDatabaseRowError(f"row id {row_id!r} is not an integer")
    if not isinstance(path, str):
        raise StoreDatabaseRowError(f"row {row_id}: path {path!r} is not text")
    try:
        parse_store_path(path, store_dir)
    except StorePathError as e:
        raise StoreDatabaseRowError(f"row {row_id}: {e}") from None
    try:
        nar_sha256 = parse_db_hash(db_hash)
    except StoreDatabaseRowError as e:
        raise StoreDatabaseRowError(f"row {row_id} ({path}): {e}") from None
    if not isinstance(registration_time, int):
        raise StoreDatabaseRowError(
            f"row {row_id} ({path}): registrationTime {registration_time!r} is not an integer"
        )
    if nar_size is not None and (not isinstance(nar_size, int) or nar_size < 0):
        raise StoreDatabaseRowError(f"row {row_id} ({path}): narSize {nar_size!r} is not a size")
    refs = []
    for ref in references:
        if ref is None:
            raise StoreDatabaseRowError(
                f"row {row_id} ({path}) has a reference to a row that does not exist"
            )
        try:
            parse_store_path(ref, store_dir)
        except StorePathError as e:
            raise StoreDatabaseRowError(f"row {row_id} ({path}): reference {e}") from None
        refs.append(ref)
    return StoreItemInfo(
        id=row_id,
        path=path,
        nar_sha256=nar_sha256,
        nar_size=nar_size,
        references=tuple(sorted(set(refs))),
        deriver=_parse_deriver(row_id, path, deriver, store_dir),
        registration_time=registration_time,
    )


def _parse_deriver(row_id: int, path: str, deriver: object, store_dir: str) -> str | None:
    if deriver is None or deriver == "":
        return None
    try:
        if not isinstance(deriver, str):
            raise StorePathError(f"{deriver!r} is not text")
        parse_store_path(deriver, store_dir)
    except StorePathError as e:
        log.warning("store database row %d (%s): ignoring its deriver: %s", row_id, path, e)
        return None
    return deriver


def hash_part_range(hash_part: str, store_dir: str = DEFAULT_STORE_DIR) -> tuple[str, str]:
    """The half-open range [low, high) of paths whose hash part is `hash_part`.

    `<store>/<hash>-` up to `<store>/<hash>.`: `.` is the byte after `-`, so the range holds
    exactly the paths starting with `<store>/<hash>-`, and SQLite answers it from the unique
    index on `path` (a LIKE would scan the table). Raises StorePathError for a bad hash part.
    """
    check_hash_part(hash_part)
    prefix = f"{store_dir}/{hash_part}"
    return prefix + "-", prefix + "."


def _open_failure_kind(exc: sqlite3.Error) -> str | None:
    """Which transient failure `exc` is: "wal-index", "cannot-open", "locked", or None."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    message = str(exc).lower()
    if name.startswith("SQLITE_READONLY") or "readonly database" in message:
        return "wal-index"
    if name.startswith("SQLITE_CANTOPEN") or "unable to open database" in message:
        return "cannot-open"
    if name.startswith("SQLITE_BUSY") or "database is locked" in message:
        return "locked"
    return None


def open_failure_is_transient(exc: sqlite3.Error) -> bool:
    """True when opening failed in a way that may clear up by itself, so is worth a retry.

    Without a running daemon there may be no `-shm` (WAL index) file, and a reader that cannot
    create one fails with "attempt to write a readonly database" (SQLITE_READONLY_DIRECTORY and
    friends) or "unable to open database file" (SQLITE_CANTOPEN); both clear up once the daemon
    starts. A lock ("database is locked") clears up once the daemon is done recovering the
    WAL. Anything else (not a database, no such table) will not.
    """
    return _open_failure_kind(exc) is not None


def describe_open_failure(db_path: Path, exc: sqlite3.Error) -> str:
    """A sentence telling the user why the database could not be opened and what to do."""
    kind = _open_failure_kind(exc)
    never = "(p2pcache never opens the store database read-write.)"
    wal_index = (
        f"it is in WAL mode and its index file {db_path.name}-shm does not exist and cannot be "
        f"created in {db_path.parent}, which happens when guix-daemon is not running"
    )
    if kind == "wal-index":
        return (
            f"cannot read the Guix store database {db_path} read-only ({exc}): {wal_index}. "
            f"Start guix-daemon, or run p2pcache as a user who may write {db_path.parent}. {never}"
        )
    if kind == "cannot-open":
        return (
            f"cannot open the Guix store database {db_path} read-only ({exc}): either this user "
            f"may not read it, or {wal_index}. Start guix-daemon, or run p2pcache as a user who "
            f"may read {db_path} and write {db_path.parent}. {never}"
        )
    if kind == "locked":
        return (
            f"the Guix store database {db_path} stayed locked ({exc}); guix-daemon may be "
            "recovering it after a crash. Try again in a moment."
        )
    return (
        f"{db_path} is not a readable Guix store database ({exc}); check the path given as the "
        "store database"
    )


# Conditions on ValidPaths that select one item; both are answered from the index on `path`.
BY_PATH = "path = ?"
BY_HASH_PART = "path >= ? AND path < ? ORDER BY path"


def item_queries(where: str) -> tuple[str, str]:
    """The SQL for one item selected by `where`: its ValidPaths row, and its references.

    A reference whose target row is missing comes back with a NULL path (LEFT JOIN), so that the
    item is reported as malformed rather than published with a reference missing.
    """
    return (
        f"SELECT {_COLUMNS} FROM ValidPaths WHERE {where} LIMIT 1",
        "SELECT r.referrer, v.path FROM Refs r LEFT JOIN ValidPaths v ON v.id = r.reference"
        f" WHERE r.referrer = (SELECT id FROM ValidPaths WHERE {where} LIMIT 1)",
    )


class GuixStoreDatabase:
    """Read-only access to a Guix store database, safe beside a running guix-daemon.

    Use as `async with GuixStoreDatabase(path) as db:` or call `open()` and `close()`. The
    logical store directory (default /gnu/store) is what paths in the database start with;
    rows outside it are skipped. All methods raise StoreDatabaseError when the database cannot
    be read.
    """

    def __init__(
        self,
        db_path: str | Path = DEFAULT_DB_PATH,
        *,
        store_dir: str = DEFAULT_STORE_DIR,
        open_attempts: int = DEFAULT_OPEN_ATTEMPTS,
        retry_delay: float = DEFAULT_RETRY_DELAY,
    ) -> None:
        if open_attempts < 1:
            raise ValueError("open_attempts must be at least 1")
        check_store_dir(store_dir)
        self.db_path = Path(db_path)
        self.store_dir = store_dir
        self._open_attempts = open_attempts
        self._retry_delay = retry_delay
        self._conn: aiosqlite.Connection | None = None
        # One read transaction at a time on the one connection (BEGIN cannot nest).
        self._lock = asyncio.Lock()
        # Row ids already warned about, so a poller does not repeat the warning every round.
        self._warned: set[int] = set()

    @property
    def uri(self) -> str:
        """The SQLite URI this reader opens: read-only, never immutable."""
        return f"file:{urllib.parse.quote(str(self.db_path.absolute()))}?mode=ro"

    async def open(self) -> None:
        """Open the database read-only and check it looks like a Guix store database.

        Retries up to `open_attempts` times while the WAL index cannot be created; raises
        StoreDatabaseNotFound when there is no database file, StoreDatabaseError otherwise.
        """
        if self._conn is not None:
            return
        for attempt in range(1, self._open_attempts + 1):
            if not self.db_path.is_file():
                raise StoreDatabaseNotFound(
                    f"the Guix store database {self.db_path} does not exist (is Guix installed, "
                    "and is store.db the right path?)"
                )
            try:
                self._conn = await self._connect()
                return
            except sqlite3.Error as e:
                if not open_failure_is_transient(e):
                    raise StoreDatabaseError(describe_open_failure(self.db_path, e)) from e
                if attempt == self._open_attempts:
                    raise StoreDatabaseError(describe_open_failure(self.db_path, e)) from e
                log.warning(
                    "cannot open the Guix store database %s read-only yet (%s); "
                    "trying again in %.1f s (attempt %d of %d)",
                    self.db_path,
                    e,
                    self._retry_delay,
                    attempt,
                    self._open_attempts,
                )
                await asyncio.sleep(self._retry_delay)

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: no implicit transactions; reads take explicit, short ones.
        conn = await aiosqlite.connect(
            self.uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None
        )
        try:
            # SQLite opens lazily: these statements are what actually touch the file and the
            # WAL index, and check the tables and columns we read are there.
            await conn.execute("PRAGMA query_only = ON")
            await (await conn.execute(f"SELECT {_COLUMNS} FROM ValidPaths LIMIT 0")).close()
            await (await conn.execute("SELECT referrer, reference FROM Refs LIMIT 0")).close()
            await (
                await conn.execute("SELECT drv, id, path FROM DerivationOutputs LIMIT 0")
            ).close()
        except BaseException:
            await conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Close the connection; the object can be opened again."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def __aenter__(self) -> GuixStoreDatabase:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _read(self, queries: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        """Run `queries` in one short read transaction; return each one's rows."""
        if self._conn is None:
            raise StoreDatabaseError(f"the Guix store database {self.db_path} is not open")
        conn = self._conn
        async with self._lock:
            try:
                await conn.execute("BEGIN")
                try:
                    results = []
                    for sql, params in queries:
                        async with conn.execute(sql, params) as cursor:
                            results.append(list(await cursor.fetchall()))
                finally:
                    await conn.execute("COMMIT")
            except sqlite3.Error as e:
                raise StoreDatabaseError(
                    f"reading the Guix store database {self.db_path} failed: {e}"
                ) from e
        return results

    def _parse_rows(
        self, rows: Iterable[Sequence[Any]], refs: Iterable[Sequence[Any]]
    ) -> list[StoreItemInfo]:
        """Parse `ValidPaths` rows with their `(referrer, path)` reference rows; skip bad rows."""
        refs_by_id: dict[int, list[str | None]] = {}
        for referrer, ref_path in refs:
            refs_by_id.setdefault(referrer, []).append(ref_path)
        items = []
        for row in rows:
            try:
                items.append(parse_valid_path_row(row, refs_by_id.get(row[0], ()), self.store_dir))
            except StoreDatabaseRowError as e:
                if row[0] not in self._warned:
                    self._warned.add(row[0])
                    log.warning("skipping a malformed row of the Guix store database: %s", e)
        return items

    async def iter_valid_paths(
        self, after_id: int = 0, batch: int = 1000
    ) -> AsyncIterator[list[StoreItemInfo]]:
        """Yield the valid items with `id > after_id`, in id order, `batch` rows at a time.

        New items get larger ids, so a publisher that remembers the last id it saw can poll for
        new items cheaply. Each batch is read in its own transaction (with one query for all the
        batch's references); nothing is held open while the caller works on a batch. Batches
        whose rows are all malformed are not yielded.
        """
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be between 1 and {MAX_BATCH}")
        last = after_id
        while True:
            rows, refs = await self._read(
                [
                    (
                        f"SELECT {_COLUMNS} FROM ValidPaths WHERE id > ? ORDER BY id LIMIT ?",
                        (last, batch),
                    ),
                    # The batch is every row with last < id <= its largest id, so this range
                    # selects exactly the batch's references, from the Refs primary key.
                    (
                        "SELECT r.referrer, v.path FROM Refs r"
                        " LEFT JOIN ValidPaths v ON v.id = r.reference"
                        " WHERE r.referrer > ? AND r.referrer <= ("
                        "  SELECT max(id) FROM (SELECT id FROM ValidPaths"
                        "   WHERE id > ? ORDER BY id LIMIT ?))",
                        (last, last, batch),
                    ),
                ]
            )
            if not rows:
                return
            last = rows[-1][0]
            items = self._parse_rows(rows, refs)
            if items:
                yield items
            if len(rows) < batch:
                return

    async def _one(self, where: str, params: Sequence[Any]) -> StoreItemInfo | None:
        """The first item matching `where` (on ValidPaths), with its references."""
        item_sql, refs_sql = item_queries(where)
        rows, refs = await self._read([(item_sql, params), (refs_sql, params)])
        items = self._parse_rows(rows, refs)
        return items[0] if items else None

    async def get(self, path: str) -> StoreItemInfo | None:
        """The item at full store path `path`, or None when it is not valid (or malformed)."""
        return await self._one(BY_PATH, (path,))

    async def find_by_hash_part(self, hash_part: str) -> StoreItemInfo | None:
        """The item whose store path has hash part `hash_part` (what a narinfo URL names).

        Raises StorePathError when `hash_part` is not 32 nix-base32 characters.
        """
        low, high = hash_part_range(hash_part, self.store_dir)
        return await self._one(BY_HASH_PART, (low, high))

    async def max_id(self) -> int:
        """The largest row id, 0 for an empty database: where a poller can start from."""
        ((value,),) = (await self._read([("SELECT max(id) FROM ValidPaths", ())]))[0]
        return value or 0

    async def valid_ids(self, low: int, high: int) -> set[int]:
        """The row ids of ValidPaths from `low` to `high`, both included: how a publisher
        notices rows that `guix gc` deleted, a page of ids at a time."""
        (rows,) = await self._read(
            [("SELECT id FROM ValidPaths WHERE id BETWEEN ? AND ?", (low, high))]
        )
        return {row_id for (row_id,) in rows}

    async def count(self) -> int:
        """How many rows ValidPaths has (malformed ones included)."""
        ((value,),) = (await self._read([("SELECT count(*) FROM ValidPaths", ())]))[0]
        return value

    async def derivation_outputs(self, drv_path: str) -> dict[str, str]:
        """Output name -> output path of the derivation `drv_path` ({} when it is unknown).

        The outputs are listed whether or not they have been built (are valid). Outputs whose
        path is not a store path are left out with a warning.
        """
        (rows,) = await self._read(
            [
                (
                    "SELECT d.id, d.path FROM DerivationOutputs d"
                    " JOIN ValidPaths v ON v.id = d.drv WHERE v.path = ? ORDER BY d.id",
                    (drv_path,),
                )
            ]
        )
        outputs = {}
        for name, path in rows:
            try:
                if not isinstance(name, str) or not isinstance(path, str):
                    raise StorePathError(f"output {name!r} -> {path!r} is not text")
                parse_store_path(path, self.store_dir)
            except StorePathError as e:
                log.warning("derivation %s: skipping a malformed output: %s", drv_path, e)
                continue
            outputs[name] = path
        return outputs

    async def valid_derivers(self, path: str) -> list[str]:
        """The valid `.drv` paths that name `path` as an output (Guix's `valid-derivers`).

        Usually one; several when different derivations give the same output path (the
        deriver a row records is only one of them). Read from DerivationOutputs' index on path.
        """
        (rows,) = await self._read(
            [
                (
                    "SELECT DISTINCT v.path FROM DerivationOutputs d"
                    " JOIN ValidPaths v ON v.id = d.drv WHERE d.path = ? ORDER BY v.path",
                    (path,),
                )
            ]
        )
        derivers = []
        for (drv,) in rows:
            try:
                if not isinstance(drv, str) or not drv.endswith(".drv"):
                    raise StorePathError(f"{drv!r} is not a .drv path")
                parse_store_path(drv, self.store_dir)
            except StorePathError as e:
                log.warning("%s: skipping a malformed deriver: %s", path, e)
                continue
            derivers.append(drv)
        return derivers
