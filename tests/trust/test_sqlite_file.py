"""The trust stores' SQLite set-up: durable WAL files, all-or-nothing write transactions."""

import pytest

from p2pcache.trust.sqlite_file import ClosesOnExit, open_durable, write_transaction

SCHEMA = "CREATE TABLE IF NOT EXISTS t (x INTEGER PRIMARY KEY);"


def test_files_are_wal_with_full_sync_and_the_schema_applied_once(tmp_path):
    db = open_durable(tmp_path / "f.sqlite", SCHEMA)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db.execute("INSERT INTO t VALUES (1)")
    db.close()
    again = open_durable(tmp_path / "f.sqlite", SCHEMA)
    assert again.execute("SELECT x FROM t").fetchall() == [(1,)]
    again.close()


def test_a_write_transaction_commits_all_or_nothing(tmp_path):
    db = open_durable(tmp_path / "f.sqlite", SCHEMA)
    with write_transaction(db):
        db.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(RuntimeError), write_transaction(db):
        db.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("interrupted")
    assert not db.in_transaction
    assert db.execute("SELECT x FROM t").fetchall() == [(1,)]
    db.close()


def test_a_bad_schema_leaves_no_connection_open(tmp_path):
    with pytest.raises(Exception, match="syntax"):
        open_durable(tmp_path / "f.sqlite", "CREATE NONSENSE")


def test_closes_on_exit():
    class Thing(ClosesOnExit):
        closed = False

        def close(self):
            self.closed = True

    with Thing() as thing:
        assert not thing.closed
    assert thing.closed
