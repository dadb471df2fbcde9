"""The node's part in the peer network: identity, DHT, peer API, miss path and transfers.

`PeerNetwork` owns everything that talks to other machines, so the node can start and stop it
as one piece: the node's Ed25519 identity, the DHT node (announcing what the cache holds,
finding who holds the rest), the peer listener (serving chunks to others), the HTTP client
session shared by the peer client and the upstream client, the miss resolver (peers and
upstreams asked at once, a narinfo accepted when the trust policy says so), the fetchers
that bring an accepted item into the cache while Guix receives it, and the trust gate
(trust_gate.py) both ask, whose seams `attestations_for` and `consistency_proof` the peer
API's attestation and log routes feed. Beside them, log watching (trust/log_watching.py):
checkpoint gossip into the trust gate's CheckpointStore, and the witness role and the
collection of witness cosignatures when configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Executor

import aiohttp

from p2pcache.activity import RecentActivity
from p2pcache.cache.chunk_table import decode_chunk_table
from p2pcache.cache.index import CacheIndex, IndexedItem, Origin
from p2pcache.cache.nar_store import NarStore
from p2pcache.config import Config
from p2pcache.errors import P2PCacheError
from p2pcache.fetcher import FetchedNarMismatch, FetchSettings, ItemFetcher
from p2pcache.fetches_in_progress import FetchesInProgress
from p2pcache.guix.narinfo import parse_nar_hash
from p2pcache.guix.signing_key import GuixPublicKey, parse_acl
from p2pcache.metrics import NodeMetrics
from p2pcache.net.announcer import Announcer, AnnouncerConfig
from p2pcache.net.baking_tee import NarHashMismatch
from p2pcache.net.dht import DHTConfig, DHTNode
from p2pcache.net.dht_routing import ContactLimits
from p2pcache.net.evidence_source import PeerEvidence
from p2pcache.net.identity import NodeIdentity, load_or_create_identity
from p2pcache.net.narinfo_batcher import NarinfoBatcher
from p2pcache.net.network_metrics import NetworkCollector, NetworkCounters
from p2pcache.net.peer_client import PeerClient
from p2pcache.net.peer_ranking import PeerRanking
from p2pcache.net.providers import ProviderDirectory, ProvidersUnknown, peer_narinfo_source
from p2pcache.net.recent_providers import RecentProviders
from p2pcache.net.transfer import TransferStats
from p2pcache.net.upstream import UpstreamClient
from p2pcache.net.upstream_narinfo import (
    UpstreamNarinfo,
    check_upstream_narinfo,
    preferred_groups,
)
from p2pcache.resolver import Candidate, MissResolver, ResolverSettings
from p2pcache.server.admin_app import AiohttpListener
from p2pcache.server.peer_app import PeerAPI
from p2pcache.server.streaming import iterate_in_thread
from p2pcache.trust.attestation_bundle import AttestationBundle
from p2pcache.trust.builder_log import BuilderLog
from p2pcache.trust.log_watch_metrics import LogWatchCollector, LogWatchCounters
from p2pcache.trust.log_watching import LogWatching
from p2pcache.trust.narinfo_check_pool import NarinfoCheckPool
from p2pcache.trust_gate import TrustGate

log = logging.getLogger(__name__)

MAX_CONCURRENT_SEARCHES = 256
"""DHT provider searches at once. Each keeps a lookup's state and a few RPCs in flight; in
1000 at once the replies overran the UDP receive buffer (loadtest/RESULTS.md)."""

# Cached items read from the index per page when queueing them all for announcing.
ANNOUNCE_PAGE = 10_000

MAX_KEPT_UPSTREAM_NARINFOS = 10_000
"""Upstream narinfos kept for the NAR downloads that follow their misses, as bytes (about
2 KB each, 20 MB in all; parsed, 7 KB each); older ones are asked for again if their NAR
is wanted."""

PROMISE_EXPIRY_BATCH = 1000
PROMISE_EXPIRY_BATCHES = 20
"""Expired promises are forgotten 1,000 to a transaction, at most 20,000 per housekeeping
round, so that a node with a backlog keeps serving between transactions."""

# Peers listed by the status API (the best ones; the rest are counted).
STATUS_PEERS = 20

# Narinfo refusals that mean someone altered or forged it (not merely an unknown signer).
FORGED_NARINFO_REASONS = frozenset(
    {"invalid-signature", "hash-mismatch", "corrupt-signature", "wrong-item"}
)

# Chunk failure reasons from net/transfer that are failed checks, and the check they count as.
CHUNK_CHECKS = {"bad-chunk": "chunk", "bad-table": "chunk_table"}


def load_guix_acl(path) -> list[GuixPublicKey]:
    """The Guix keys this node accepts; a missing ACL file means none (said in the log)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        log.warning(
            "no Guix ACL at %s: narinfos from peers and upstreams will be accepted only once "
            "their signing keys are authorized (guix archive --authorize, or trust.guix_acl)",
            path,
        )
        return []
    except OSError as e:
        raise P2PCacheError(f"cannot read the Guix ACL {path}: {e.strerror}") from None
    try:
        return parse_acl(data)
    except P2PCacheError as e:
        raise P2PCacheError(f"the Guix ACL {path} is not usable: {e}") from None


class PeerNetwork:
    def __init__(
        self,
        config: Config,
        index: CacheIndex,
        nar_store: NarStore,
        metrics: NodeMetrics,
        *,
        io_executor: Executor,
        compress_executor: Executor,
        on_cached: Callable[[IndexedItem], None],
        sign_item: Callable[[IndexedItem], IndexedItem] | None = None,
        activity: RecentActivity | None = None,
        on_refused: Callable[[str], None] = lambda hash_part: None,
    ) -> None:
        self.on_refused = on_refused
        self.config = config
        self.index = index
        self.nar_store = nar_store
        self.metrics = metrics
        self.io_executor = io_executor
        self.compress_executor = compress_executor
        self.on_cached = on_cached
        self.sign_item = sign_item
        self.activity = activity or RecentActivity()
        self.identity: NodeIdentity | None = None
        self.builder_log: BuilderLog | None = None
        """This node's attestation log and the bundles it holds (own and carried)."""
        self.dht: DHTNode | None = None
        self.session: aiohttp.ClientSession | None = None
        self.upstream: UpstreamClient | None = None
        self.ranking = PeerRanking()
        self.directory = ProviderDirectory(self._lookup_providers)
        self._searches = asyncio.Semaphore(MAX_CONCURRENT_SEARCHES)
        self.recent_providers = RecentProviders()
        """Peers whose narinfos were accepted lately: asked for a miss before the DHT is."""
        self.resolver: MissResolver | None = None
        self.narinfo_checks: NarinfoCheckPool | None = None
        self.fetcher: ItemFetcher | None = None
        self.peer_url = ""
        self._peer_listener: AiohttpListener | None = None
        self._upstream_narinfos: dict[str, tuple[str, bytes]] = {}
        """(upstream URL, narinfo bytes) by hash part, parsed again when the NAR is wanted."""
        self._fetches = FetchesInProgress(index, self._read_cached)
        self.announcer: Announcer | None = None
        self._tasks: list[asyncio.Task] = []
        self.trust: TrustGate | None = None
        self.evidence: PeerEvidence | None = None
        self.log_watching: LogWatching | None = None
        """Checkpoint gossip, the witness role, cosignature collection (trust/log_watching)."""
        self.counters = NetworkCounters()
        metrics.registry.register(
            NetworkCollector(
                self.counters,
                lambda: self.dht.stats if self.dht is not None else None,
                lambda: (len(self.ranking.scores), self.ranking.banned_count()),
            )
        )
        self.log_watch_counters = LogWatchCounters(on_fork=self.counters.trust.count_fork)
        metrics.registry.register(LogWatchCollector(self.log_watch_counters))

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        self.identity = load_or_create_identity(config.data_dir)
        self.builder_log = BuilderLog.open(config.data_dir, self.identity.signing_key)
        acl = load_guix_acl(config.guix_acl)
        self.trust = TrustGate(
            config,
            self.index,
            acl,
            self.counters.trust,
            provenance_of=lambda h: self.resolver.provenances.get(h) if self.resolver else None,
            withdraw=self._withdraw_promise,
            carry=self._carry_bundle,
        )
        self.trust.start()
        assert self.trust.checkpoints is not None
        trust = self.trust
        self.log_watching = LogWatching(
            config,
            trust.checkpoints,
            self.builder_log,
            self.identity,
            self.log_watch_counters,
            trusted_builders=lambda: [builder.key for builder in trust.policy().builders],
        )
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, limit_per_host=16),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )
        self.upstream = UpstreamClient(self.session, store_dir=config.store_dir)
        await self.upstream.start()
        client = PeerClient(self.session)
        api = PeerAPI(
            self.index,
            self.nar_store,
            self.identity,
            "",
            executor=self.io_executor,
            on_served=self._served,
            sign_item=self.sign_item,
            builder_log=self.builder_log,
            on_log_served=lambda kind, count: self.counters.log_served.update({kind: count}),
            checkpoint_notes=self.log_watching.gossip.newest_notes,
            witness=self.log_watching.witness,
        )
        self._peer_listener = AiohttpListener(
            api.application(), config.peer_listen.host, config.peer_listen.port
        )
        await self._peer_listener.start()
        self.peer_url = config.advertise_url or (
            f"http://{config.peer_listen.host}:{self._peer_listener.port}"
        )
        api.peer_url = self.peer_url
        if config.dht_listen is not None:
            self.dht = DHTNode(
                self.identity,
                DHTConfig(
                    rpc_timeout=config.dht_rpc_timeout,
                    requests_per_second_per_ip=config.dht_requests_per_second_per_ip,
                    request_burst_per_ip=config.dht_request_burst_per_ip,
                    contact_limits=ContactLimits(
                        max_per_ip=config.dht_max_per_ip,
                        max_per_subnet=config.dht_max_per_subnet,
                    ),
                ),
                state_file=config.data_dir / "dht-neighbours.json",
            )
            await self.dht.start(
                config.dht_listen.host,
                config.dht_listen.port,
                [(b.host, b.port) for b in config.bootstrap],
            )
        self.evidence = PeerEvidence(
            client, self.directory.providers, self.ranking, self._local_bundles
        )
        self.trust.attestations_for = self.evidence.attestations_for
        self.trust.consistency_proof = self.evidence.consistency_proof
        # The narinfos of a Guix batch's misses go to their providers in lists, not one by one.
        narinfos = NarinfoBatcher(client)
        sources = [
            peer_narinfo_source(
                self.directory,
                narinfos,
                self.ranking,
                recent=self.recent_providers,
                recent_fanout=config.miss_recent_providers,
                counts=self.counters.provider_searches,
            )
        ]
        if config.upstreams:
            sources.append(self._upstream_source)
        self.narinfo_checks = NarinfoCheckPool(
            acl, config.store_dir, config.miss_check_processes, self.counters.narinfo_checks
        )
        self.narinfo_checks.start()
        self.resolver = MissResolver(
            self.index,
            acl,
            sources,
            ResolverSettings(store_dir=config.store_dir, timeout=config.miss_timeout),
            on_outcome=self._miss_outcome,
            on_rejected=self._narinfo_refused,
            trust=self.trust.item_trust,
            checks=self.narinfo_checks,
        )
        self.fetcher = ItemFetcher(
            self.index,
            self.nar_store,
            client,
            self.ranking,
            self.directory.providers,
            executor=self.io_executor,
            settings=FetchSettings(parallel=config.fetch_parallel),
            on_cached=self._cached,
            on_transfer=self._transfer_outcome,
            before_commit=self.trust.before_commit,
            expected_root=self.trust.expected_root,
        )
        if self.dht is not None:
            self.announcer = Announcer(
                self.dht,
                self.peer_url,
                AnnouncerConfig(keys_per_second=config.announce_keys_per_second),
            )
            await self.announcer.start()
            self._tasks.append(asyncio.create_task(self._announce_existing(), name="announce"))
        trust = self.trust
        await self.log_watching.start(
            client,
            self._gossip_peers,
            proof_source=lambda key, old, new: trust.consistency_proof(key, old, new),
            peer_keys=self.evidence.peer_keys,
        )
        log.info(
            "peer API on %s (advertised as %s)%s",
            f"{config.peer_listen.host}:{self._peer_listener.port}",
            self.peer_url,
            f", DHT on {self.dht.address[0]}:{self.dht.address[1]} (UDP)" if self.dht else "",
        )

    def _local_bundles(self, hash_part: str) -> list[bytes]:
        """The bundles this node holds for an item: its own attestation's, then carried ones."""
        if self.builder_log is None:
            return []
        own = self.builder_log.own_bundle(hash_part)
        return ([own] if own is not None else []) + self.builder_log.bundles.carried(hash_part)

    def _carry_bundle(self, hash_part: str, bundle: AttestationBundle) -> None:
        if self.builder_log is not None:
            self.builder_log.bundles.add_carried(hash_part, bundle)

    def _served(self, hash_part: str, nbytes: int) -> None:
        """A peer fetched chunks of an item from this node: count the bytes, and the demand."""
        self.counters.transfer_bytes["out"] += nbytes
        self.note_requested([hash_part])

    async def challenge(self, basename: str) -> dict:
        """What each trusted builder attests for a store item (`p2pcache challenge`)."""
        assert self.trust is not None
        return await self.trust.challenge(basename)

    async def _withdraw_promise(self, hash_part: str) -> None:
        """The policy no longer accepts an item: its narinfo is no longer offered to Guix."""
        await self.index.remove([hash_part])
        self._promise_gone(hash_part)

    def _promise_gone(self, hash_part: str) -> None:
        """An item no longer in the index: where it came from no longer matters, and the
        node drops whatever it keeps rendered of it."""
        if self.resolver is not None:
            self.resolver.provenances.pop(hash_part)
        self.on_refused(hash_part)

    async def expire_promises(self, ttl: int) -> int:
        """Forget the items found for misses over `ttl` seconds ago that nobody fetched
        (dry runs, `guix weather`, a machine that went away), except those being fetched
        now. Asked for again, they are looked up afresh: a narinfo request is a miss, and a
        NAR request for a narinfo Guix kept is looked up too (guix_endpoint._resolve_nar)."""
        total = 0
        for _ in range(PROMISE_EXPIRY_BATCHES):
            gone = await self.index.expire_promises(
                int(time.time()) - ttl, PROMISE_EXPIRY_BATCH, keep=self._fetches.running()
            )
            for hash_part in gone:
                self._promise_gone(hash_part)
            self.metrics.promises_expired.inc(len(gone))
            total += len(gone)
            if len(gone) < PROMISE_EXPIRY_BATCH:
                break
        if total:
            log.info(
                "forgot %d items found for misses over %d s ago that nobody fetched; if asked "
                "for again, they are looked up afresh",
                total,
                ttl,
            )
        return total

    def _miss_outcome(self, outcome: str, seconds: float) -> None:
        self.counters.misses[outcome] += 1
        self.counters.miss_seconds.observe(seconds)

    def _transfer_outcome(self, outcome: str, stats: TransferStats) -> None:
        self.counters.transfers[outcome] += 1
        self.counters.transfer_bytes["in"] += stats.bytes_in
        self.counters.chunk_failures.update(stats.chunk_failures)
        self.counters.failovers += stats.failovers
        for reason, count in stats.chunk_failures.items():
            check = CHUNK_CHECKS.get(reason)
            if check is not None and count:
                self.activity.verification_failed(
                    check,
                    f"{count} {check.replace('_', ' ')}(s) from peers failed the check "
                    f"({reason}); the offending peers were blamed and others asked",
                    source="peers",
                    count=count,
                )

    def _narinfo_refused(self, reason: str) -> None:
        self.counters.narinfos_refused.update([reason])
        if reason in FORGED_NARINFO_REASONS:
            self.activity.verification_failed(
                "narinfo_signature", f"a relayed narinfo was refused: {reason}"
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.announcer is not None:
            await self.announcer.stop()
        if self.log_watching is not None:
            await self.log_watching.stop()
        if self._peer_listener is not None:
            await self._peer_listener.stop()
        if self.dht is not None:
            await self.dht.stop()
        if self.upstream is not None:
            await self.upstream.stop()
        if self.session is not None:
            await self.session.close()
        if self.builder_log is not None:
            self.builder_log.close()
        if self.trust is not None:
            self.trust.close()
        if self.narinfo_checks is not None:
            self.narinfo_checks.close()

    def _gossip_peers(self) -> list[str]:
        """Peers to gossip checkpoints with: the configured ones, then those scored, best first."""
        known = self.ranking.order(list(self.ranking.scores))
        peers = [*self.config.gossip_peers, *known]
        return [url for url in dict.fromkeys(peers) if url != self.peer_url]

    @property
    def peer_port(self) -> int:
        assert self._peer_listener is not None
        return self._peer_listener.port

    def peers_status(self) -> dict:
        """Peers this node scored (best first, at most STATUS_PEERS) and the DHT's size."""
        ranking = self.ranking
        peers = [
            {
                "url": url,
                "successes": score.successes,
                "unavailable": score.unavailable,
                "misbehaved": score.misbehaved,
                "banned": ranking.is_banned(url),
                "throughput_bytes_per_second": round(score.throughput or 0),
            }
            for url, score in sorted(ranking.scores.items(), key=lambda kv: kv[1].rank_key())
        ]
        return {
            "known": len(ranking.scores),
            "banned": ranking.banned_count(),
            "dht_contacts": self.dht.stats.routing_table_size if self.dht is not None else 0,
            "bootstrap": [str(b) for b in self.config.bootstrap],
            "scored": peers[:STATUS_PEERS],
        }

    # -- finding ------------------------------------------------------------------------------

    async def providers_of(self, hash_part: str) -> list[str]:
        """Peer URLs of the other nodes that announced holding an item (a DHT lookup)."""
        return await self._find_providers(hash_part)

    async def _find_providers(self, hash_part: str) -> list[str]:
        try:
            return await self._lookup_providers(hash_part)
        except ProvidersUnknown:
            return []

    async def _lookup_providers(self, hash_part: str) -> list[str]:
        """Other nodes' endpoints for the item; ProvidersUnknown when the DHT lookup found
        nothing and was not complete (nobody answered, or it was cut short)."""
        if self.dht is None:
            return []
        async with self._searches:
            result = await self.dht.find_providers(hash_part)
        if not result.found and not result.complete:
            raise ProvidersUnknown(
                f"the DHT lookup for {hash_part} was incomplete "
                f"({result.queries} queries, {result.unanswered} unanswered)"
            )
        own = self.identity.public_key if self.identity else b""
        endpoints = [r.record.endpoint for r in result.records if r.record.public_key != own]
        return list(dict.fromkeys(endpoints))

    async def _upstream_source(self, hash_part: str) -> AsyncIterator[Candidate]:
        """Every configured upstream asked at once; narinfos yielded as they arrive."""
        assert self.upstream is not None
        upstream = self.upstream

        async def ask(url: str) -> tuple[str, UpstreamNarinfo | None]:
            try:
                return url, await upstream.fetch_narinfo(url, hash_part)
            except P2PCacheError as e:
                log.info("upstream %s could not answer for %s: %s", url, hash_part, e)
                return url, None

        pending = {asyncio.create_task(ask(url)) for url in self.config.upstreams}
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    url, narinfo = task.result()
                    # An item offered only in compressions we cannot decode (lzip) is not
                    # promised to Guix at all (preferred_groups says so in the log).
                    if narinfo is not None and preferred_groups(narinfo.narinfo):
                        self._keep_upstream_narinfo(hash_part, narinfo)
                        yield Candidate(Origin.UPSTREAM, url, narinfo.raw)
        finally:
            for task in pending:
                task.cancel()

    def _keep_upstream_narinfo(self, hash_part: str, narinfo: UpstreamNarinfo) -> None:
        """Kept for the NAR download that may follow; the oldest go first (a NAR whose
        narinfo is gone is asked for again, `_upstream_narinfo_of`)."""
        kept = self._upstream_narinfos
        kept.pop(hash_part, None)
        kept[hash_part] = (narinfo.cache_url, narinfo.raw)
        if len(kept) > MAX_KEPT_UPSTREAM_NARINFOS:
            del kept[next(iter(kept))]

    async def resolve(self, hash_part: str) -> IndexedItem | None:
        assert self.resolver is not None
        resolution = await self.resolver.resolution(hash_part)
        if resolution is None:
            return None
        found = resolution.provenance
        if found.origin is Origin.PEER:
            self.directory.add(hash_part, found.source)
            self.recent_providers.accepted(found.source)
        return resolution.item

    # -- bringing items in --------------------------------------------------------------------

    def stream_item(self, item: IndexedItem) -> AsyncIterator[bytes]:
        """The NAR of an accepted item the cache does not hold yet, fetched as it is sent."""
        return self._fetches.stream(item, self._download)

    def _download(self, item: IndexedItem) -> AsyncIterator[bytes]:
        if item.origin is Origin.UPSTREAM:
            return self._recorded(item, self._from_upstream(item))
        assert self.fetcher is not None
        return self._recorded(item, self.fetcher.stream(item))

    def _read_cached(self, item: IndexedItem) -> AsyncIterator[bytes]:
        """A NAR that another request brought into the cache meanwhile."""
        assert item.nar_file is not None and item.chunk_table is not None
        pieces = self.nar_store.read_nar(item.nar_file, decode_chunk_table(item.chunk_table))
        return iterate_in_thread(lambda: pieces, self.io_executor)

    async def _recorded(
        self, item: IndexedItem, stream: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        """`stream`, with its end (complete, or failed and why) kept in the recent activity."""
        source = "upstream" if item.origin is Origin.UPSTREAM else "peers"
        started = time.monotonic()
        try:
            async for piece in stream:
                yield piece
        except P2PCacheError as e:
            seconds = time.monotonic() - started
            self.activity.transfer(item.basename, source, "failed", 0, seconds, str(e))
            if isinstance(e, FetchedNarMismatch | NarHashMismatch):
                self.activity.verification_failed(
                    "nar_hash", str(e), item=item.basename, source=source
                )
            raise
        seconds = time.monotonic() - started
        self.activity.transfer(item.basename, source, "ok", item.nar_size, seconds)

    async def _from_upstream(self, item: IndexedItem) -> AsyncIterator[bytes]:
        assert self.upstream is not None
        narinfo = await self._upstream_narinfo_of(item)
        async with self.upstream.tee_into_cache(
            narinfo.cache_url,
            narinfo,
            self.nar_store,
            level=self.config.zstd_level,
            executor=self.compress_executor,
        ) as tee:
            # The last piece waits for the NarHash check and the trust policy (below).
            held: bytes | None = None
            async for piece in tee:
                if held is not None:
                    yield held
                held = piece
        try:
            result = await tee.result()
        except P2PCacheError:
            self.counters.upstream_fetches["failed"] += 1
            raise
        table = result.table
        try:
            assert self.trust is not None
            await self.trust.before_commit(item, table.root)
        except P2PCacheError:
            self.nar_store.remove(result.nar_file)
            self.counters.upstream_fetches["refused"] += 1
            raise
        self.counters.upstream_fetches["ok"] += 1
        self._upstream_narinfos.pop(item.hash_part, None)
        await self.index.mark_baked(
            item.hash_part, result.nar_file, table.file_size, table.encode(), table.root
        )
        cached = self.index.get(item.hash_part)
        if cached is not None:
            self._cached(cached)
        if held is not None:
            yield held

    async def _upstream_narinfo_of(self, item: IndexedItem) -> UpstreamNarinfo:
        """Where the NAR of an item accepted from upstream is downloaded from: the narinfo
        kept from its miss, else asked for again. Guix keeps a narinfo for hours and asks for
        the NAR when it needs it, maybe of a node restarted since, or one that has promised
        thousands of other items since. A narinfo asked for again is only used if it
        describes the NAR that was promised (the download is checked against that NarHash)."""
        assert self.upstream is not None
        kept = self._upstream_narinfos.get(item.hash_part)
        if kept is not None:
            url, raw = kept
            narinfo = check_upstream_narinfo(
                raw, url, item.hash_part, store_dir=self.config.store_dir
            )
            if _describes(narinfo, item):
                return narinfo
        found = self.resolver.provenances.get(item.hash_part) if self.resolver else None
        urls = list(self.config.upstreams)
        if found is not None and found.source in urls:
            urls.remove(found.source)
            urls.insert(0, found.source)
        problems = []
        answered = 0  # upstreams that told for sure (gone, or changed)
        for url in urls:
            try:
                narinfo = await self.upstream.fetch_narinfo(url, item.hash_part)
            except P2PCacheError as e:
                problems.append(str(e))
                continue
            answered += 1
            if narinfo is None:
                problems.append(f"{url} no longer has it")
            elif not _describes(narinfo, item):
                problems.append(f"{url} now describes another NAR under that name")
            elif not preferred_groups(narinfo.narinfo):
                problems.append(f"{url} offers it in no compression this node decodes")
            else:
                log.info("asked %s again for the narinfo of %s", url, item.store_path)
                return narinfo
        self.counters.upstream_fetches["failed"] += 1
        problem = "; ".join(problems) or "no upstream is configured"
        if answered == len(urls):
            # Not a passing failure: the promise is withdrawn, and the next narinfo request
            # is a miss again, which finds whatever the upstreams offer now.
            log.warning(
                "withdrew %s: no upstream offers it any more (%s)", item.store_path, problem
            )
            await self._withdraw_promise(item.hash_part)
        raise P2PCacheError(f"{item.store_path}: no upstream offers the NAR promised ({problem})")

    def _cached(self, item: IndexedItem) -> None:
        """A fetched item is in the cache: the node drops its stale narinfo and announces it;
        where it was found no longer matters."""
        if self.resolver is not None:
            self.resolver.provenances.pop(item.hash_part)
        self.on_cached(item)

    # -- announcing ---------------------------------------------------------------------------

    def announce(self, hash_parts: list[str]) -> None:
        """New items in the cache: announced first, within the announcing budget."""
        if self.announcer is not None:
            self.announcer.add_new(hash_parts)

    def note_requested(self, hash_parts: Iterable[str]) -> None:
        """Items Guix or peers asked for: announced before the rest of the store (the
        "popular" tier), if they are still waiting to be announced."""
        if self.announcer is not None:
            for hash_part in hash_parts:
                self.announcer.note_requested(hash_part)

    def withdraw(self, hash_parts: list[str]) -> None:
        """Items gone from the cache: no longer re-announced (their records expire)."""
        if self.announcer is not None:
            self.announcer.withdraw(hash_parts)
        if self.builder_log is not None:
            self.builder_log.bundles.forget_carried(hash_parts)

    def announce_outputs(self, drv_hash_part: str, outputs: dict[str, str]) -> None:
        """Announce which outputs (name -> store path) of a derivation this node holds."""
        if self.announcer is not None and outputs:
            self.announcer.add_outputs(drv_hash_part, outputs, new=True)

    async def which(self, drv_hash_part: str) -> list[dict]:
        """Who holds outputs of this derivation: one entry per node, from the DHT."""
        if self.dht is None:
            return []
        result = await self.dht.find_outputs(drv_hash_part)
        return [
            {
                "node_id": r.record.node_id.hex(),
                "endpoint": r.record.endpoint,
                "outputs": dict(r.record.outputs),
                "expires": r.record.expires,
            }
            for r in result.records
        ]

    async def _announce_existing(self) -> None:
        """At start, queue everything the cache holds (the DHT forgets after a day); new
        items go before these."""
        after = ""
        while self.announcer is not None:
            page = await self.index.baked_hash_parts(after, ANNOUNCE_PAGE)
            if not page:
                return
            self.announcer.add_existing(page)
            after = page[-1]


def _describes(narinfo: UpstreamNarinfo, item: IndexedItem) -> bool:
    """Whether an upstream narinfo is for the NAR the node accepted (and checks downloads
    against): the kept one always should be, one asked for again may not."""
    return (narinfo.store_path.path, narinfo.nar_sha256, narinfo.nar_size) == (
        item.store_path,
        parse_nar_hash(item.nar_hash),
        item.nar_size,
    )
