"""The DHT node: joins the Kademlia network, announces this node's items, finds providers.

A wrapper around kademlia's parts rather than a `kademlia.network.Server` subclass: of the
Server, everything but the wiring would have to be replaced (its get/set stop at the first
value and cache it, its refresh republishes every stored key forever, its state file is a
pickle, its bootstrap uses the lock-step crawler). The parts it wires:

* DHTProtocol (validated RPCs, limits) over ProviderStorage (validated, merged, expiring
  records) with a BoundedRoutingTable (address limits, correct neighbour search);
* Lookup (collect-all, not lock-step) for find_providers / find_outputs and joins;
* RecordPlacer (grouped, batched STOREs) for announcing.

Life cycle: `await start(host, port, bootstrap)`, then `await stop()`. While running, a
maintenance task re-announces this node's own records at half their lifetime (and only
those: records of others expire at their signed time), refreshes k-buckets with no lookup in
the last hour (paper §2.3), and saves the neighbours as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kademlia.node import Node

from p2pcache.net.dht_crawl import CrawlConfig, Lookup, LookupResult
from p2pcache.net.dht_protocol import (
    REQUEST_BURST_PER_IP,
    REQUESTS_PER_SECOND_PER_IP,
    DHTProtocol,
    ProtocolConfig,
)
from p2pcache.net.dht_routing import ContactLimits
from p2pcache.net.dht_state import load_neighbours, save_neighbours
from p2pcache.net.dht_stats import DHTStats
from p2pcache.net.dht_storage import ProviderStorage, StorageLimits
from p2pcache.net.dht_store import PlacementConfig, RecordPlacer, StoreReport
from p2pcache.net.identity import NodeIdentity
from p2pcache.net.provider_record import (
    MAX_TTL,
    OutputsRecord,
    ProviderRecord,
    Record,
    RecordKind,
    SignedRecord,
    make_outputs,
    outputs_key,
    provider_key,
    sign_record,
)

log = logging.getLogger(__name__)

# Records signed per event-loop turn when announcing many items (about 25 µs each).
_SIGN_CHUNK = 500

RECEIVE_BUFFER_BYTES = 4 << 20
"""The UDP socket's receive buffer asked for (SO_RCVBUF). Replies to a node's own lookups
arrive in bursts: a Guix batch runs 256 lookups at once, each asking up to alpha nodes (all
k at the end), and the replies wait in the socket while the event loop is busy with other
work. The kernel's default (net.core.rmem_default, 212 KB on Linux: about 300 full-sized
replies with their overhead) dropped 500-640 replies of one batch of 1000 misses
(loadtest/RESULTS.md), each one a timed-out RPC. 4 MiB holds several thousand. Linux caps it
at net.core.rmem_max unless the process may raise it; what the kernel granted is logged."""


@dataclass(frozen=True)
class DHTConfig:
    """Everything a DHT node can be tuned with. Defaults suit a node on the internet."""

    ksize: int = 20  # paper's k: replicas per key, contacts per bucket
    alpha: int = 3  # paper's alpha: concurrent queries of a lookup
    rpc_timeout: float = 1.5
    record_ttl: int = MAX_TTL  # lifetime of this node's records; re-announced at half
    enough_records: int = 8  # a provider lookup may stop with this many providers
    lookup_seconds: float | None = None  # None: twice rpc_timeout
    refresh_interval: float = 3600.0  # paper §2.3: refresh buckets idle this long
    maintenance_interval: float = 60.0  # how often due work is looked for
    state_save_interval: float = 600.0
    refresh_on_join: bool = True  # paper §2.3: after joining, refresh farther buckets
    requests_per_second_per_ip: float = REQUESTS_PER_SECOND_PER_IP  # see dht_protocol
    request_burst_per_ip: float = REQUEST_BURST_PER_IP
    receive_buffer_bytes: int = RECEIVE_BUFFER_BYTES  # SO_RCVBUF of the UDP socket; 0: leave it
    stale_after_failures: int = 5  # paper §4.1; see ProtocolConfig
    stale_seconds: float = 60.0
    # After the table lost every live contact: how long to wait between two re-joins
    # through the bootstrap peers (a lookup meanwhile reports itself incomplete).
    rebootstrap_interval: float = 10.0
    announce_requests_per_second: float | None = None  # STORE pacing; None: unpaced
    contact_limits: ContactLimits = field(default_factory=ContactLimits)
    storage_limits: StorageLimits = field(default_factory=StorageLimits)

    def protocol_config(self) -> ProtocolConfig:
        return ProtocolConfig(
            ksize=self.ksize,
            rpc_timeout=self.rpc_timeout,
            requests_per_second_per_ip=self.requests_per_second_per_ip,
            request_burst_per_ip=self.request_burst_per_ip,
            stale_after_failures=self.stale_after_failures,
            stale_seconds=self.stale_seconds,
            contact_limits=self.contact_limits,
        )

    def crawl_config(self) -> CrawlConfig:
        return CrawlConfig(
            ksize=self.ksize,
            alpha=self.alpha,
            enough_records=self.enough_records,
            max_in_flight=2 * self.ksize,
            max_seconds=self.lookup_seconds,
            contact_limits=self.contact_limits,
        )

    def placement_config(self) -> PlacementConfig:
        return PlacementConfig(
            ksize=self.ksize,
            walk_ksize=2 * self.ksize,
            requests_per_second=self.announce_requests_per_second,
        )


@dataclass
class _OwnRecord:
    """What this node announced under a key, to re-sign and re-announce it."""

    kind: RecordKind
    endpoint: str
    ttl: int
    issued: int
    outputs: tuple[tuple[str, str], ...] = ()


class DHTNode:
    """One node of the p2pcache DHT. Not usable before `start` or after `stop`."""

    def __init__(
        self,
        identity: NodeIdentity,
        config: DHTConfig | None = None,
        *,
        state_file: Path | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.identity = identity
        self.config = config or DHTConfig()
        self.state_file = state_file
        self.clock = clock
        self.rng = rng or random.Random()
        self.node = Node(identity.node_id)
        self._stats = DHTStats()
        self.storage = ProviderStorage(
            self.config.storage_limits, clock=clock, rng=self.rng, stats=self._stats
        )
        self.protocol: DHTProtocol | None = None
        self.placer: RecordPlacer | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._own: dict[bytes, _OwnRecord] = {}
        self._maintenance: asyncio.Task | None = None
        self._bootstrap_peers: list[tuple[str, int]] = []
        self._rejoin: asyncio.Task | None = None
        self._next_rejoin = 0.0

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self, host: str, port: int, bootstrap: Sequence[tuple[str, int]] = ()) -> None:
        """Listen on host:port (UDP; port 0 picks one), then join through `bootstrap` and the
        neighbours saved by the last run."""
        if self._transport is not None:
            raise RuntimeError("the DHT node is already started")
        loop = asyncio.get_running_loop()
        self._transport, self.protocol = await loop.create_datagram_endpoint(
            lambda: DHTProtocol(
                self.node, self.storage, self.config.protocol_config(), self._stats
            ),
            local_addr=(host, port),
        )
        if self.config.receive_buffer_bytes:
            set_receive_buffer(self._transport, self.config.receive_buffer_bytes)
        self.placer = RecordPlacer(
            self.protocol,
            self.storage,
            self.config.placement_config(),
            self.config.crawl_config(),
            clock=self.clock,
        )
        log.info("DHT node %s listening on %s:%d (UDP)", self.node.id.hex()[:12], *self.address)
        peers = list(bootstrap)
        if self.state_file is not None:
            saved = load_neighbours(self.state_file)
            peers += [address for address in saved if address not in peers]
        self._bootstrap_peers = peers
        if peers:
            await self.bootstrap(peers)
        self._maintenance = asyncio.create_task(self._maintain())

    async def stop(self) -> None:
        """Stop maintenance, save the neighbours, close the socket. Records already placed stay
        in the network until their signed expiry."""
        for task in (self._maintenance, self._rejoin):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._maintenance = self._rejoin = None
        if self._transport is not None:
            self._save_state()
            self._transport.close()
            self._transport = None
            log.info("DHT node %s stopped", self.node.id.hex()[:12])

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the node listens on."""
        if self._transport is None:
            raise RuntimeError("the DHT node is not started")
        host, port = self._transport.get_extra_info("sockname")[:2]
        return host, port

    @property
    def node_id(self) -> bytes:
        return self.node.id

    @property
    def stats(self) -> DHTStats:
        """The counters, with the routing-table size brought up to date."""
        if self.protocol is not None:
            self._stats.routing_table_size = self.protocol.router.size()
        return self._stats

    def neighbours(self) -> list[Node]:
        """The contacts closest to this node (what a restart bootstraps from)."""
        return self._protocol().router.find_neighbors(self.node, self.config.ksize)

    # -- joining -------------------------------------------------------------------------------

    async def bootstrap(
        self, addresses: Sequence[tuple[str, int]], *, refresh: bool | None = None
    ) -> int:
        """Join through these peers (paper §2.3): ping them, look up our own id, then refresh
        the buckets farther away (if `refresh`, by default `refresh_on_join`). Returns the
        number of contacts in the routing table."""
        protocol = self._protocol()
        resolved = await asyncio.gather(*(self._resolve(host, port) for host, port in addresses))
        targets = [address for address in resolved if address is not None]
        answers = await asyncio.gather(*(protocol.ping(a, self.node.id) for a in targets))
        for (host, port), (answered, node_id) in zip(targets, answers, strict=True):
            if answered and node_id != self.node.id:
                protocol.heard_from(Node(node_id, host, port))
        if protocol.router.size() == 0:
            log.warning(
                "no DHT bootstrap peer answered (%d tried); the node waits for others to "
                "contact it",
                len(targets),
            )
            return 0
        await Lookup(protocol, self.node.id, self.config.crawl_config(), clock=self.clock).run()
        if self.config.refresh_on_join if refresh is None else refresh:
            await self.refresh_buckets(all_buckets=True)
        log.info(
            "joined the DHT through %d peer(s); %d contacts known",
            len(targets),
            protocol.router.size(),
        )
        return protocol.router.size()

    async def rejoin_if_alone(self) -> None:
        """Join again through the bootstrap peers (those configured, and the neighbours saved
        by the last run) when the routing table holds no live contact: a node whose contacts
        all went stale (or never answered) would otherwise be blind until a bucket refresh
        or until someone contacts it. Concurrent callers share one re-join; after one, the
        next waits `rebootstrap_interval`."""
        protocol = self._protocol()
        if self._rejoin is None:
            now = asyncio.get_running_loop().time()
            if protocol.live_contacts() or not self._bootstrap_peers or now < self._next_rejoin:
                return
            self._next_rejoin = now + self.config.rebootstrap_interval
            self._rejoin = asyncio.create_task(self._join_again())
            self._rejoin.add_done_callback(self._rejoined)
        await asyncio.shield(self._rejoin)

    def _rejoined(self, task: asyncio.Task) -> None:
        if self._rejoin is task:
            self._rejoin = None

    async def _join_again(self) -> None:
        log.warning(
            "the DHT routing table has no live contact (%d stale); joining again through "
            "%d bootstrap peer(s)",
            self._protocol().router.size(),
            len(self._bootstrap_peers),
        )
        try:
            # No refresh of every bucket (that is for a first join, and would hold the
            # lookups waiting for this): the own-id lookup finds the neighbourhood again,
            # and the hourly refresh does the rest.
            contacts = await self.bootstrap(self._bootstrap_peers, refresh=False)
        except Exception:
            log.warning("joining the DHT again failed", exc_info=True)
            contacts = 0
        self._stats.rebootstraps["joined" if contacts else "failed"] += 1

    async def _resolve(self, host: str, port: int) -> tuple[str, int] | None:
        try:
            return str(ipaddress.ip_address(host)), port
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM), self.config.rpc_timeout * 2
            )
        except (OSError, TimeoutError) as error:
            log.warning("could not resolve the DHT bootstrap host %s (%s)", host, error)
            return None
        return (infos[0][4][0], port) if infos else None

    async def refresh_buckets(self, *, all_buckets: bool = False) -> None:
        """Paper §2.3: look up a random id in each bucket not looked up in the last refresh
        interval (or, on join, in every bucket that does not hold our own id)."""
        protocol = self._protocol()
        router = protocol.router
        if all_buckets:
            buckets = [b for b in router.buckets if not b.has_in_range(self.node)]
        else:
            idle_since = time.monotonic() - self.config.refresh_interval
            buckets = [b for b in router.buckets if b.last_updated < idle_since]
        targets = [
            self.rng.randint(*b.range).to_bytes(20, "big") for b in buckets if b.range[1] > 0
        ]
        await asyncio.gather(
            *(
                Lookup(protocol, target, self.config.crawl_config(), clock=self.clock).run()
                for target in targets
            )
        )

    # -- announcing ----------------------------------------------------------------------------

    async def announce(
        self, hash_parts: Sequence[str], endpoint_url: str, ttl: int | None = None
    ) -> StoreReport:
        """Announce that this node serves these store items at `endpoint_url`.

        The records are signed now, valid for `ttl` seconds (at most a day; the configured
        record TTL by default), placed on the k closest nodes of each key and re-announced by
        this node at half their lifetime until `withdraw`.
        """
        return await self.announce_many(hash_parts, {}, endpoint_url, ttl)

    async def announce_outputs(
        self,
        drv_hash_part: str,
        outputs: Mapping[str, str],
        endpoint_url: str,
        ttl: int | None = None,
    ) -> StoreReport:
        """Announce that this node holds these outputs (name -> store path) of a derivation
        whose `.drv` has hash part `drv_hash_part`."""
        return await self.announce_many((), {drv_hash_part: outputs}, endpoint_url, ttl)

    async def announce_many(
        self,
        hash_parts: Sequence[str],
        derivations: Mapping[str, Mapping[str, str]],
        endpoint_url: str,
        ttl: int | None = None,
    ) -> StoreReport:
        """Announce items and derivation outputs together (one grouped placement)."""
        ttl = self._ttl(ttl)
        entries = {
            provider_key(h): _OwnRecord(RecordKind.PROVIDER, endpoint_url, ttl, 0)
            for h in hash_parts
        }
        for drv_hash_part, outputs in derivations.items():
            entries[outputs_key(drv_hash_part)] = _OwnRecord(
                RecordKind.OUTPUTS, endpoint_url, ttl, 0, make_outputs(outputs)
            )
        return await self._announce_entries(entries)

    def withdraw(self, hash_parts: Sequence[str] = (), drv_hash_parts: Sequence[str] = ()) -> None:
        """Stop re-announcing these items; records already out expire at their signed time."""
        for h in hash_parts:
            self._own.pop(provider_key(h), None)
        for h in drv_hash_parts:
            self._own.pop(outputs_key(h), None)

    def announced_count(self) -> int:
        """How many keys this node keeps announced."""
        return len(self._own)

    async def reannounce_due(self) -> StoreReport:
        """Re-sign and re-place this node's records that are at half their lifetime or more."""
        now = self.clock()
        due = {key: e for key, e in self._own.items() if e.issued + e.ttl / 2 <= now}
        if not due:
            return StoreReport()
        log.info("re-announcing %d of this node's DHT records at half their lifetime", len(due))
        return await self._announce_entries(due)

    async def _announce_entries(self, entries: dict[bytes, _OwnRecord]) -> StoreReport:
        """Sign every record first (so a bad endpoint or output fails before anything is
        sent), then keep them locally, remember them as ours, and place them."""
        placer = self._placer()
        records: list[SignedRecord] = []
        for index, (key, entry) in enumerate(entries.items()):
            if index and index % _SIGN_CHUNK == 0:
                await asyncio.sleep(0)  # let the node answer peers while signing
            issued = int(self.clock())
            record = self._make_record(entry, issued)
            records.append(sign_record(key, record, self.identity.signing_key))
        for record in records:
            entry = entries[record.key]
            entry.issued = record.record.issued
            self._own[record.key] = entry
            self.storage.add(record)
        report = await placer.place(records)
        self._stats.keys_announced += len(records)
        log.info(
            "announced %d key(s) in the DHT: %d placed, %d replicas, %d requests, %.2f s",
            report.keys,
            report.keys_placed,
            report.replicas,
            report.requests,
            report.seconds,
        )
        return report

    def _make_record(self, entry: _OwnRecord, issued: int) -> Record:
        public_key = self.identity.public_key
        if entry.kind == RecordKind.PROVIDER:
            return ProviderRecord(public_key, entry.endpoint, issued, issued + entry.ttl)
        return OutputsRecord(public_key, entry.endpoint, issued, issued + entry.ttl, entry.outputs)

    def _ttl(self, ttl: int | None) -> int:
        ttl = self.config.record_ttl if ttl is None else ttl
        if not 0 < ttl <= MAX_TTL:
            raise ValueError(f"a record lifetime is 1 to {MAX_TTL} seconds, not {ttl}")
        return ttl

    # -- finding -------------------------------------------------------------------------------

    async def find_providers(self, hash_part: str) -> LookupResult:
        """Nodes that announced they serve the store item with this hash part."""
        return await self._find(provider_key(hash_part), RecordKind.PROVIDER, "providers")

    async def find_outputs(self, drv_hash_part: str) -> LookupResult:
        """Nodes that announced holding outputs of the derivation with this hash part."""
        return await self._find(outputs_key(drv_hash_part), RecordKind.OUTPUTS, "outputs")

    async def find_records(self, key: bytes, kind: RecordKind) -> LookupResult:
        """The lookup behind find_providers / find_outputs, for a raw DHT key."""
        label = "providers" if kind == RecordKind.PROVIDER else "outputs"
        return await self._find(key, kind, label)

    async def _find(self, key: bytes, kind: RecordKind, label: str) -> LookupResult:
        await self.rejoin_if_alone()
        local = [r for r in self.storage.records(key) if r.record.kind == kind]
        lookup = Lookup(
            self._protocol(),
            key,
            self.config.crawl_config(),
            kind=kind,
            clock=self.clock,
            local_records=local,
        )
        result = await lookup.run()
        outcome = "found" if result.found else ("not_found" if result.complete else "incomplete")
        self._stats.observe_lookup(
            label, outcome, result.rounds_to_first, result.rounds, result.seconds
        )
        return result

    # -- maintenance ---------------------------------------------------------------------------

    async def _maintain(self) -> None:
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + self.config.refresh_interval
        next_save = loop.time() + self.config.state_save_interval
        while True:
            await asyncio.sleep(self.config.maintenance_interval)
            try:
                await self.rejoin_if_alone()
                await self.reannounce_due()
                self.storage.purge_expired()
                if loop.time() >= next_refresh:
                    next_refresh = loop.time() + self.config.refresh_interval
                    await self.refresh_buckets()
                if loop.time() >= next_save:
                    next_save = loop.time() + self.config.state_save_interval
                    self._save_state()
            except Exception:
                log.warning("DHT maintenance failed; it will run again", exc_info=True)

    def _save_state(self) -> None:
        if self.state_file is None or self.protocol is None:
            return
        neighbours = self.neighbours()
        if not neighbours:
            return
        try:
            save_neighbours(self.state_file, self.node.id, neighbours)
        except OSError as error:
            log.warning("could not save the DHT neighbours to %s: %s", self.state_file, error)

    def _protocol(self) -> DHTProtocol:
        if self.protocol is None or self._transport is None:
            raise RuntimeError("the DHT node is not started")
        return self.protocol

    def _placer(self) -> RecordPlacer:
        self._protocol()
        assert self.placer is not None
        return self.placer


def set_receive_buffer(transport: asyncio.DatagramTransport, size: int) -> int:
    """Ask for a `size`-byte receive buffer on the transport's socket; log and return what
    the kernel granted (Linux reports twice the usable size, and caps the request at
    net.core.rmem_max)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    before = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except OSError as error:
        log.warning("could not set the DHT socket's receive buffer to %d bytes: %s", size, error)
        return before
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    level = logging.INFO if granted >= size else logging.WARNING
    log.log(
        level,
        "DHT socket receive buffer: %d bytes asked, %d granted (was %d)%s",
        size,
        granted,
        before,
        "" if granted >= size else "; raise net.core.rmem_max to allow more",
    )
    return granted
