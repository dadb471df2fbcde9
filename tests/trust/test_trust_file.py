"""The trust file: parsing, atomic edits that keep comments, the watcher a running node uses."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from p2pcache.trust.trust_file import (
    MAX_TRUST_FILE_SIZE,
    TrustFileError,
    TrustFileWatcher,
    add_entry,
    parse_key,
    parse_trust_file,
    read_trust_file,
    remove_entry,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
KEY_W = bytes(range(2, 34))


def test_parse_builders_and_witnesses_with_comments():
    text = (
        "# who we trust\n\n"
        f"builder ci-berlin {KEY_A.hex()}\n"
        f"  witness witness.example/w1   {KEY_W.hex()}  # no comments after an entry\n"
    )
    with pytest.raises(TrustFileError, match="line 4"):
        parse_trust_file(text)
    trust = parse_trust_file(text.replace("  # no comments after an entry", ""))
    assert [(b.name, b.key) for b in trust.builders] == [("ci-berlin", KEY_A)]
    assert [(w.name, w.key) for w in trust.witnesses] == [("witness.example/w1", KEY_W)]


@pytest.mark.parametrize(
    "line, problem",
    [
        (f"builder {KEY_A.hex()}", "expected"),
        (f"rebuilder x {KEY_A.hex()}", "expected"),
        ("builder x 1234", "not an Ed25519 public key"),
        (f"builder x+y {KEY_A.hex()}", "not a usable name"),
        (f"builder .x {KEY_A.hex()}", "not a usable name"),
        (f"builder x {KEY_A.hex()}\nbuilder x {KEY_B.hex()}", "repeats"),
        (f"builder x {KEY_A.hex()}\nbuilder y {KEY_A.hex()}", "repeats"),
    ],
)
def test_malformed_trust_files_name_the_line(line, problem):
    with pytest.raises(TrustFileError, match=problem):
        parse_trust_file(line + "\n")


def test_the_same_key_may_be_a_builder_and_a_witness():
    trust = parse_trust_file(f"builder b {KEY_A.hex()}\nwitness w {KEY_A.hex()}\n")
    assert len(trust.builders) == len(trust.witnesses) == 1


def test_keys_in_hex_or_base64():
    import base64

    assert parse_key(KEY_A.hex().upper()) == KEY_A
    assert parse_key(base64.b64encode(KEY_A).decode()) == KEY_A
    with pytest.raises(TrustFileError):
        parse_key(base64.b64encode(KEY_A[:31]).decode())


def test_missing_file_trusts_nobody(tmp_path):
    trust = read_trust_file(tmp_path / "nope")
    assert trust.builders == () and trust.witnesses == ()


def test_oversized_or_binary_file_is_refused(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"#" * (MAX_TRUST_FILE_SIZE + 1))
    with pytest.raises(TrustFileError, match="larger than 1 MiB"):
        read_trust_file(big)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe builder")
    with pytest.raises(TrustFileError, match="not UTF-8"):
        read_trust_file(binary)


def test_add_and_remove_keep_every_other_line_byte_for_byte(tmp_path):
    path = tmp_path / "trust" / "trusted-keys"
    add_entry(path, "builder", "alpha", KEY_A)
    with open(path, "a") as f:
        f.write("# beta joined in November\n")
    add_entry(path, "builder", "beta", KEY_B)
    add_entry(path, "witness", "w1", KEY_W)
    before = path.read_text()
    assert before.startswith("# p2pcache trust file")
    assert remove_entry(path, "alpha") == [("builder", "alpha")]
    after = path.read_text()
    assert after == before.replace(f"builder alpha {KEY_A.hex()}\n", "")
    assert remove_entry(path, KEY_W.hex()) == [("witness", "w1")]
    assert "# beta joined in November\n" in path.read_text()
    assert [b.name for b in read_trust_file(path).builders] == ["beta"]
    assert sorted(os.listdir(path.parent)) == ["trusted-keys", "trusted-keys.lock"]


def test_add_refuses_a_repeated_name_or_key_and_remove_an_unknown_one(tmp_path):
    path = tmp_path / "keys"
    add_entry(path, "builder", "alpha", KEY_A)
    with pytest.raises(TrustFileError, match="already trusted"):
        add_entry(path, "builder", "alpha", KEY_B)
    with pytest.raises(TrustFileError, match="already trusted"):
        add_entry(path, "builder", "alias", KEY_A)
    with pytest.raises(TrustFileError, match="no builder or witness"):
        remove_entry(path, "nobody")
    with pytest.raises(TrustFileError, match="no witness"):
        remove_entry(path, "alpha", "witness")


def test_edits_refuse_to_touch_a_file_they_do_not_understand(tmp_path):
    path = tmp_path / "keys"
    path.write_text("builder broken\n")
    with pytest.raises(TrustFileError, match="line 1"):
        add_entry(path, "builder", "alpha", KEY_A)
    assert path.read_text() == "builder broken\n"


def test_concurrent_additions_lose_nothing(tmp_path):
    path = tmp_path / "keys"
    keys = [bytes([i]) * 32 for i in range(1, 25)]
    threads = [
        threading.Thread(target=add_entry, args=(path, "builder", f"b{i}", key))
        for i, key in enumerate(keys)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {b.key for b in read_trust_file(path).builders} == set(keys)


def test_watcher_rereads_a_changed_file_and_keeps_the_last_good_one(tmp_path, caplog):
    path = tmp_path / "keys"
    watcher = TrustFileWatcher(path)
    assert watcher.current().builders == ()
    add_entry(path, "builder", "alpha", KEY_A)
    first = watcher.current()
    assert [b.name for b in first.builders] == ["alpha"]
    assert watcher.current() is first  # unchanged file: not parsed again
    path.write_text(path.read_text() + "builder half-written\n")
    assert watcher.current() is first
    assert "previous trust file stays in force" in caplog.text
    remove_entry_path = path.read_text().replace("builder half-written\n", "")
    path.write_text(remove_entry_path + f"builder beta {KEY_B.hex()}\n")
    assert [b.name for b in watcher.current().builders] == ["alpha", "beta"]


async def test_watcher_looks_once_per_loop_iteration(tmp_path):
    """In an event loop a change is seen from the next iteration on, not within one."""
    path = tmp_path / "keys"
    watcher = TrustFileWatcher(path)
    await asyncio.sleep(0)
    assert watcher.current().builders == ()
    add_entry(path, "builder", "alpha", KEY_A)
    assert watcher.current().builders == ()  # the same iteration: not looked at again
    await asyncio.sleep(0)
    assert [b.name for b in watcher.current().builders] == ["alpha"]
