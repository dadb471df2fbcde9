"""Build logs where guix-daemon writes them, for tests and demos of `p2pcache attest`.

A generated store (store_generator.py) says nothing about what was built where; a test marks
an item as built here by writing the log the daemon would have kept for its derivation
(`<log dir>/drvs/XX/REST.drv`, compressed with bzip2 by default as the daemon does, or gzip).
"""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path

from p2pcache.trust.build_log import LOG_SUFFIXES, build_log_candidates

_COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, "": lambda data: data}


def write_build_log(
    log_dir: Path, drv_path: str, text: bytes = b"building...\n", suffix: str = ".bz2"
) -> Path:
    """Write the build log of derivation `drv_path` (a full store path or basename)."""
    basename = drv_path.rsplit("/", 1)[-1]
    path = build_log_candidates(log_dir, basename)[LOG_SUFFIXES.index(suffix)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_COMPRESS[suffix](text))
    return path
