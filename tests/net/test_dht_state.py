"""The neighbours file: JSON written atomically, read defensively, never unpickled."""

from __future__ import annotations

import json
import logging
import pickle

import pytest
from kademlia.node import Node

from p2pcache.net.dht_state import STATE_FORMAT, load_neighbours, save_neighbours


def test_neighbours_round_trip(tmp_path):
    path = tmp_path / "neighbours.json"
    nodes = [Node(bytes([i]) * 20, f"192.0.2.{i}", 8083 + i) for i in range(1, 4)]
    save_neighbours(path, b"o" * 20, nodes)
    document = json.loads(path.read_text())
    assert document["format"] == STATE_FORMAT
    assert document["node_id"] == (b"o" * 20).hex()
    assert load_neighbours(path) == [(f"192.0.2.{i}", 8083 + i) for i in range(1, 4)]
    assert [p.name for p in tmp_path.iterdir()] == ["neighbours.json"]  # no temporary left


def test_a_missing_file_means_no_neighbours(tmp_path):
    assert load_neighbours(tmp_path / "absent.json") == []


@pytest.mark.parametrize(
    "content",
    [
        pickle.dumps({"neighbors": [("192.0.2.1", 1)]}),  # the library's own state format
        b"{not json",
        json.dumps({"format": "something-else", "neighbours": []}).encode(),
        json.dumps({"format": STATE_FORMAT, "neighbours": "all of them"}).encode(),
        json.dumps([1, 2, 3]).encode(),
        b" " * (2 << 20),
    ],
    ids=["pickle", "not-json", "other-format", "not-a-list", "not-an-object", "huge"],
)
def test_a_foreign_or_damaged_file_is_ignored_with_a_warning(tmp_path, caplog, content):
    path = tmp_path / "neighbours.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="p2pcache.net.dht_state"):
        assert load_neighbours(path) == []
    assert "ignoring the DHT neighbours file" in caplog.text


def test_unusable_entries_are_skipped(tmp_path):
    path = tmp_path / "neighbours.json"
    entries = [
        {"id": "00", "host": "192.0.2.1", "port": 8083},
        {"host": "not-an-ip", "port": 8083},
        {"host": "224.0.0.1", "port": 8083},
        {"host": "192.0.2.2", "port": 0},
        {"host": "192.0.2.3", "port": "8083"},
        "garbage",
        {"host": "2001:db8::5", "port": 9},
    ]
    path.write_text(json.dumps({"format": STATE_FORMAT, "neighbours": entries}))
    assert load_neighbours(path) == [("192.0.2.1", 8083), ("2001:db8::5", 9)]
