"""Every servable narinfo answer, rendered, in one flat file found through a table in memory.

Why: with a million items and random keys, a narinfo hit read from SQLite (a B-tree descent,
1.6 page reads, the row decoded, the GIL given up and taken back around each step) and then
rendered cost 8.4 µs of the Guix endpoint's 23.5 µs per request; one pread of the rendered
answer, found through an open-addressing table, costs 2.3 µs (2026-11-26, the benchmark's 1M
index, 200,000 random keys, page cache warm).

It is a read cache derived from the index, never the truth, and nothing of it outlives the
process that built it:
- It is built from the index when the node starts, in a worker thread (the endpoint answers
  from SQLite meanwhile), and built again when its table is too full or its file holds more
  replaced answers than live ones.
- Triggers log every change to an item's narinfo columns in `narinfo_changes`, whichever
  process made it (a `p2pcache cache gc` while the node serves, too). The first lookup of each
  event-loop iteration reads that log if `PRAGMA data_version` says another connection
  committed, and drops the changed items, so an answer here is as fresh as one read from the
  index's per-iteration snapshot. A dropped or never-seen item is answered from SQLite and then
  added here (`add`).
- The file is rewritten at every start; an answer is only used after its full hash part, at
  the head of its record, matched the one asked for.

Table: two arrays of a power-of-two number of slots, linear probing. A slot holds a 32-bit tag
of the item's row key (0 empty, 1 deleted) and where its record is (offset << 16 | length). A
record is the 32-byte hash part then the answer; answers over 64 KiB are not kept here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from p2pcache.cache.index import SELECT_ALL_SERVABLE, ServableNarinfo, encoded_row_key, row_key

log = logging.getLogger(__name__)

RENDERED_NARINFOS_FILE = "rendered-narinfos"
"""Its name in the data directory."""
_EMPTY = 0
_DELETED = 1
_HASH_LENGTH = 32
MAX_RECORD = 0xFFFF
MAX_LOAD = 0.75
"""A table with more slots in use (live or deleted) than this is built again, bigger."""
BUILD_LOAD = 0.5
"""The load a table is built for: room for the items added before the next build."""
MAX_SLOTS = 1 << 23
"""The largest table: 96 MiB of memory, for up to 6.3 million items (MAX_LOAD). A bigger
index keeps the items beyond that in SQLite only, answered the slower way."""
_WRITE_BATCH = 1 << 20
MAX_CHANGES_APPLIED = 10_000
"""More changes than this at once (an idle node that baked a lot) are not applied one by one:
the table is dropped and built anew, so that no iteration stalls on them."""
_GARBAGE_FLOOR = 64 << 20
"""A file is written anew once replaced answers fill more than half of it and this much."""


def slot_count(items: int) -> int:
    """The number of slots a table for `items` answers is built with (a power of two)."""
    slots = 1024
    while slots * BUILD_LOAD < items and slots < MAX_SLOTS:
        slots *= 2
    return slots


def _tag(key: int) -> int:
    """32 bits of the row key that the slot index (its low bits) does not use."""
    tag = (key >> 28) & 0xFFFFFFFF
    return tag if tag > _DELETED else tag + 2


@dataclass
class _Table:
    tags: array
    locations: array
    fd: int
    end: int
    """Where the next record is written."""
    used: int = 0
    """Slots not empty (live or deleted)."""
    live: int = 0
    live_bytes: int = 0
    baseline: int = 0
    """The last change-log entry the build had seen."""

    @property
    def mask(self) -> int:
        return len(self.tags) - 1


def _empty_table(slots: int, fd: int) -> _Table:
    return _Table(array("I", bytes(4 * slots)), array("Q", bytes(8 * slots)), fd, 0)


def _find(table: _Table, hash_part: bytes) -> tuple[int, bytes] | None:
    """The slot holding `hash_part` and its record (read whole: on the hit path the record
    is what is wanted), or None."""
    key = encoded_row_key(hash_part)
    tags, mask = table.tags, table.mask
    tag = _tag(key)
    i = key & mask
    while True:
        found = tags[i]
        if found == tag:
            location = table.locations[i]
            record = os.pread(table.fd, location & 0xFFFF, location >> 16)
            if record[:_HASH_LENGTH] == hash_part:
                return i, record
        elif found == _EMPTY:
            return None
        i = (i + 1) & mask


def _place(table: _Table, key: int, length: int) -> None:
    """Put the record of `length` bytes that goes at the file's end in the first free slot of
    its probe sequence (the caller has removed any older record of the same item)."""
    tags, mask = table.tags, table.mask
    i = key & mask
    while tags[i] > _DELETED:
        i = (i + 1) & mask
    if tags[i] == _EMPTY:
        table.used += 1
    tags[i] = _tag(key)
    table.locations[i] = (table.end << 16) | length
    table.end += length
    table.live += 1
    table.live_bytes += length


def _remove(table: _Table, slot: int) -> None:
    table.tags[slot] = _DELETED
    table.live -= 1
    table.live_bytes -= table.locations[slot] & 0xFFFF


class _Closed(Exception):
    """The node stopped during a build: the build is abandoned."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class RenderedNarinfos:
    """Rendered narinfo answers by hash part; see the module docstring."""

    def __init__(
        self,
        path: Path,
        index_path: Path,
        render: Callable[[ServableNarinfo], bytes],
        *,
        on_built: Callable[[RenderedNarinfos], None] | None = None,
        on_change: Callable[[str | None], None] | None = None,
    ) -> None:
        self.path = path
        self.index_path = index_path
        self.render = render
        self.on_built = on_built
        self.on_change = on_change
        """Told each item the change log names (None: every item), for other caches of
        answers (the endpoint's hot narinfos), whichever process made the change."""
        self._table: _Table | None = None
        self._log: sqlite3.Connection | None = None
        self._data_version = -1
        self._seen = 0
        """The last change-log entry applied to the table."""
        self._checked = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._build: asyncio.Task | None = None
        self._build_wanted = False
        self._closed = False
        self.builds = 0

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the first build in the background; lookups answer None until it is done."""
        self._loop = asyncio.get_running_loop()
        self._log = sqlite3.connect(
            f"file:{self.index_path}?mode=ro", uri=True, check_same_thread=False
        )
        self._log.isolation_level = None
        # Changes logged before now concern nothing this process answered.
        last = self._log.execute("SELECT coalesce(max(seq), 0) FROM narinfo_changes")
        self._seen = last.fetchone()[0]
        self.request_build()

    async def close(self) -> None:
        self._closed = True
        if self._build is not None:
            await asyncio.gather(self._build, return_exceptions=True)
        if self._table is not None:
            os.close(self._table.fd)
            self._table = None
        if self._log is not None:
            self._log.close()
            self._log = None
        for leftover in (self.path, self._building_path):
            leftover.unlink(missing_ok=True)

    @property
    def ready(self) -> bool:
        return self._table is not None

    @property
    def items(self) -> int:
        return self._table.live if self._table is not None else 0

    @property
    def file_bytes(self) -> int:
        return self._table.end if self._table is not None else 0

    @property
    def changes_seen(self) -> int:
        """The change-log entries up to here are applied: the node may delete them. 0 while
        a build runs, since the table it builds catches up from where its snapshot began."""
        return self._seen if self._build is None else 0

    # -- lookups (the event loop's thread) ----------------------------------------------------

    def get(self, hash_part: str) -> bytes | None:
        """The rendered answer for `hash_part`, or None (then ask the index, then `add`)."""
        if not self._checked:
            self._check_changes()
        table = self._table
        if table is None:
            return None
        found = _find(table, hash_part.encode())
        return None if found is None else found[1][_HASH_LENGTH:]

    def add(self, hash_part: str, answer: bytes) -> None:
        """Keep an answer just read from the index (which the caller read after this
        iteration's change check, so it is as fresh as the log)."""
        table = self._table
        if table is None or self._build is not None:
            return  # a build is running: its table replaces this one, and catches up by the log
        record = hash_part.encode() + answer
        if len(record) > MAX_RECORD:
            return
        if table.used + 1 > MAX_LOAD * len(table.tags):
            # A build helps if the table may grow, or if deleted slots are a good share of it.
            if len(table.tags) < MAX_SLOTS or table.live < 0.8 * table.used:
                self.request_build()
            return
        found = _find(table, record[:_HASH_LENGTH])
        if found is not None:
            _remove(table, found[0])
        try:
            os.pwrite(table.fd, record, table.end)
        except OSError as e:
            log.warning("could not add to the rendered narinfos (%s); answering from the index", e)
            return
        _place(table, row_key(hash_part), len(record))
        if table.end > max(_GARBAGE_FLOOR, 2 * table.live_bytes):
            self.request_build()  # mostly replaced answers: write the live ones anew

    def drop(self, hash_part: str) -> None:
        """Forget an item now (the node saw it change; the change log would tell soon too)."""
        table = self._table
        if table is not None:
            found = _find(table, hash_part.encode())
            if found is not None:
                _remove(table, found[0])

    def _check_changes(self) -> None:
        """Once per event-loop iteration: drop what other connections changed since."""
        self._checked = True
        assert self._loop is not None
        self._loop.call_soon(self._next_iteration)
        self.apply_changes()

    def apply_changes(self) -> None:
        """Drop the items the change log names since the last call, if anything was
        committed since, and tell `on_change` (the node also calls this when idle, so that
        the log stays short). While a build runs there is no table to drop from, but
        `on_change` still hears of every change; the build catches up from its snapshot."""
        if self._log is None:
            return
        try:
            version = self._log.execute("PRAGMA data_version").fetchone()[0]
            if version == self._data_version:
                return
            rows = self._log.execute(
                "SELECT seq, hash_part FROM narinfo_changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (self._seen, MAX_CHANGES_APPLIED + 1),
            ).fetchall()
            if len(rows) > MAX_CHANGES_APPLIED:
                last = self._log.execute("SELECT coalesce(max(seq), 0) FROM narinfo_changes")
                self._seen = last.fetchone()[0]
        except sqlite3.Error as e:
            # Not knowing what changed, nothing here may be answered from.
            log.warning("could not read the index's change log (%s); rendering from the index", e)
            self._forget_everything()
            return
        self._data_version = version
        if len(rows) > MAX_CHANGES_APPLIED:
            log.info(
                "over %d narinfo changes to apply at once; building the rendered narinfos anew",
                MAX_CHANGES_APPLIED,
            )
            self._forget_everything()
            return
        for seq, hash_part in rows:
            self.drop(hash_part)
            if self.on_change is not None:
                self.on_change(hash_part)
            self._seen = seq

    def _next_iteration(self) -> None:
        self._checked = False

    def _forget_everything(self) -> None:
        """Answer nothing from here until a build has caught up (it starts from the log's
        end as it is then, and applies what follows); `on_change` hears None: everything."""
        if self.on_change is not None:
            self.on_change(None)
        if self._table is not None:
            os.close(self._table.fd)
            self._table = None
        self._data_version = -1
        if self._build is None:
            self.request_build()

    # -- builds (a worker thread) -------------------------------------------------------------

    def request_build(self) -> None:
        """Build the table and file anew in the background (at most one build at a time)."""
        if self._closed or self._loop is None:
            return
        if self._build is not None:
            self._build_wanted = True
            return
        self._build = self._loop.create_task(self._run_build(), name="rendered-narinfos build")

    async def _run_build(self) -> None:
        started = time.monotonic()
        try:
            table = await asyncio.to_thread(self._build_table)
        except _Closed:
            return
        except Exception as e:
            log.warning(
                "could not build the rendered narinfos (%s); narinfos are answered from the "
                "index, which is slower",
                e,
                exc_info=not isinstance(e, OSError | sqlite3.Error),
            )
            return
        finally:
            self._build = None
        if self._closed:
            os.close(table.fd)
            return
        if self._table is not None:
            os.close(self._table.fd)
        self._table = table
        self._seen = table.baseline
        self._data_version = -1  # catch up with the log at the next lookup
        self._checked = False
        self.builds += 1
        log.info(
            "rendered narinfos ready: %d items, %.0f MiB in %s, built in %.1f s",
            table.live,
            table.end / 2**20,
            self.path,
            time.monotonic() - started,
        )
        if self.on_built is not None:
            self.on_built(self)
        if self._build_wanted:
            self._build_wanted = False
            self.request_build()

    @property
    def _building_path(self) -> Path:
        return self.path.with_name(self.path.name + ".new")

    def _build_table(self) -> _Table:
        """Every servable item of the index, rendered into a new file, in one read snapshot
        that also fixes the change-log entry to catch up from."""
        reader = sqlite3.connect(f"file:{self.index_path}?mode=ro", uri=True)
        reader.isolation_level = None
        fd = os.open(self._building_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            reader.execute("BEGIN")
            baseline = reader.execute("SELECT coalesce(max(seq), 0) FROM narinfo_changes")
            baseline = baseline.fetchone()[0]
            items = reader.execute("SELECT items FROM item_totals").fetchone()[0]
            table = _empty_table(slot_count(max(items, self.items)), fd)
            table.baseline = baseline
            pending: list[bytes] = []
            pending_bytes = 0
            full = MAX_LOAD * len(table.tags)
            for n, row in enumerate(reader.execute(SELECT_ALL_SERVABLE)):
                if table.used >= full:
                    break  # more items than counted: the rest are answered from the index
                if n % 4096 == 0 and self._closed:
                    raise _Closed
                item = ServableNarinfo._make(row)
                record = item.hash_part.encode() + self.render(item)
                if len(record) > MAX_RECORD:
                    continue
                _place(table, row_key(item.hash_part), len(record))
                pending.append(record)
                pending_bytes += len(record)
                if pending_bytes >= _WRITE_BATCH:
                    _write_all(fd, b"".join(pending))
                    pending.clear()
                    pending_bytes = 0
            _write_all(fd, b"".join(pending))
            reader.execute("COMMIT")
            os.replace(self._building_path, self.path)
        except BaseException:
            os.close(fd)
            self._building_path.unlink(missing_ok=True)
            raise
        finally:
            reader.close()
        return table
