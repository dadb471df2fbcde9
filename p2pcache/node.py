"""One running node: the parts wired together, started and stopped in a fixed order.

Start: data directory, Guix signing key (created on first start), cache index, NAR files, the
publisher (if a Guix store database is there), the Guix endpoint, the admin listener. Stop:
the reverse, with bounded grace. Configuration comes in as a `Config`; nothing is read from
module-level state.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from p2pcache import __version__
from p2pcache.activity import RecentActivity
from p2pcache.cache.index import CacheIndex, IndexedItem, Origin, State
from p2pcache.cache.nar_store import NarStore
from p2pcache.cache.quota import QuotaKeeper
from p2pcache.cache.rendered_narinfos import RENDERED_NARINFOS_FILE, RenderedNarinfos
from p2pcache.config import Config
from p2pcache.errors import P2PCacheError
from p2pcache.guix import ed25519_ecdsa
from p2pcache.guix.narinfo import render_signature_line, render_signed_part
from p2pcache.guix.narinfo_signature import signature_field
from p2pcache.guix.signing_key import (
    PUBLIC_KEY_FILE,
    SECRET_KEY_FILE,
    GuixSecretKey,
    load_key_pair,
    write_key_pair,
)
from p2pcache.guix.store_db import GuixStoreDatabase
from p2pcache.metrics import NodeMetrics
from p2pcache.net.lan_advertiser import LanAdvertiser
from p2pcache.network import PeerNetwork
from p2pcache.publisher import Publisher, PublisherSettings, new_item_from_store
from p2pcache.server.admin_app import AiohttpListener, make_admin_app, make_metrics_app
from p2pcache.server.guix_endpoint import EndpointSettings, GuixEndpoint
from p2pcache.server.http_server import HTTPServer, ServerLimits

log = logging.getLogger(__name__)

# How often last-access times are written to the index and gauges refreshed.
HOUSEKEEPING_INTERVAL = 15.0


def ensure_signing_key(config: Config) -> GuixSecretKey:
    """Load the node's Guix key, creating it on first start (and saying how to authorize it)."""
    secret = config.data_dir / SECRET_KEY_FILE
    public = config.data_dir / PUBLIC_KEY_FILE
    if not secret.exists():
        key = write_key_pair(config.data_dir)
        log.info("created a new Guix signing key in %s", config.data_dir)
    else:
        key = load_key_pair(config.data_dir)
    log.info(
        "substitutes from this node are signed with %s; to accept them, run as root on the "
        "Guix machine: guix archive --authorize < %s",
        public,
        public,
    )
    return key


class Node:
    """A p2pcache node: the Guix endpoint over the local cache, fed by the local store."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = NodeMetrics()
        self.activity = RecentActivity()
        self.metrics.registry.register(self.activity)
        self.index = CacheIndex(config.data_dir / "index.sqlite")
        self.nar_store = NarStore(config.data_dir / "nar")
        threads = config.effective_zstd_threads()
        self.compress_executor = ThreadPoolExecutor(threads, thread_name_prefix="zstd")
        self.bake_executor = ThreadPoolExecutor(1, thread_name_prefix="bake")
        self.io_executor = ThreadPoolExecutor(8, thread_name_prefix="nar-io")
        self.key: GuixSecretKey | None = None
        self.publisher: Publisher | None = None
        self.endpoint: GuixEndpoint | None = None
        self.rendered: RenderedNarinfos | None = None
        self.http: HTTPServer | None = None
        self.quota: QuotaKeeper | None = None
        self.network: PeerNetwork | None = None
        self.lan_advertiser: LanAdvertiser | None = None
        self._listeners: list[AiohttpListener] = []
        self._tasks: set[asyncio.Task] = set()
        self._housekeeping: asyncio.Task | None = None
        self.started_at = 0.0
        self._stopped = False

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every part; if one fails, stop those already started, then raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.key = ensure_signing_key(config)
        await self.index.open()
        self.nar_store.prepare()
        self.quota = QuotaKeeper(
            self.index, self.nar_store, config.cache_max_size, self.metrics, self._evicted
        )
        self.publisher = Publisher(
            PublisherSettings.from_config(config),
            GuixStoreDatabase(config.db, store_dir=config.store_dir),
            self.index,
            self.nar_store,
            self.metrics,
            bake_executor=self.bake_executor,
            compress_executor=self.compress_executor,
            on_changed=self._item_changed,
            on_gone=self._gone_from_store,
        )
        if not config.store_root.is_dir() or not any(config.store_root.iterdir()):
            log.warning(
                "the store root %s is empty or missing; this node publishes nothing from a "
                "local store",
                config.store_root,
            )
        await self.publisher.start()
        if not ed25519_ecdsa.has_compiled_verify():
            log.warning(
                "p2pcache was installed without its C extension (no C compiler?): narinfo "
                "signatures are checked about 3x slower, which slows down batches of misses"
            )
        self.endpoint = GuixEndpoint(
            EndpointSettings(
                store_dir=config.store_dir,
                store_root=config.store_root,
                narinfo_ttl=config.narinfo_ttl,
                negative_ttl=config.negative_ttl,
                undecided_ttl=config.undecided_ttl,
                hot_narinfos=config.hot_narinfos,
            ),
            self.index,
            self.nar_store,
            (config.data_dir / PUBLIC_KEY_FILE).read_bytes(),
            self._sign_item,
            self.metrics,
            on_unbaked_served=self.publisher.enqueue_item,
            on_corrupt=self._store_item_corrupt,
            on_missing_file=self._cached_file_missing,
            on_left_store=self._left_store,
            executor=self.io_executor,
        )
        self.endpoint.accessed.on_full = lambda: self._spawn(self._flush_access_times())
        if config.rendered_narinfos:
            rendered = RenderedNarinfos(
                config.data_dir / RENDERED_NARINFOS_FILE,
                self.index.path,
                self.endpoint.render_servable,
                on_built=lambda _: self.metrics.rendered_narinfo_builds.inc(),
                on_change=self.endpoint.forget_hot,
            )
            rendered.start()
            self.rendered = self.endpoint.rendered = rendered
            self.metrics.rendered_narinfos.set_function(lambda: rendered.items)
            self.metrics.rendered_narinfos_file_bytes.set_function(lambda: rendered.file_bytes)
        limits = ServerLimits(
            max_connections=config.max_connections,
            max_head_size=config.max_request_head,
            max_pipeline=config.max_pipeline,
            idle_timeout=config.idle_timeout,
            head_timeout=config.request_timeout,
        )
        self.network = PeerNetwork(
            config,
            self.index,
            self.nar_store,
            self.metrics,
            io_executor=self.io_executor,
            compress_executor=self.compress_executor,
            on_cached=lambda item: self._item_changed(item.hash_part),
            sign_item=self._sign_item,
            activity=self.activity,
            on_refused=self._forget,
        )
        await self.network.start()
        self.endpoint.resolve_miss = self._resolve_miss
        self.endpoint.remote_stream = self.network.stream_item
        self.http = HTTPServer(
            self.endpoint.handle, limits, self.metrics.requests.observe, self.endpoint.fast_answer
        )
        await self.http.start(config.listen.host, config.listen.port)
        http = self.http
        self.metrics.open_connections.set_function(lambda: http.connection_count)
        if config.lan_advertise:
            self.lan_advertiser = LanAdvertiser(config.host_name, config.listen.host, http.port)
            await self.lan_advertiser.start()
        admin = AiohttpListener(
            make_admin_app(
                self.metrics.registry, self.status, self.network.which, self.network.challenge
            ),
            config.admin_listen.host,
            config.admin_listen.port,
        )
        await admin.start()
        self._listeners.append(admin)
        if config.metrics_listen is not None:
            metrics = AiohttpListener(
                make_metrics_app(self.metrics.registry),
                config.metrics_listen.host,
                config.metrics_listen.port,
            )
            await metrics.start()
            self._listeners.append(metrics)
        self.metrics.cache_max_bytes.set(config.cache_max_size)
        self._housekeeping = asyncio.create_task(self._housekeep(), name="housekeeping")
        self.started_at = time.time()
        log.info(
            "p2pcache %s serving Guix substitutes on http://%s (admin and /metrics on http://%s)",
            __version__,
            f"{config.listen.host}:{self.http.port}",
            f"{config.admin_listen.host}:{admin.port}",
        )

    async def stop(self) -> None:
        """Stop every part that was started, in reverse order; a second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        if self.lan_advertiser is not None:
            await self.lan_advertiser.stop()
        if self.http is not None:
            await self.http.stop(grace=5.0)
        for listener in self._listeners:
            await listener.stop()
        self._listeners.clear()
        if self.network is not None:
            await self.network.stop()
        if self.publisher is not None:
            await self.publisher.stop()
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        await self._flush_access_times()
        if self.rendered is not None:
            await self.rendered.close()
        await self.index.close()
        for executor in (self.io_executor, self.bake_executor, self.compress_executor):
            executor.shutdown(wait=True, cancel_futures=True)
        log.info("p2pcache stopped")

    async def run_until_signalled(self) -> None:
        """Start, serve until SIGINT or SIGTERM, then stop cleanly."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        try:
            await self.start()
            # The garbage collector, tuned for a Guix batch of misses (loadtest/RESULTS.md,
            # 2026-11-26): what was made while starting (modules, configuration, listeners)
            # lives as long as the process, so it is frozen out of the collector's sight; and
            # the youngest generation is collected every 20,000 allocations instead of 700,
            # because the state of a thousand misses in flight survived every collection and
            # was walked again and again. GC took 158 ms of the loop over six batches, with
            # full collections of 30-45 ms; now 50 ms, the longest pause 10 ms.
            gc.freeze()
            gc.set_threshold(20_000, 10, 10)
            await stopping.wait()
            log.info("stop signal received; stopping the node")
        finally:
            await self.stop()

    @property
    def guix_port(self) -> int:
        assert self.http is not None
        return self.http.port

    @property
    def admin_port(self) -> int:
        return self._listeners[0].port

    # -- the parts' callbacks -----------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _signed(self, item: IndexedItem) -> IndexedItem:
        """`item` with the signed narinfo part and Signature line of this node's key."""
        assert self.key is not None
        signed = render_signed_part(
            item.store_path, item.nar_hash, item.nar_size, item.references, item.deriver
        )
        line = render_signature_line(signature_field(signed, self.key, self.config.host_name))
        return replace(item, signed_part=signed, signature=line)

    def _sign_item(self, item: IndexedItem) -> IndexedItem:
        """Make the signed narinfo part of an item the node vouches for itself, and store it
        in the background (the Guix endpoint answers with it right away)."""
        signed = self._signed(item)
        self._spawn(self.index.set_signature(item.hash_part, signed.signed_part, signed.signature))
        return signed

    async def _sign_then_announce(self, item: IndexedItem) -> None:
        """Store the item's signature, then announce it: peers that find it in the DHT are
        offered only signed narinfos, so announcing before the signature is stored let a
        fast peer ask too early and get "no such item" (seen under load, 2026-11-25)."""
        signed = self._signed(item)
        await self.index.set_signature(item.hash_part, signed.signed_part, signed.signature)
        self._announce(signed)

    async def _resolve_miss(self, hash_part: str) -> IndexedItem | None:
        """An item the index does not know: the local store first (before its sync has
        reached it), then the peer network and the upstream servers."""
        assert self.publisher is not None and self.network is not None
        if self.publisher.available:
            info = await self.publisher.store_db.find_by_hash_part(hash_part)
            if info is not None and info.nar_size is not None:
                await self.index.add_items([new_item_from_store(info)])
                return self.index.get(hash_part)
        return await self.network.resolve(hash_part)

    def _forget(self, hash_part: str) -> None:
        if self.endpoint is not None:
            self.endpoint.forget(hash_part)

    def _evicted(self, hash_part: str) -> None:
        self._forget(hash_part)
        if self.network is not None:
            self.network.withdraw([hash_part])

    def _item_changed(self, hash_part: str) -> None:
        self._forget(hash_part)
        item = self.index.get(hash_part)
        if item is not None and item.state is State.CORRUPT and item.origin is Origin.STORE:
            self._record_store_corrupt(item)
        if item is not None and item.is_baked:
            if item.signed_part is None or item.signature is None:
                self._spawn(self._sign_then_announce(item))
            else:
                self._announce(item)
        if self.quota is not None:
            self.quota.request_check()

    def _announce(self, item: IndexedItem) -> None:
        if self.network is not None:
            self.network.announce([item.hash_part])
            if item.origin is Origin.STORE and item.deriver:
                self._spawn(self._announce_outputs(item.deriver))

    async def _announce_outputs(self, deriver: str) -> None:
        """Announce the outputs of a derivation that this node holds in its cache, so that
        `p2pcache which DRV` finds them before anyone asks for an output path."""
        assert self.publisher is not None and self.network is not None
        if not self.publisher.available:
            return
        drv_path = f"{self.config.store_dir}/{deriver}"
        try:
            outputs = await self.publisher.store_db.derivation_outputs(drv_path)
        except P2PCacheError as e:
            log.info("could not read the outputs of %s: %s", drv_path, e)
            return
        held = {}
        for name, path in outputs.items():
            cached = self.index.get(path.rsplit("/", 1)[-1][:32])
            if cached is not None and cached.is_baked:
                held[name] = path
        self.network.announce_outputs(deriver[:32], held)

    def _store_item_corrupt(self, item: IndexedItem) -> None:
        self.metrics.store_corrupt.inc()
        self._record_store_corrupt(item)
        self._spawn(self.index.mark_corrupt(item.hash_part))

    def _record_store_corrupt(self, item: IndexedItem) -> None:
        self.activity.verification_failed(
            "store_nar_hash",
            "the local store's copy does not hash to the NarHash in the Guix database; "
            "it is not served (check the store with: guix gc --verify=contents)",
            item=item.basename,
            source="local store",
        )

    def _left_store(self, item: IndexedItem) -> None:
        """A store item not baked is gone from the store (`guix gc`): nothing backs it now.
        (The endpoint dropped what it kept of it already.)"""
        self._spawn(self.index.remove([item.hash_part]))
        if self.network is not None:
            self.network.withdraw([item.hash_part])

    def _gone_from_store(self, hash_parts: list[str]) -> None:
        """Store items the publisher forgot (the store lost them): as if evicted."""
        for hash_part in hash_parts:
            self._evicted(hash_part)

    def _cached_file_missing(self, item: IndexedItem) -> None:
        """A cached NAR vanished from disk: a store item falls back to the store, others go."""
        if item.origin is Origin.STORE:
            self._spawn(self.index.mark_unbaked(item.hash_part))
        else:
            self._spawn(self.index.remove([item.hash_part]))

    # -- housekeeping -------------------------------------------------------------------------

    async def _flush_access_times(self) -> None:
        if self.endpoint is not None and len(self.endpoint.accessed):
            accessed = self.endpoint.accessed.drain()
            if self.network is not None:
                self.network.note_requested(accessed)  # what Guix fetches is announced first
            await self.index.touch(accessed)

    async def _prune_narinfo_changes(self) -> None:
        """Delete the change-log entries the rendered narinfos applied (all of them when the
        node keeps none: the log is only for them)."""
        if self.rendered is None:
            await self.index.prune_narinfo_changes(2**63 - 1)
            return
        self.rendered.apply_changes()
        if self.rendered.changes_seen:
            await self.index.prune_narinfo_changes(self.rendered.changes_seen)

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            try:
                await self._flush_access_times()
                if self.network is not None:
                    await self.network.expire_promises(self.config.promise_ttl)
                await self._prune_narinfo_changes()
                await self.refresh_gauges()
            except Exception:
                log.exception(
                    "housekeeping (saving access times, forgetting expired promises, refreshing "
                    "gauges) failed; it runs "
                    "again in %.0f s",
                    HOUSEKEEPING_INTERVAL,
                )

    async def refresh_gauges(self) -> None:
        stats = await self.index.stats()
        self.metrics.cache_bytes.set(stats.cached_bytes)
        self.metrics.cache_items.labels(str(State.BAKED)).set(stats.baked)
        self.metrics.cache_items.labels(str(State.CORRUPT)).set(stats.corrupt)
        self.metrics.cache_items.labels(str(State.UNBAKED)).set(
            stats.items - stats.baked - stats.corrupt
        )

    def endpoints(self) -> dict[str, str | None]:
        """The URLs of every listener, as this node reached them (ports resolved)."""
        config = self.config
        metrics = self._listeners[1].port if len(self._listeners) > 1 else None
        dht = self.network.dht if self.network is not None else None
        return {
            "guix": f"http://{config.listen.host}:{self.guix_port}",
            "peer": self.network.peer_url if self.network is not None else None,
            "admin": f"http://{config.admin_listen.host}:{self.admin_port}",
            "metrics": (
                f"http://{config.metrics_listen.host}:{metrics}/metrics"
                if config.metrics_listen is not None and metrics is not None
                else None
            ),
            "dht": f"udp://{dht.address[0]}:{dht.address[1]}" if dht is not None else None,
            "lan": self.lan_advertiser.name if self.lan_advertiser is not None else None,
        }

    async def status(self) -> dict[str, Any]:
        """What `p2pcache status` and the status page show (GET /api/v1/status)."""
        stats = await self.index.stats()
        hits = self.metrics.narinfo_lookups.hits
        misses = self.metrics.narinfo_lookups.misses
        quota = self.config.cache_max_size
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "identity": {
                "host_name": self.config.host_name,
                "node_id": (
                    self.network.identity.node_id.hex()
                    if self.network is not None and self.network.identity is not None
                    else None
                ),
                "signing_key": str(self.config.data_dir / PUBLIC_KEY_FILE),
                "data_dir": str(self.config.data_dir),
            },
            "endpoints": self.endpoints(),
            "guix_endpoint": f"http://{self.config.listen.host}:{self.guix_port}",
            "store": {
                "store_dir": self.config.store_dir,
                "database": str(self.config.db),
                "publishing": bool(self.publisher and self.publisher.available),
                "bake_queue": self.publisher.queue_size if self.publisher else 0,
            },
            "cache": {
                "items": stats.items,
                "baked": stats.baked,
                "corrupt": stats.corrupt,
                "size_bytes": stats.cached_bytes,
                "max_size_bytes": quota,
                "used_ratio": round(stats.cached_bytes / quota, 4) if quota else None,
            },
            "narinfo": {
                "hits": int(hits),
                "misses": int(misses),
                "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
            },
            "peers": self.network.peers_status() if self.network is not None else None,
            **self.activity.as_dict(),
        }
