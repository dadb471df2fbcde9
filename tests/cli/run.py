"""Run the `p2pcache` command line in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys


def p2pcache(*args: str, input: bytes | None = None, timeout: float = 120, env=None):
    environment = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "p2pcache", *args],
        input=input,
        capture_output=True,
        timeout=timeout,
        env=environment,
    )
