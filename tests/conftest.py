"""Shared test fixtures.

Interop tests check p2pcache against implementations we did not write (libgcrypt through
guile-gcrypt, Nix's nix-store). When such a tool is missing the test skips with a reason that
names the Debian package to install; with P2PCACHE_REQUIRE_INTEROP=1 (set by .ci/run) it fails
instead, so CI can never pass by skipping the checks that matter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
VECTORS_DIR = TESTS_DIR / "vectors"
ORACLE = TESTS_DIR / "tools" / "guix-narinfo-oracle"


def interop_required() -> bool:
    return os.environ.get("P2PCACHE_REQUIRE_INTEROP") == "1"


def missing_tool(reason: str) -> None:
    """Skip (or fail, when interop is required) because an external tool is not installed."""
    if interop_required():
        pytest.fail(f"{reason} (P2PCACHE_REQUIRE_INTEROP=1 forbids skipping)")
    pytest.skip(reason)


def require_binary(name: str, debian_package: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing_tool(f"{name} not found; install it with: apt-get install {debian_package}")
    return path


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    return VECTORS_DIR


@pytest.fixture(scope="session")
def oracle() -> Path:
    """The libgcrypt oracle (Guile + guile-gcrypt), checked to be usable."""
    require_binary("guile-3.0", "guile-3.0 guile-gcrypt")
    probe = subprocess.run(
        ["guile-3.0", "--no-auto-compile", "-c", "(use-modules (gcrypt pk-crypto))"],
        capture_output=True,
    )
    if probe.returncode != 0:
        missing_tool("guile-gcrypt not found; install it with: apt-get install guile-gcrypt")
    return ORACLE


@pytest.fixture(scope="session")
def nix_store() -> str:
    """Nix's nix-store binary (the reference NAR writer and restorer)."""
    return require_binary("nix-store", "nix-bin")


from tests.fixtures_store import small_test_store, test_store  # noqa: E402, F401
