"""The node identity file: created once, atomically, 0600; loaded as it is afterwards."""

from __future__ import annotations

import hashlib
import logging
import os
import stat

import pytest

from p2pcache.errors import FormatError
from p2pcache.net.identity import (
    IDENTITY_FILE,
    IdentityFormatError,
    NodeIdentity,
    load_or_create_identity,
    parse_identity,
    render_identity,
)


def test_first_start_creates_a_private_identity_file(tmp_path):
    data_dir = tmp_path / "data"
    identity = load_or_create_identity(data_dir)
    path = data_dir / IDENTITY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert path.read_bytes() == f"p2pcache-ed25519-seed-v1 {identity.seed.hex()}\n".encode()
    assert [p.name for p in data_dir.iterdir()] == [IDENTITY_FILE]  # no temporary left


def test_later_starts_load_the_same_identity(tmp_path):
    first = load_or_create_identity(tmp_path)
    second = load_or_create_identity(tmp_path)
    assert second.public_key == first.public_key
    assert second.node_id == first.node_id


def test_node_id_is_sha1_of_the_public_key():
    identity = NodeIdentity.from_seed(bytes(range(32)))
    assert identity.node_id == hashlib.sha1(identity.public_key).digest()
    assert len(identity.node_id) == 20


def test_identity_created_meanwhile_by_another_process_is_loaded_not_replaced(
    tmp_path, monkeypatch
):
    other = NodeIdentity.generate()
    real_link = os.link

    def racing_link(source, destination):
        (tmp_path / IDENTITY_FILE).write_bytes(render_identity(other))
        return real_link(source, destination)

    monkeypatch.setattr(os, "link", racing_link)
    assert load_or_create_identity(tmp_path).public_key == other.public_key
    assert [p.name for p in tmp_path.iterdir()] == [IDENTITY_FILE]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"p2pcache-ed25519-seed-v1\n",
        b"p2pcache-ed25519-seed-v1 " + b"ab" * 31 + b"\n",
        b"p2pcache-ed25519-seed-v1 " + b"AB" * 32 + b"\n",
        b"p2pcache-ed25519-seed-v2 " + b"ab" * 32 + b"\n",
        b"p2pcache-ed25519-seed-v1 " + b"zz" * 32 + b"\n",
        b"\xff" * 90,
        b"x" * 1000,
    ],
    ids=["empty", "no-seed", "short", "uppercase", "version", "not-hex", "binary", "huge"],
)
def test_a_damaged_identity_file_is_an_error_not_a_new_identity(tmp_path, content):
    path = tmp_path / IDENTITY_FILE
    path.write_bytes(content)
    with pytest.raises(IdentityFormatError) as raised:
        load_or_create_identity(tmp_path)
    assert isinstance(raised.value, FormatError)
    assert path.read_bytes() == content


def test_a_symlinked_identity_file_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(render_identity(NodeIdentity.generate()))
    (tmp_path / IDENTITY_FILE).symlink_to(target)
    with pytest.raises(IdentityFormatError):
        load_or_create_identity(tmp_path)


def test_a_world_readable_identity_file_is_loaded_with_a_warning(tmp_path, caplog):
    identity = load_or_create_identity(tmp_path)
    (tmp_path / IDENTITY_FILE).chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="p2pcache.net.identity"):
        assert load_or_create_identity(tmp_path).node_id == identity.node_id
    assert "chmod 600" in caplog.text


def test_render_and_parse_round_trip():
    identity = NodeIdentity.generate()
    assert parse_identity(render_identity(identity)).seed == identity.seed
