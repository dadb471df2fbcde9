"""`p2pcache cache stats|gc`: what the cache holds, and making it fit its quota."""

from __future__ import annotations

import argparse
import asyncio
import time

from p2pcache.cache.index import CacheIndex
from p2pcache.cache.nar_store import NarStore
from p2pcache.cache.quota import QuotaKeeper
from p2pcache.cli.options import add_node_options, config_from_args
from p2pcache.config import Config, parse_size
from p2pcache.logs import configure_logging
from p2pcache.metrics import NodeMetrics
from p2pcache.progress import human_bytes

# A NAR file the index does not know is removed only after this long (seconds): a running node
# commits a file a moment before recording it in the index.
ORPHAN_AGE = 600


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("cache", help="inspect or clean the node's cache")
    sub = p.add_subparsers(metavar="ACTION", required=True)
    s = sub.add_parser("stats", help="items, cached NARs and their size")
    add_node_options(s)
    s.set_defaults(func=run_stats)
    g = sub.add_parser(
        "gc",
        help="evict least recently used NARs to fit the quota, remove unknown files",
    )
    add_node_options(g)
    g.add_argument("--max-size", metavar="SIZE", help='evict down to SIZE (e.g. "5GiB")')
    g.set_defaults(func=run_gc)


def run_stats(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    return asyncio.run(stats(config))


async def stats(config: Config) -> int:
    async with CacheIndex(config.data_dir / "index.sqlite") as index:
        s = await index.stats()
    unbaked = s.items - s.baked - s.corrupt
    print(f"data directory:   {config.data_dir}")
    print(f"items known:      {s.items} ({s.baked} cached, {unbaked} not yet, {s.corrupt} corrupt)")
    print(
        f"cached NARs:      {human_bytes(s.cached_bytes)} of {human_bytes(config.cache_max_size)}"
    )
    return 0


def run_gc(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    configure_logging(config.log_level, config.log_format)
    limit = parse_size(args.max_size) if args.max_size else None
    return asyncio.run(gc(config, limit))


async def gc(config: Config, max_size: int | None) -> int:
    nar_store = NarStore(config.data_dir / "nar")
    async with CacheIndex(config.data_dir / "index.sqlite") as index:
        nar_store.prepare()
        known = await index.baked_files()
        settled = time.time() - ORPHAN_AGE
        orphans = [name for name in nar_store.iter_names(settled) if name not in known]
        orphan_bytes = 0
        for name in orphans:
            orphan_bytes += nar_store.size_of(name)
            nar_store.remove(name)
        keeper = QuotaKeeper(index, nar_store, config.cache_max_size, NodeMetrics(), _nothing)
        report = await keeper.enforce(max_size)
    print(f"removed {len(orphans)} files the index did not know ({human_bytes(orphan_bytes)})")
    print(f"evicted {report.items} cached NARs ({human_bytes(report.bytes)})")
    print(f"cache now holds {human_bytes(report.size_after)}")
    return 0


def _nothing(hash_part: str) -> None:
    """A running node drops its own pre-rendered narinfos when it next misses them."""
