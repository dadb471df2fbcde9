"""Cost of the publisher's check for store items `guix gc` deleted, on a million-row database.

The publisher compares its unbaked store items with the Guix database's ids a page at a time
(publisher.COLLECTED_CHECK_PAGE); this times the database side of that over a generated
database of `--rows` rows (Guix's schema, minimal rows), and prints the memory it took.

    python3 loadtest/store_gc_check.py [--rows 1000000] [--page 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pcache.guix.store_db import GuixStoreDatabase
from p2pcache.publisher import COLLECTED_CHECK_PAGE
from p2pcache.testing.guix_db_writer import create_store_database


def max_rss_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--page", type=int, default=COLLECTED_CHECK_PAGE)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        db = Path(work) / "db.sqlite"
        create_store_database(db)
        with sqlite3.connect(db) as conn:
            conn.executemany(
                "INSERT INTO ValidPaths (path, hash, registrationTime, narSize)"
                " VALUES (?, ?, ?, ?)",
                ((f"/gnu/store/{n:032d}-x", "sha256:" + "0" * 64, 0, 1) for n in range(args.rows)),
            )
        before = max_rss_mib()
        async with GuixStoreDatabase(db) as store_db:
            started, cpu = time.perf_counter(), time.process_time()
            seen = 0
            for low in range(1, args.rows + 1, args.page):
                seen += len(await store_db.valid_ids(low, low + args.page - 1))
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"{seen} ids read in pages of {args.page}: {wall:.2f} s wall, {cpu:.2f} s CPU")
    print(f"max RSS {before} MiB before, {max_rss_mib()} MiB after")


if __name__ == "__main__":
    asyncio.run(main())
