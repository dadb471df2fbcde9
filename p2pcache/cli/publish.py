"""`p2pcache publish`: bake store items into the cache now, with a progress bar.

A running `serve` bakes new items by itself and items it serves; this command is for baking
the existing store (or chosen items) ahead of time. It works beside a running node: SQLite
serializes the index writes, and temp files are per process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from p2pcache.cache.index import CacheIndex
from p2pcache.cache.nar_store import NarStore
from p2pcache.cache.quota import QuotaKeeper
from p2pcache.cli.options import add_node_options, config_from_args
from p2pcache.config import Config
from p2pcache.errors import P2PCacheError
from p2pcache.guix.store_db import GuixStoreDatabase, StoreItemInfo
from p2pcache.guix.store_path import parse_store_path
from p2pcache.logs import configure_logging
from p2pcache.metrics import NodeMetrics
from p2pcache.progress import Progress
from p2pcache.publisher import BakeJob, Publisher, PublisherSettings, new_item_from_store

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "publish",
        help="bake store items into the cache (NAR, hash check, chunked zstd)",
        description="Bake the given store items (or the whole store with --all) into the "
        "node's cache. Each NAR is checked against the Guix database's NarHash; a mismatch "
        "means a corrupt store item, which is refused. Exit status 1 if any item failed.",
    )
    add_node_options(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--all", action="store_true", help="every valid path of the store")
    group.add_argument("paths", nargs="*", default=[], metavar="STORE-PATH")
    p.set_defaults(func=run_publish)


def run_publish(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    configure_logging(config.log_level, config.log_format)
    return asyncio.run(publish(config, args.paths, everything=args.all))


async def select_store_items(
    db: GuixStoreDatabase, config: Config, paths: list[str]
) -> list[StoreItemInfo]:
    """The database rows of the named store paths; raises if one is not a valid path."""
    chosen: list[StoreItemInfo] = []
    for path in paths:
        parse_store_path(path, config.store_dir)
        info = await db.get(path)
        if info is None:
            raise P2PCacheError(f"{path} is not a valid path in {config.db}")
        chosen.append(info)
    return chosen


async def publish(config: Config, paths: list[str], *, everything: bool) -> int:
    metrics = NodeMetrics()
    index = CacheIndex(config.data_dir / "index.sqlite")
    nar_store = NarStore(config.data_dir / "nar")
    db = GuixStoreDatabase(config.db, store_dir=config.store_dir)
    threads = config.effective_zstd_threads()
    with (
        ThreadPoolExecutor(threads, thread_name_prefix="zstd") as compress,
        ThreadPoolExecutor(1, thread_name_prefix="bake") as bake,
    ):
        await index.open()
        try:
            await db.open()
            nar_store.prepare()
            if everything:
                items = [i async for batch in db.iter_valid_paths() for i in batch]
            else:
                items = await select_store_items(db, config, paths)
            await index.add_items(new_item_from_store(i) for i in items if i.nar_size is not None)
            todo = [i for i in items if not _is_baked(index, i)]
            publisher = Publisher(
                PublisherSettings.from_config(config),
                db,
                index,
                nar_store,
                metrics,
                bake_executor=bake,
                compress_executor=compress,
            )
            already = len(items) - len(todo)
            if already:
                log.info("%d of %d items are already in the cache", already, len(items))
            failed = await _bake_all(publisher, todo)
            await QuotaKeeper(index, nar_store, config.cache_max_size, metrics, _nothing).enforce()
        finally:
            await db.close()
            await index.close()
    if failed:
        log.error("%d of %d items could not be published (see above)", failed, len(todo))
        return 1
    return 0


def _nothing(hash_part: str) -> None:
    """No endpoint runs in this process, so there is no pre-rendered narinfo to forget."""


def _is_baked(index: CacheIndex, info: StoreItemInfo) -> bool:
    item = index.get(info.path.rsplit("/", 1)[-1].partition("-")[0])
    return item is not None and item.is_baked


async def _bake_all(publisher: Publisher, items: list[StoreItemInfo]) -> int:
    loop = asyncio.get_running_loop()
    progress = Progress("publishing", len(items), sum(i.nar_size or 0 for i in items))

    def on_progress(n: int) -> None:
        loop.call_soon_threadsafe(progress.add_bytes, n)

    failed = 0
    for info in items:
        job = Publisher._job(info, with_info=info.nar_size is None)
        result = await publisher.bake(job, on_progress)
        ok = result is not None
        failed += not ok
        progress.item_done(ok)
    progress.finish()
    return failed


__all__ = ["BakeJob", "publish"]
