"""Where a node keeps its files when nobody says otherwise (DESIGN.md, "Listeners and files")."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def default_data_dir(environ: Mapping[str, str] | None = None, uid: int | None = None) -> Path:
    """`/var/lib/p2pcache` for root, else `$XDG_DATA_HOME/p2pcache` (~/.local/share/p2pcache)."""
    environ = os.environ if environ is None else environ
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return Path("/var/lib/p2pcache")
    xdg = environ.get("XDG_DATA_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "p2pcache"
    return Path(environ.get("HOME", "~")).expanduser() / ".local" / "share" / "p2pcache"
