"""LAN discovery: the node's Guix endpoint advertised as `_guix_publish._tcp`, found by a browser.

mDNS needs multicast, which this machine's loopback lacks, and a test must not multicast on a
real network; so the node and the browser run inside a network namespace the test creates
(`unshare -n`), whose only interface is a loopback brought up with multicast on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from p2pcache.net.lan_advertiser import SERVICE_TYPE, advertised_addresses, service_name
from tests.conftest import missing_tool, require_binary

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("lan_namespace_probe.py")


def in_new_network_namespace(*command: str) -> subprocess.CompletedProcess:
    unshare = require_binary("unshare", "util-linux")
    require_binary("ip", "iproute2")
    # As root a network namespace needs nothing more; otherwise map the user to root in a
    # user namespace first (-r), which unprivileged user namespaces allow.
    flags = ["-n"] if os.geteuid() == 0 else ["-r", "-n"]
    probe = subprocess.run([unshare, *flags, "true"], capture_output=True)
    if probe.returncode != 0:
        missing_tool(f"cannot create a network namespace here: {probe.stderr.decode().strip()}")
    return subprocess.run(
        [unshare, *flags, *command],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        timeout=120,
    )


def test_a_browser_on_the_lan_finds_the_guix_endpoint():
    result = in_new_network_namespace(sys.executable, str(PROBE))
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    seen = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert seen["services"] == [
        {
            "name": service_name("lan-test"),
            "addresses": ["127.0.0.1"],
            "port": seen["guix_port"],
            "properties": {},
        }
    ]
    assert seen["after_stop"]
    assert b"which other machines cannot reach" in result.stderr


def test_the_service_type_is_guix_publishs():
    # guix/scripts/publish.scm: (define publish-service-type "_guix_publish._tcp")
    assert SERVICE_TYPE == "_guix_publish._tcp.local."
    assert service_name("build.example.org") == "p2pcache-build-example-org." + SERVICE_TYPE
    assert len(service_name("x" * 100).split(".")[0]) == 63


@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3"])
def test_a_listener_on_one_address_is_advertised_at_that_address(host):
    assert advertised_addresses(host) == [host]


def test_a_wildcard_listener_is_advertised_at_every_non_loopback_address():
    assert all(not a.startswith("127.") for a in advertised_addresses("0.0.0.0"))
