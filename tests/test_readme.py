"""The README's commands and configuration work as written: every `p2pcache ...` line parses
with the real command line, and every TOML block is a valid configuration."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

from p2pcache.cli.main import build_parser
from p2pcache.config import config_from_mapping

README = Path(__file__).resolve().parents[1] / "README.md"


def command_lines() -> list[str]:
    """Indented lines starting with `p2pcache `, continuation lines joined; synopses with
    placeholders (`[--listen HOST:PORT]`, `STORE-PATH...`) are not commands and are left out."""
    text = README.read_text().replace("\\\n", " ")
    lines = []
    for line in text.splitlines():
        match = re.match(r"\s+(p2pcache \S.*)", line)
        if match:
            lines.append(match.group(1).split("  #")[0].strip())
    return [c for c in lines if not any("..." in w or w.isupper() for w in shlex.split(c))]


def toml_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)


def test_the_readme_shows_the_commands_an_operator_needs():
    commands = {shlex.split(c)[1] for c in command_lines()}
    assert {"serve", "publish", "status", "demo", "cache", "keygen"} <= commands


@pytest.mark.parametrize("line", command_lines())
def test_readme_command_parses(line):
    build_parser().parse_args(shlex.split(line)[1:])


@pytest.mark.parametrize("block", toml_blocks())
def test_readme_configuration_is_valid(block):
    config = config_from_mapping(tomllib.loads(block))
    assert config.lan_advertise is True or "lan" not in block
