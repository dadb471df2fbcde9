"""`p2pcache serve` as a real process: starts with flags, answers Guix, stops on SIGTERM."""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

from p2pcache.guix.narinfo import parse_narinfo
from tests import guix_client


def start(args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "p2pcache", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, **(env or {})),
    )


def wait_for_line(proc, pattern: str, timeout: float = 30) -> re.Match:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


def test_serve_answers_and_stops_cleanly(tmp_path, test_store):
    proc = start(
        [
            "--data-dir", str(tmp_path / "data"),
            "--store-root", str(test_store.store_root),
            "--db", str(test_store.db_path),
            "--listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0",
            "--peer-listen", "127.0.0.1:0",
            "--dht-listen", "127.0.0.1:0",
            "--guix-acl", str(tmp_path / "acl"),
        ]
    )  # fmt: skip
    try:
        wait_for_line(proc, r"guix archive --authorize < .*signing-key.pub")
        match = wait_for_line(proc, r"serving Guix substitutes on http://127.0.0.1:(\d+)")
        port = int(match.group(1))
        item = test_store.items[0]
        h = item.path.rsplit("/", 1)[-1][:32]
        replies = asyncio.run(guix_client.narinfos("127.0.0.1", port, [h, "0" * 32]))
        assert replies[0].status == 200
        assert parse_narinfo(replies[0].body).store_path == item.path
        assert replies[1].status == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        rest = proc.stdout.read().decode()
        assert "p2pcache stopped" in rest and "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_without_guix_says_so_once_and_runs(tmp_path):
    proc = start(
        [
            "--data-dir", str(tmp_path / "data"),
            "--store-root", str(tmp_path / "no-store"),
            "--db", str(tmp_path / "no-db.sqlite"),
            "--listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0",
            "--peer-listen", "127.0.0.1:0",
            "--dht-listen", "",
            "--log-format", "json",
        ]
    )  # fmt: skip
    try:
        wait_for_line(
            proc, r'"message": "this node publishes nothing from a local store: .*does not exist'
        )
        wait_for_line(proc, r"serving Guix substitutes")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0


def test_bad_config_value_is_one_clear_error(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[cache]\nmax_size = "lots"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "p2pcache", "serve", "--config", str(config)],
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert proc.stderr.decode().strip().startswith("p2pcache: cache.max_size: expected a size")
    assert b"Traceback" not in proc.stderr
