"""guix.scm and deploy/guix/p2pcache-service.scm, checked as far as this machine can.

Guix cannot be installed here, so nothing is built or evaluated by Guix. What is checked:
Guile reads every top-level form of both files (with the gexp reader syntax taught as Guix
teaches it); the package's dependencies and version are setup.cfg's and p2pcache's; the
service's configuration record has a field for every option of p2pcache/config.py; and the
service's own TOML writer, run by Guile on the record's defaults, writes a file that
p2pcache loads into exactly p2pcache's defaults.
"""

from __future__ import annotations

import configparser
import dataclasses
import re
import subprocess
from pathlib import Path

import pytest

from p2pcache import __version__
from p2pcache.config import OPTIONS, Config, load_config
from tests.conftest import require_binary
from tests.deploy.conftest import DEPLOY, REPOSITORY

HERE = Path(__file__).resolve().parent
PACKAGE_FILE = REPOSITORY / "guix.scm"
SERVICE_FILE = DEPLOY / "guix" / "p2pcache-service.scm"

# Fields of the service's record that say how the service runs, not what the node does.
SERVICE_ONLY_FIELDS = {"p2pcache", "user", "group", "log-file", "register-substitute-url?"}


def guile(script: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = require_binary("guile-3.0", "guile-3.0")
    return subprocess.run(
        [binary, "--no-auto-compile", str(HERE / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def facts(path: Path) -> list[list[str]]:
    result = guile("scheme_facts.scm", path)
    assert result.returncode == 0, result.stderr
    return [line.split(" ") for line in result.stdout.splitlines()]


def facts_of_kind(path: Path, kind: str) -> list[list[str]]:
    return [fact[1:] for fact in facts(path) if fact[0] == kind]


@pytest.mark.parametrize("path", [PACKAGE_FILE, SERVICE_FILE], ids=lambda p: p.name)
def test_guile_reads_every_top_level_form(path):
    lines = facts(path)
    (count,) = [int(fact[1]) for fact in lines if fact[0] == "forms"]
    assert count == len([fact for fact in lines if fact[0] == "form"]) > 1
    assert "Guix cannot be installed on the machine" in path.read_text()


def test_guile_fails_on_a_form_it_cannot_read(tmp_path):
    """The read check can fail: an unbalanced form is an error."""
    broken = tmp_path / "broken.scm"
    broken.write_text(PACKAGE_FILE.read_text().rstrip().removesuffix("p2pcache") + "(package")
    assert guile("scheme_facts.scm", broken).returncode != 0


def setup_cfg_requirements() -> dict[str, str]:
    """Requirement name (as Guix names Python packages) -> the version pinned with ==, or ''."""
    parser = configparser.ConfigParser()
    parser.read(REPOSITORY / "setup.cfg")
    out = {}
    for line in parser["options"]["install_requires"].splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name = re.match(r"[A-Za-z0-9._-]+", line).group()
            pinned = re.search(r"==\s*([^\s,]+)", line)
            out["python-" + name.lower().replace("_", "-")] = pinned.group(1) if pinned else ""
    return out


def test_package_is_built_from_the_checkout_with_setup_cfg_dependencies():
    packages = {name: version for name, version in facts_of_kind(PACKAGE_FILE, "package")}
    assert packages["p2pcache"] == __version__
    lines = facts(PACKAGE_FILE)
    # The inputs of the p2pcache package: the propagated-input facts after its package line.
    start = lines.index(["package", "p2pcache", __version__])
    p2pcache_inputs = {fact[1] for fact in lines[start + 1 :] if fact[0] == "propagated-input"}
    requirements = setup_cfg_requirements()
    assert p2pcache_inputs == set(requirements)
    for name, pinned in requirements.items():
        if pinned:
            assert packages[name] == pinned, name
    text = PACKAGE_FILE.read_text()
    assert "(local-file %source-directory" in text and "git-predicate" in text
    assert text.rstrip().endswith("p2pcache")  # `guix build -f` builds the last value


def test_service_record_mirrors_every_toml_option():
    fields = dict(facts_of_kind(SERVICE_FILE, "record-field"))
    options = {key: accessor for key, accessor, _kind in facts_of_kind(SERVICE_FILE, "toml-option")}
    assert set(options) == set(OPTIONS)
    accessors = set(fields.values())
    assert set(options.values()) <= accessors
    mirrored = {field for field, accessor in fields.items() if accessor in options.values()}
    assert mirrored | SERVICE_ONLY_FIELDS == set(fields)
    names = [fact[1:] for fact in facts(SERVICE_FILE) if fact[0] == "form"]
    assert ["define", "p2pcache-service-type"] in names


def service_toml(tmp_path: Path, overrides: str = "") -> Path:
    result = guile("scheme_toml.scm", SERVICE_FILE, *([overrides] if overrides else []))
    assert result.returncode == 0, result.stderr
    path = tmp_path / "p2pcache.toml"
    path.write_text(result.stdout)
    return path


def test_service_defaults_are_p2pcache_defaults(tmp_path):
    written = load_config(service_toml(tmp_path))
    assert written.data_dir == Path("/var/lib/p2pcache")
    expected = dataclasses.replace(Config(), data_dir=written.data_dir, host_name=written.host_name)
    assert written == expected


def test_service_writes_what_it_is_given(tmp_path):
    overrides = (
        '((host-name . "seed-1") (data-directory . "/srv/p2p \\"cache\\"\\\\x")'
        ' (bootstrap . ("192.0.2.10:8083" "192.0.2.11:8083")) (bake-new-items? . #f)'
        ' (dht-listen . "") (metrics-listen . "0.0.0.0:8084") (dht-rpc-timeout . 5/2)'
        ' (upstreams . ("https://ci.guix.gnu.org")) (cache-max-size . 1000000))'
    )
    config = load_config(service_toml(tmp_path, overrides))
    assert config.host_name == "seed-1"
    assert config.data_dir == Path('/srv/p2p "cache"\\x')
    assert [str(b) for b in config.bootstrap] == ["192.0.2.10:8083", "192.0.2.11:8083"]
    assert config.bake_new_items is False
    assert config.dht_listen is None
    assert str(config.metrics_listen) == "0.0.0.0:8084"
    assert config.dht_rpc_timeout == 2.5
    assert config.upstreams == ("https://ci.guix.gnu.org",)
    assert config.cache_max_size == 1000000


def test_service_refuses_a_value_of_the_wrong_kind():
    result = guile("scheme_toml.scm", SERVICE_FILE, '((zstd-level . "3"))')
    assert result.returncode == 1
    assert "cache.zstd_level must be an integer" in result.stderr
