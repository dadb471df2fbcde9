"""Where the Guix daemon keeps the log of a local build: the evidence that this machine built it.

The Guix database does not say whether an item was built here or substituted. What does is the
build log: the daemon writes one for every derivation it builds itself, and none for an item it
substitutes. Guix looks for it (guix/store.scm, `derivation-log-file`) at

    <log dir>/drvs/<first 2 characters of the .drv basename>/<the rest of it>[.gz|.bz2]

with `<log dir>` = `$GUIX_LOG_DIRECTORY`, by default `/var/log/guix` (`builder.build_log_dir`
in the configuration). We check the same names in the same order: `.gz`, `.bz2`, then none.
Only a regular file counts (a directory of that name is not a log).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DEFAULT_BUILD_LOG_DIR = Path("/var/log/guix")
LOG_SUFFIXES = (".gz", ".bz2", "")
"""In the order guix/store.scm's `derivation-log-file` tries them."""


def build_log_candidates(log_dir: Path, drv_basename: str) -> list[Path]:
    """The files that would be the build log of derivation `drv_basename` (`<hash>-<name>.drv`).

    Requires a basename (no slash) of at least three characters: Guix splits off the first two.
    """
    if "/" in drv_basename or len(drv_basename) < 3 or drv_basename.startswith("."):
        raise ValueError(f"{drv_basename[:80]!r} is not a derivation basename")
    folder = Path(log_dir) / "drvs" / drv_basename[:2]
    return [folder / (drv_basename[2:] + suffix) for suffix in LOG_SUFFIXES]


def find_build_log(log_dir: Path, drv_basename: str) -> Path | None:
    """The build log the daemon kept for `drv_basename`, or None if there is none."""
    for candidate in build_log_candidates(log_dir, drv_basename):
        try:
            mode = os.stat(candidate).st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode):
            return candidate
    return None
