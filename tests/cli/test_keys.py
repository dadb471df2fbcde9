"""`p2pcache keygen`: Guix-format keys, never silently replaced."""

import stat

from p2pcache.guix.signing_key import parse_public_key, parse_secret_key
from tests.cli.run import p2pcache


def test_keygen_writes_a_key_pair_and_says_how_to_authorize_it(tmp_path):
    result = p2pcache("keygen", str(tmp_path / "keys"))
    assert result.returncode == 0, result.stderr
    pub = tmp_path / "keys" / "signing-key.pub"
    sec = tmp_path / "keys" / "signing-key.sec"
    assert parse_secret_key(sec.read_bytes()).public == parse_public_key(pub.read_bytes())
    assert stat.S_IMODE(sec.stat().st_mode) & 0o077 == 0
    assert f"guix archive --authorize < {pub}" in result.stdout.decode()


def test_keygen_refuses_to_overwrite_without_force(tmp_path):
    assert p2pcache("keygen", str(tmp_path)).returncode == 0
    before = (tmp_path / "signing-key.sec").read_bytes()
    again = p2pcache("keygen", str(tmp_path))
    assert again.returncode == 1
    err = again.stderr.decode()
    assert err.count("\n") == 1 and "--force" in err and "Traceback" not in err
    assert (tmp_path / "signing-key.sec").read_bytes() == before
    forced = p2pcache("keygen", "--force", str(tmp_path))
    assert forced.returncode == 0
    assert (tmp_path / "signing-key.sec").read_bytes() != before


def test_keygen_defaults_to_the_data_directory(tmp_path):
    result = p2pcache("keygen", env={"XDG_DATA_HOME": str(tmp_path), "HOME": str(tmp_path)})
    if result.returncode == 0 and (tmp_path / "p2pcache" / "signing-key.pub").exists():
        return
    # As root the data directory is /var/lib/p2pcache: only check the message names it.
    assert "/var/lib/p2pcache" in (result.stdout + result.stderr).decode()
