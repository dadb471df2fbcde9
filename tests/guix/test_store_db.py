"""Reading the Guix store database read-only: every item, paging, lookups, a daemon writing at
the same time, a database that cannot be opened, malformed rows; and Nix's view of the same.

Interop (Nix, Debian `nix-bin` 2.8, as root without a daemon). Nix writes a real daemon
database for a /gnu/store layout kept elsewhere on disk with

    NIX_CONF_DIR=DIR/conf HOME=DIR/home XDG_CACHE_HOME=DIR/home/.cache \\
    nix-store --store 'local?store=/gnu/store&real=DIR/store&state=DIR/state' \\
              --option build-users-group '' --add FILE...

(the empty NIX_CONF_DIR and HOME keep the machine's configuration and caches out of it;
`build-users-group ''` stops Nix from chown'ing DIR/store to the nixbld group). Text items with
references, `.drv` files included, go in through the evaluator, in the same store:

    nix-instantiate --store '...' --option build-users-group '' --eval --read-write-mode \\
        -E 'builtins.toFile NAME (builtins.appendContext (builtins.readFile FILE)
                                   { "/gnu/store/...-ref" = { path = true; }; })'

Nix refuses to register a `.drv` whose output paths are not the ones computed from it, so this
also checks the generator's output paths. With `state=DIR/state` holding a copy of a generated
database, `nix-store --verify --check-contents` rehashes every item against it (upgrading the
copy from Guix's schema 7 to Nix's 10 first) and `nix-store --dump-db` prints Nix's reading of
every row.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from p2pcache.errors import StorePathError
from p2pcache.guix.nar import dump_nar
from p2pcache.guix.store_db import (
    BY_HASH_PART,
    GuixStoreDatabase,
    StoreDatabaseError,
    StoreDatabaseNotFound,
    StoreDatabaseRowError,
    StoreItemInfo,
    describe_open_failure,
    hash_part_range,
    item_queries,
    open_failure_is_transient,
    parse_db_hash,
    parse_valid_path_row,
)
from p2pcache.guix.store_path import parse_store_path
from p2pcache.testing import add_items, generate_test_store, remove_test_store
from p2pcache.testing.file_tree import remove_read_only_tree
from tests.conftest import require_binary

HASH = "sjbf4zs2wsf2brfdyqzmdpvps50lh6mn"
DIGEST = bytes(range(32))


async def read_all(db: GuixStoreDatabase, **kwargs) -> list[StoreItemInfo]:
    return [item async for batch in db.iter_valid_paths(**kwargs) for item in batch]


def writer(db_path: Path) -> sqlite3.Connection:
    """A read-write connection, as the daemon has (foreign keys off to plant broken rows)."""
    return sqlite3.connect(db_path, isolation_level=None)


# -- reading a generated store ---------------------------------------------------------------


async def test_reads_back_every_item_the_generator_registered(test_store):
    async with GuixStoreDatabase(test_store.db_path) as db:
        assert await read_all(db) == test_store.items
        assert await db.count() == len(test_store.items)
        assert await db.max_id() == test_store.items[-1].id
        ids = [i.id for i in test_store.items]
        assert await db.valid_ids(0, ids[-1]) == set(ids)
        assert await db.valid_ids(ids[10], ids[19]) == set(ids[10:20])
        assert await db.valid_ids(ids[-1] + 1, ids[-1] + 100) == set()


async def test_pages_in_id_order_from_any_id(test_store):
    async with GuixStoreDatabase(test_store.db_path) as db:
        batches = [batch async for batch in db.iter_valid_paths(batch=7)]
        assert [len(b) for b in batches] == [7] * 42 + [6]
        assert [i for b in batches for i in b] == test_store.items
        after = test_store.items[99].id
        assert await read_all(db, after_id=after, batch=1000) == test_store.items[100:]
        assert await read_all(db, after_id=await db.max_id()) == []
        with pytest.raises(ValueError):
            await read_all(db, batch=0)


async def test_gets_items_by_path_and_by_hash_part(test_store):
    async with GuixStoreDatabase(test_store.db_path) as db:
        for item in test_store.items:
            assert await db.get(item.path) == item
            assert await db.find_by_hash_part(parse_store_path(item.path).hash_part) == item
        assert await db.get(f"/gnu/store/{HASH}-missing") is None
        assert await db.find_by_hash_part(HASH) is None
        with pytest.raises(StorePathError):
            await db.find_by_hash_part("not-a-hash")


def test_hash_part_lookup_is_a_range_on_the_path_index(test_store):
    low, high = hash_part_range(HASH)
    assert (low, high) == (f"/gnu/store/{HASH}-", f"/gnu/store/{HASH}.")
    conn = sqlite3.connect(f"file:{test_store.db_path}?mode=ro", uri=True)
    try:
        for sql in item_queries(BY_HASH_PART):
            plan = " ".join(r[-1] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (low, high)))
            assert "INDEX sqlite_autoindex_ValidPaths_1 (path>? AND path<?)" in plan, plan
            assert "SCAN" not in plan, plan
    finally:
        conn.close()


async def test_lists_derivation_outputs_built_or_not(test_store):
    async with GuixStoreDatabase(test_store.db_path) as db:
        for drv in test_store.derivations():
            assert await db.derivation_outputs(drv.path) == test_store.derivation_outputs[drv.path]
        assert await db.derivation_outputs(f"/gnu/store/{HASH}-none.drv") == {}


async def test_rows_outside_the_store_directory_are_skipped(tmp_path, caplog):
    store = generate_test_store(tmp_path / "nix", items=6, store_dir="/nix/store")
    async with GuixStoreDatabase(store.db_path) as db:
        assert await read_all(db) == []
        assert await db.count() == 6
    assert "not under the store directory /gnu/store" in caplog.text
    async with GuixStoreDatabase(store.db_path, store_dir="/nix/store") as db:
        assert await read_all(db) == store.items
    remove_test_store(store.root)


def test_opens_read_only_and_never_immutable(tmp_path):
    uri = GuixStoreDatabase(tmp_path / "odd?name#x" / "db.sqlite").uri
    assert uri.startswith("file:/") and uri.endswith("?mode=ro")
    assert "immutable" not in uri
    assert "odd%3Fname%23x" in uri


# -- beside a running daemon -----------------------------------------------------------------


async def test_reads_while_the_daemon_holds_a_write_transaction(small_test_store):
    daemon = writer(small_test_store.db_path)
    try:
        daemon.execute("begin immediate")
        daemon.execute(
            "insert into ValidPaths (path, hash, registrationTime, narSize)"
            f" values ('/gnu/store/{HASH}-uncommitted', 'sha256:{'0' * 64}', 1, 1)"
        )
        async with GuixStoreDatabase(small_test_store.db_path, open_attempts=1) as db:
            started = time.monotonic()
            assert await read_all(db) == small_test_store.items
            assert await db.get(f"/gnu/store/{HASH}-uncommitted") is None
            assert time.monotonic() - started < 5
            daemon.execute("commit")
            item = await db.get(f"/gnu/store/{HASH}-uncommitted")
            assert item is not None and item.id == small_test_store.items[-1].id + 1
    finally:
        daemon.close()


async def test_polling_after_the_last_id_finds_newly_built_items(small_test_store):
    async with GuixStoreDatabase(small_test_store.db_path) as db:
        last = await db.max_id()
        new = add_items(small_test_store, 12, seed=3)
        assert await read_all(db, after_id=last) == new
        assert await read_all(db, after_id=await db.max_id()) == []


# -- when the database cannot be opened ------------------------------------------------------


async def test_a_missing_database_says_so(tmp_path):
    with pytest.raises(StoreDatabaseNotFound, match="does not exist"):
        await GuixStoreDatabase(tmp_path / "nothing" / "db.sqlite").open()


async def test_a_file_that_is_not_a_store_database_says_so_at_once(tmp_path):
    garbage = tmp_path / "db.sqlite"
    garbage.write_bytes(b"not sqlite at all" * 100)
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    for path in (garbage, empty):
        started = time.monotonic()
        with pytest.raises(StoreDatabaseError, match="not a readable Guix store database"):
            await GuixStoreDatabase(path, open_attempts=5, retry_delay=1).open()
        assert time.monotonic() - started < 0.5  # not retried


@pytest.mark.parametrize(
    ("message", "transient", "explanation"),
    [
        ("attempt to write a readonly database", True, "db.sqlite-shm does not exist"),
        ("unable to open database file", True, "either this user may not read it"),
        ("database is locked", True, "stayed locked"),
        ("file is not a database", False, "not a readable Guix store database"),
        ("no such table: ValidPaths", False, "not a readable Guix store database"),
    ],
)
def test_retries_only_what_may_clear_up_and_explains_each(message, transient, explanation):
    error = sqlite3.OperationalError(message)
    assert open_failure_is_transient(error) is transient
    assert explanation in describe_open_failure(Path("/var/guix/db/db.sqlite"), error)


async def test_retries_a_missing_wal_index_then_explains(small_test_store, monkeypatch, caplog):
    db = GuixStoreDatabase(small_test_store.db_path, open_attempts=3, retry_delay=0.01)
    real_connect = db._connect
    calls = []

    async def failing_connect():
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return await real_connect()

    monkeypatch.setattr(db, "_connect", failing_connect)
    await db.open()
    assert await db.count() == 20
    await db.close()
    assert len(calls) == 3
    assert caplog.text.count("trying again") == 2

    monkeypatch.setattr(db, "_connect", _always_readonly)
    with pytest.raises(StoreDatabaseError, match="guix-daemon is not running") as info:
        await db.open()
    assert "db.sqlite-shm" in str(info.value)
    assert "never opens the store database read-write" in str(info.value)


async def _always_readonly():
    raise sqlite3.OperationalError("attempt to write a readonly database")


def run_as_nobody(function, timeout: float = 20.0) -> dict:
    """Run `function()` in a forked child with the uid and gid of `nobody`; return its result.

    Root ignores directory permissions, so this is how a root test run meets what a normal
    user meets. The child only runs code already imported and the database it is given.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            nobody = pwd.getpwnam("nobody")
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            result = function()
        except BaseException as e:
            result = {"crash": repr(e)}
        os.write(write_fd, json.dumps(result).encode())
        os._exit(0)
    os.close(write_fd)
    deadline = time.monotonic() + timeout
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the unprivileged reader did not finish")
        time.sleep(0.01)
    with os.fdopen(read_fd, "rb") as f:
        return json.loads(f.read() or b"{}")


def try_to_read(db_path: Path) -> dict:
    async def read() -> dict:
        try:
            async with GuixStoreDatabase(db_path, open_attempts=2, retry_delay=0.01) as db:
                return {"count": await db.count()}
        except StoreDatabaseError as e:
            return {"error": str(e)}

    return asyncio.run(read())


@pytest.fixture
def world_readable_copy(small_test_store):
    """The small store's database, copied where `nobody` can reach it (tmp_path cannot)."""
    directory = Path(tempfile.mkdtemp(prefix="p2pcache-ro-"))
    os.chmod(directory, 0o755)
    shutil.copy(small_test_store.db_path, directory / "db.sqlite")
    os.chmod(directory / "db.sqlite", 0o644)
    yield directory / "db.sqlite"
    os.chmod(directory, 0o755)
    shutil.rmtree(directory)


def test_a_reader_that_cannot_create_the_wal_index_is_told_why(world_readable_copy):
    """No daemon (no -shm file) and a directory the reader cannot write: a clear error."""
    os.chmod(world_readable_copy.parent, 0o555)
    assert not Path(f"{world_readable_copy}-shm").exists()
    if os.geteuid() == 0:
        result = run_as_nobody(lambda: try_to_read(world_readable_copy))
    else:
        result = try_to_read(world_readable_copy)
    assert "error" in result, result
    assert "guix-daemon is not running" in result["error"]
    assert sorted(os.listdir(world_readable_copy.parent)) == ["db.sqlite"]  # nothing created


def test_an_unprivileged_reader_works_while_the_daemon_has_the_database_open(
    world_readable_copy,
):
    if os.geteuid() != 0:
        pytest.skip("needs root to play both the daemon and another user")
    daemon = writer(world_readable_copy)
    try:
        daemon.execute("pragma journal_mode = wal")
        daemon.execute(
            "select count(*) from ValidPaths"
        ).fetchone()  # creates -shm, like the daemon
        os.chmod(world_readable_copy.parent, 0o555)
        assert run_as_nobody(lambda: try_to_read(world_readable_copy)) == {"count": 20}
    finally:
        daemon.close()


# -- malformed rows --------------------------------------------------------------------------


def test_db_hash_is_sha256_and_base16():
    assert parse_db_hash("sha256:" + DIGEST.hex()) == DIGEST
    assert parse_db_hash("sha256:" + DIGEST.hex().upper()) == DIGEST
    for bad in ["sha1:" + "0" * 40, "sha256:" + "0" * 63, "0" * 64, "sha256:" + "g" * 64, None, 5]:
        with pytest.raises(StoreDatabaseRowError):
            parse_db_hash(bad)


def test_parses_a_row_and_sorts_references():
    path, other = f"/gnu/store/{HASH}-x", f"/gnu/store/{'0' * 32}-y"
    row = (7, path, "sha256:" + DIGEST.hex(), 1700000000, "", 944)
    item = parse_valid_path_row(row, [path, other])
    assert item == StoreItemInfo(7, path, DIGEST, 944, (other, path), None, 1700000000)
    with pytest.raises(StoreDatabaseRowError, match="does not exist"):
        parse_valid_path_row(row, [None])


async def test_malformed_rows_are_skipped_with_one_warning_each(small_test_store, caplog):
    conn = writer(small_test_store.db_path)
    good = f"'sha256:{'1' * 64}'"
    bad_rows = {
        "sha1": f"('/gnu/store/{HASH[:-1]}a-sha1', 'sha1:{'1' * 40}', 1, NULL, 5)",
        "nix32": f"('/gnu/store/{HASH[:-1]}b-nix32', 'sha256:{'1' * 52}', 1, NULL, 5)",
        "outside": f"('/nix/store/{HASH[:-1]}c-outside', {good}, 1, NULL, 5)",
        "bad name": f"('/gnu/store/{HASH[:-1]}d-a b', {good}, 1, NULL, 5)",
        "negative size": f"('/gnu/store/{HASH[:-1]}f-neg', {good}, 1, NULL, -1)",
        "text size": f"('/gnu/store/{HASH[:-1]}g-txt', {good}, 1, NULL, 'big')",
        "dangling ref": f"('/gnu/store/{HASH[:-1]}h-dangling', {good}, 1, NULL, 5)",
    }
    kept_rows = {
        "bad deriver": f"('/gnu/store/{HASH[:-1]}i-odd-deriver', {good}, 1, 'nonsense', 5)",
        "null size": f"('/gnu/store/{HASH[:-1]}j-old', {good}, 1, '', NULL)",
    }
    try:
        for values in [*bad_rows.values(), *kept_rows.values()]:
            conn.execute(
                "insert into ValidPaths (path, hash, registrationTime, deriver, narSize)"
                f" values {values}"
            )
        conn.execute(
            "insert into Refs values ((select id from ValidPaths where path like '%dangling'), 999)"
        )
    finally:
        conn.close()
    async with GuixStoreDatabase(small_test_store.db_path) as db:
        for _ in range(2):
            items = await read_all(db, batch=3)
        assert items[:20] == small_test_store.items
        assert [parse_store_path(i.path).name for i in items[20:]] == ["odd-deriver", "old"]
        assert items[20].deriver is None and items[21].nar_size is None
        assert await db.get(f"/gnu/store/{HASH[:-1]}h-dangling") is None
        assert await db.count() == 20 + len(bad_rows) + len(kept_rows)
    skipped = [r for r in caplog.records if "skipping a malformed row" in r.getMessage()]
    assert len(skipped) == len(bad_rows)  # once each, though read twice
    assert all(r.levelno == logging.WARNING for r in skipped)
    assert "ignoring its deriver" in caplog.text


async def test_methods_need_an_open_database(small_test_store):
    db = GuixStoreDatabase(small_test_store.db_path)
    with pytest.raises(StoreDatabaseError, match="not open"):
        await db.count()
    await db.open()
    await db.close()
    with pytest.raises(StoreDatabaseError, match="not open"):
        await db.get("/gnu/store/x")


# -- interop: Nix ----------------------------------------------------------------------------


class Nix:
    """Nix's nix-store and nix-instantiate on a /gnu/store whose files and state are in `root`."""

    def __init__(self, nix_store: str, root: Path, real_store: Path | None = None) -> None:
        self.nix_store = nix_store
        self.nix_instantiate = require_binary("nix-instantiate", "nix-bin")
        self.root = root
        for d in ("conf", "home", "state"):
            (root / d).mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "NIX_CONF_DIR": str(root / "conf"),
            "HOME": str(root / "home"),
            "XDG_CACHE_HOME": str(root / "home" / ".cache"),
        }
        self.real_store = real_store or root / "store"
        self.store = f"local?store=/gnu/store&real={self.real_store}&state={root}/state"

    def run(
        self, tool: str, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [tool, "--store", self.store, "--option", "build-users-group", "", *args],
            input=input,
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def add_texts(self, texts: list[tuple[str, Path, tuple[str, ...]]]) -> list[str]:
        """Register text items (name, file with the text, references), in order, in one eval."""
        steps, names = [], []
        for n, (name, file, refs) in enumerate(texts):
            context = " ".join(f'"{r}" = {{ path = true; }};' for r in refs)
            previous = f"t{n - 1}" if n else "null"
            steps.append(
                f"t{n} = builtins.seq {previous} (builtins.toFile {json.dumps(name)}"
                f" (builtins.appendContext (builtins.readFile (/. + {json.dumps(str(file))}))"
                f" {{ {context} }}));"
            )
            names.append(f"t{n}")
        expression = "let " + " ".join(steps) + f" in [ {' '.join(names)} ]"
        out = self.run(
            self.nix_instantiate, "--eval", "--strict", "--json", "--read-write-mode",
            "-E", expression,
        ).stdout  # fmt: skip
        return json.loads(out)

    def db(self) -> GuixStoreDatabase:
        return GuixStoreDatabase(self.root / "state" / "db" / "db.sqlite")


def copy_named(source: Path, destination: Path) -> Path:
    """A copy of a store item's files under its plain name (nix-store --add names by file)."""
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, destination, symlinks=True)
    else:
        shutil.copy2(source, destination, follow_symlinks=False)
    return destination


@pytest.mark.interop
async def test_nix_registers_the_generated_store_as_the_generator_did(nix_store, tmp_path):
    """Nix computes the sources' and texts' paths, hashes and sizes and the derivations'
    outputs itself; the outputs (which only a build makes) are loaded with our rows and then
    rehashed by Nix. Every row Nix ends up with must be ours, read back by our own reader.
    """
    store = generate_test_store(tmp_path / "gen", items=60, seed=4, max_file_size=1 << 16)
    nix = Nix(nix_store, tmp_path / "nix")
    staging = tmp_path / "staging"
    staging.mkdir()
    sources = [i for i in store.items if i.deriver is None and not i.references]
    texts = [i for i in store.items if i.deriver is None and i.references]
    outputs = [i for i in store.items if i.deriver is not None]
    assert any(store.real_path(i.path).is_dir() for i in sources)
    assert any(i.path.endswith("-builder") for i in texts)
    assert any(
        any(r.endswith(".drv") for r in i.references) for i in texts if i.path.endswith(".drv")
    )

    copies = [
        str(copy_named(store.real_path(i.path), staging / parse_store_path(i.path).name))
        for i in sources
    ]
    assert nix.run(nix_store, "--add", *copies).stdout.split() == [i.path for i in sources]
    for item in outputs:
        copy_named(store.real_path(item.path), nix.root / "store" / item.path.split("/")[-1])
    nix.run(nix_store, "--load-db", input=dump_db_format(outputs))
    added = nix.add_texts(
        [(parse_store_path(i.path).name, store.real_path(i.path), i.references) for i in texts]
    )
    assert added == [i.path for i in texts]
    verified = nix.run(nix_store, "--verify", "--check-contents", check=False)
    assert verified.returncode == 0 and "checking store hashes" in verified.stderr, verified

    async with nix.db() as nix_db:
        theirs = sorted(await read_all(nix_db), key=lambda i: i.path)
        assert [summary(i) for i in theirs] == sorted(summary(i) for i in store.items)
        for drv in (i for i in texts if i.path.endswith(".drv")):
            assert await nix_db.derivation_outputs(drv.path) == store.derivation_outputs[drv.path]
    for item in sources + texts:
        on_disk = dump_nar(nix.root / "store" / item.path.split("/")[-1])
        assert (on_disk.sha256, on_disk.size) == (item.nar_sha256, item.nar_size)
    remove_read_only_tree(staging)
    remove_read_only_tree(nix.root)
    remove_test_store(store.root)


def summary(item: StoreItemInfo) -> tuple:
    """What Nix and the generator must agree on (ids and times are each database's own)."""
    return (item.path, item.nar_sha256, item.nar_size, item.references, item.deriver)


def dump_db_format(items: list[StoreItemInfo]) -> str:
    """Rows in the format of `nix-store --dump-db` / `--load-db`."""
    lines = []
    for i in items:
        lines += [i.path, i.nar_sha256.hex(), str(i.nar_size), i.deriver or ""]
        lines += [str(len(i.references)), *i.references]
    return "\n".join(lines) + "\n"


@pytest.mark.interop
def test_nix_refuses_a_derivation_with_wrong_output_paths(nix_store, small_test_store, tmp_path):
    """The check above means something: this Nix does recompute output paths."""
    nix = Nix(nix_store, tmp_path / "nix")
    drv = next(i for i in small_test_store.derivations() if len(i.references) == 2)
    sources = [small_test_store.by_path(r) for r in drv.references]
    staging = tmp_path / "staging"
    staging.mkdir()
    nix.run(
        nix_store,
        "--add",
        *(
            str(
                copy_named(
                    small_test_store.real_path(s.path), staging / parse_store_path(s.path).name
                )
            )
            for s in sources
        ),
    )
    text = small_test_store.real_path(drv.path).read_text()
    out = small_test_store.derivation_outputs[drv.path]["out"]
    forged = out.replace(parse_store_path(out).hash_part, HASH)
    (staging / "forged").write_text(text.replace(out, forged))
    with pytest.raises(subprocess.CalledProcessError) as info:
        nix.add_texts([(parse_store_path(drv.path).name, staging / "forged", drv.references)])
    assert "incorrect output" in info.value.stderr
    remove_read_only_tree(staging)
    remove_read_only_tree(tmp_path / "nix")


@pytest.mark.interop
def test_nix_verifies_every_item_against_the_generated_database(nix_store, tmp_path):
    store = generate_test_store(
        tmp_path / "gen", items=120, seed=2, large_items=2, max_file_size=3 << 20
    )
    # Nix reads the generated files where they are (it refuses a symlinked store directory),
    # and a copy of the database, which it upgrades to its own schema.
    nix = Nix(nix_store, tmp_path / "nix", real_store=store.store_root)
    shutil.copytree(store.db_path.parent, tmp_path / "nix" / "state" / "db")

    dump = nix.run(nix_store, "--dump-db").stdout.splitlines()
    rows = {}
    while dump:
        path, digest, size, deriver, count, *rest = dump
        rows[path] = (bytes.fromhex(digest), int(size), deriver or None, tuple(rest[: int(count)]))
        dump = rest[int(count) :]
    assert rows == {
        i.path: (i.nar_sha256, i.nar_size, i.deriver, i.references) for i in store.items
    }

    verified = nix.run(nix_store, "--verify", "--check-contents", check=False)
    assert verified.returncode == 0, verified.stderr
    assert "checking store hashes" in verified.stderr

    victim = next(i for i in store.items if i.path.endswith(".tar.gz"))
    real = store.real_path(victim.path)
    os.chmod(real, 0o644)
    with open(real, "ab") as f:
        f.write(b"tampered")
    verified = nix.run(nix_store, "--verify", "--check-contents", check=False)
    assert verified.returncode != 0
    assert f"path '{victim.path}' was modified" in verified.stderr
    remove_read_only_tree(tmp_path / "nix")
    remove_test_store(store.root)


@pytest.mark.interop
def test_nix_dumps_every_item_to_the_nar_the_database_describes(nix_store, test_store):
    kinds = {
        "directory": lambda p: p.is_dir() and not p.is_symlink(),
        "file": lambda p: p.is_file() and not p.is_symlink(),
        "symlink": lambda p: p.is_symlink(),
    }
    sample: list[StoreItemInfo] = []
    for is_kind in kinds.values():
        sample += [i for i in test_store.items if is_kind(test_store.real_path(i.path))][:5]
    sample += sorted(test_store.items, key=lambda i: -(i.nar_size or 0))[:2]  # the biggest
    for item in sample:
        nar = subprocess.run(
            [nix_store, "--dump", str(test_store.real_path(item.path))],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        assert len(nar) == item.nar_size, item.path
        assert hashlib.sha256(nar).digest() == item.nar_sha256, item.path
