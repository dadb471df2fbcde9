"""Running promtool (Debian package `prometheus`) on files, with its output in failures."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import require_binary


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool; skip (or fail under P2PCACHE_REQUIRE_INTEROP=1) when it is missing."""
    binary = require_binary("promtool", "prometheus")
    return subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def assert_promtool_passes(*args: str | Path, cwd: Path | None = None) -> str:
    result = promtool(*args, cwd=cwd)
    assert result.returncode == 0, f"promtool {args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout
