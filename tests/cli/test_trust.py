"""`p2pcache trust add|remove|list`: the trust file edited from the command line."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.run import p2pcache

ROOT = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": str(ROOT)}
KEY_A = "11" * 32
KEY_B = "22" * 32


def run(*args: str):
    return p2pcache("trust", *args, env=ENV, timeout=60)


def test_add_list_remove_through_the_configured_trust_file(tmp_path):
    trust_file = tmp_path / "etc" / "trusted-keys"
    config = tmp_path / "p2pcache.toml"
    original = f'# my commented configuration\n[trust]\nfile = "{trust_file}"  # here\n'
    config.write_text(original)
    added = run("add", "--config", str(config), "builder", "ci-berlin", KEY_A)
    assert added.returncode == 0, added.stderr
    assert "now trusting builder ci-berlin" in added.stdout.decode()
    assert run("add", "--config", str(config), "witness", "w.example/1", KEY_B).returncode == 0
    listing = run("list", "--config", str(config), "--json")
    assert json.loads(listing.stdout) == {
        "file": str(trust_file),
        "builders": [{"name": "ci-berlin", "key": KEY_A}],
        "witnesses": [{"name": "w.example/1", "key": KEY_B}],
    }
    removed = run("remove", "--config", str(config), "ci-berlin")
    assert (
        removed.returncode == 0
        and "no longer trusting builder ci-berlin" in removed.stdout.decode()
    )
    text = run("list", "--config", str(config)).stdout.decode()
    assert "ci-berlin" not in text and "w.example/1" in text
    assert config.read_text() == original  # the TOML is never rewritten


def test_default_trust_file_is_in_the_data_directory(tmp_path):
    result = run("add", "--data-dir", str(tmp_path), "builder", "alpha", KEY_A)
    assert result.returncode == 0, result.stderr
    assert KEY_A in (tmp_path / "trust" / "trusted-keys").read_text()
    empty = run("list", "--trust-file", str(tmp_path / "other"))
    assert "no builder or witness is trusted" in empty.stdout.decode()


def test_errors_are_one_line_and_exit_status_1(tmp_path):
    path = str(tmp_path / "keys")
    assert run("add", "--trust-file", path, "builder", "alpha", KEY_A).returncode == 0
    for args in (
        ("add", "--trust-file", path, "builder", "alpha", KEY_B),
        ("add", "--trust-file", path, "builder", "beta", "not-a-key"),
        ("remove", "--trust-file", path, "nobody"),
    ):
        result = run(*args)
        err = result.stderr.decode()
        assert result.returncode == 1, args
        assert err.count("\n") == 1 and "Traceback" not in err, err
