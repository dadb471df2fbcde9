"""deploy/systemd/p2pcache.service: valid for systemd, hardened, and starting the command
where the documented install puts it.

`systemd-analyze verify` insists that ExecStart's program exists. This machine has p2pcache
installed for the test interpreter, not in /usr/local/bin, so verify runs on a copy of the unit
whose ExecStart names the installed entry point (the `p2pcache` console script beside this
Python) and differs from the shipped unit in that one path only.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sysconfig
from pathlib import Path

import pytest

from p2pcache.cli.main import build_parser
from tests.conftest import require_binary
from tests.deploy.conftest import DEPLOY

UNIT = DEPLOY / "systemd" / "p2pcache.service"
INSTALLED_COMMAND = "/usr/local/bin/p2pcache"
MAX_EXPOSURE = 3.0


def unit_settings(text: str) -> dict[str, list[str]]:
    """`Key=value` lines of a unit (any section), every value of a repeated key kept."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def exec_start() -> list[str]:
    (command,) = unit_settings(UNIT.read_text())["ExecStart"]
    return shlex.split(command)


def installed_entry_point() -> Path:
    path = Path(sysconfig.get_path("scripts")) / "p2pcache"
    if not path.is_file():
        pytest.fail(f"{path} missing: install p2pcache first (./scripts/test does)")
    return path


def analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = require_binary("systemd-analyze", "systemd")
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=120)


def unit_copy_for_verify(directory: Path, text: str | None = None) -> Path:
    text = UNIT.read_text() if text is None else text
    pattern = f"ExecStart={INSTALLED_COMMAND} "
    assert text.count(pattern) == 1
    copy = directory / UNIT.name
    copy.write_text(text.replace(pattern, f"ExecStart={installed_entry_point()} "))
    return copy


def test_unit_passes_systemd_analyze_verify(tmp_path):
    result = analyze("verify", unit_copy_for_verify(tmp_path))
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_verify_complains_about_a_bad_value(tmp_path):
    """The check above can fail: systemd only warns on a bad value, on stderr."""
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=strickt")
    result = analyze("verify", unit_copy_for_verify(tmp_path, broken))
    assert "strickt" in result.stderr


def test_unit_exposure_is_low():
    result = analyze("security", "--offline=yes", UNIT)
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for p2pcache\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:]
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_unit_has_the_promised_hardening():
    settings = unit_settings(UNIT.read_text())
    for key, value in {
        "DynamicUser": "yes",
        "StateDirectory": "p2pcache",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert settings[key] == [value], key
    read_only = " ".join(settings["ReadOnlyPaths"]).split()
    assert {"/gnu/store", "/var/guix/db"} <= set(read_only)
    assert "ReadWritePaths" not in settings  # nothing but the state directory is writable


def test_exec_start_runs_serve_where_the_documented_install_puts_it():
    program, *arguments = exec_start()
    assert program == INSTALLED_COMMAND
    install = (DEPLOY / "README.md").read_text()
    assert f"ln -s /usr/local/lib/p2pcache/bin/p2pcache {INSTALLED_COMMAND}" in install
    arguments = [a.replace("${STATE_DIRECTORY}", "/var/lib/p2pcache") for a in arguments]
    args = build_parser().parse_args(arguments)
    assert args.func.__name__ == "run_serve"
    assert args.data_dir == "/var/lib/p2pcache"
    assert str(args.config) == "/etc/p2pcache/p2pcache.toml"
