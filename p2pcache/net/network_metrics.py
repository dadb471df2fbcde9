"""Prometheus families of the peer network, read from plain counters when scraped.

The DHT keeps its own plain counters (net/dht_stats.DHTStats); transfers, the miss path and
peer ranking report through the small `NetworkCounters` below. A custom collector turns both
into metric families at scrape time, so the network's hot paths never touch a lock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from p2pcache.net.dht_stats import DHTStats, SecondsHistogram
from p2pcache.trust.narinfo_check_pool import CheckCounts

MISS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class NetworkCounters:
    transfer_bytes: Counter[str] = field(default_factory=Counter)  # in, out
    transfers: Counter[str] = field(default_factory=Counter)  # ok, failed, no-provider
    chunk_failures: Counter[str] = field(default_factory=Counter)  # bad-chunk, bad-table, ...
    failovers: int = 0  # batches of chunks moved to another provider mid-transfer
    misses: Counter[str] = field(default_factory=Counter)  # found, absent, timeout, inconclusive
    miss_seconds: SecondsHistogram = field(
        default_factory=lambda: SecondsHistogram(MISS_BUCKETS, [0] * (len(MISS_BUCKETS) + 1))
    )
    narinfos_refused: Counter[str] = field(default_factory=Counter)  # by reason
    # per miss: recent, dht, hedged; per ask of a recent provider: held, not-held, failed,
    # refused
    provider_searches: Counter[str] = field(default_factory=Counter)
    narinfo_checks: CheckCounts = field(default_factory=CheckCounts)
    upstream_fetches: Counter[str] = field(default_factory=Counter)  # ok, failed
    # attestations (bundles sent), checkpoint, inclusion, consistency
    log_served: Counter[str] = field(default_factory=Counter)
    trust: TrustCounters = field(default_factory=lambda: TrustCounters())


@dataclass
class TrustCounters:
    """What the trust policy decided and met: decisions, refused evidence, conflicts, forks."""

    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (outcome, reason)
    evidence_refused: Counter[str] = field(default_factory=Counter)  # by reason
    checkpoints: Counter[str] = field(default_factory=Counter)  # by observation outcome
    conflicts: int = 0
    forks: int = 0

    def count_decision(self, decision) -> None:
        self.decisions[(decision.outcome, decision.reason)] += 1

    def count_refusal(self, reason: str) -> None:
        self.evidence_refused[reason] += 1

    def count_checkpoint(self, outcome: str) -> None:
        self.checkpoints[outcome] += 1

    def count_conflict(self, conflict) -> None:
        self.conflicts += 1

    def count_fork(self, evidence) -> None:
        self.forks += 1

    def families(self) -> Iterator[Metric]:
        decisions = CounterMetricFamily(
            "p2pcache_trust_decisions",
            "Trust policy decisions on items, by outcome (accepted, refused) and reason.",
            labels=["outcome", "reason"],
        )
        for (outcome, reason), value in sorted(self.decisions.items()):
            decisions.add_metric([outcome, reason], value)
        yield decisions
        yield _counter(
            "p2pcache_trust_evidence_refused",
            "Attestations or bundles that did not count, by reason (bad-signature, ...).",
            "reason",
            self.evidence_refused,
        )
        yield _counter(
            "p2pcache_trust_checkpoints_observed",
            "Builder checkpoints judged against the newest seen, by outcome.",
            "outcome",
            self.checkpoints,
        )
        yield CounterMetricFamily(
            "p2pcache_trust_conflicts",
            "Trusted builders attesting another NarHash for an item than its narinfo.",
            value=self.conflicts,
        )
        yield CounterMetricFamily(
            "p2pcache_trust_forks_detected",
            "Builder logs found forked (two checkpoints that cannot both be true).",
            value=self.forks,
        )


def _histogram(name: str, doc: str, histogram: SecondsHistogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc)
    running, buckets = 0, []
    for bound, count in zip((*map(str, histogram.bounds), "+Inf"), histogram.counts, strict=True):
        running += count
        buckets.append((bound, running))
    family.add_metric([], buckets, histogram.total)
    return family


def _counter(name: str, doc: str, label: str, values: Counter) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([str(key)], value)
    return family


class NetworkCollector(Collector):
    def __init__(
        self,
        counters: NetworkCounters,
        dht_stats: Callable[[], DHTStats | None],
        peers: Callable[[], tuple[int, int]],
    ) -> None:
        self.counters = counters
        self.dht_stats = dht_stats
        self.peers = peers

    def collect(self) -> Iterator[Metric]:
        c = self.counters
        yield _counter(
            "p2pcache_transfer_bytes",
            "Compressed NAR bytes moved between peers, by direction (in, out).",
            "direction",
            c.transfer_bytes,
        )
        yield _counter(
            "p2pcache_transfers",
            "NAR fetches from peers, by outcome (ok, failed, no-provider).",
            "outcome",
            c.transfers,
        )
        yield _counter(
            "p2pcache_chunk_failures",
            "Chunks or chunk tables from peers that failed a check, by reason.",
            "reason",
            c.chunk_failures,
        )
        yield CounterMetricFamily(
            "p2pcache_transfer_failovers",
            "Batches of chunks taken from another provider after theirs failed or lied mid-way.",
            c.failovers,
        )
        yield _counter(
            "p2pcache_miss_lookups",
            "Narinfo misses looked up among peers and upstreams, by outcome.",
            "outcome",
            c.misses,
        )
        yield _histogram(
            "p2pcache_miss_duration_seconds",
            "Time to resolve a narinfo miss (peers and upstreams asked at once).",
            c.miss_seconds,
        )
        yield _counter(
            "p2pcache_narinfos_refused",
            "Relayed narinfos not accepted, by reason (signature verdict, layout, item).",
            "reason",
            c.narinfos_refused,
        )
        searches = c.provider_searches
        yield _counter(
            "p2pcache_miss_provider_searches",
            "How the providers of a miss were found: recent (a peer that provided lately had "
            "it, no DHT search), dht (a DHT search), hedged (a DHT search begun while recent "
            "peers were still asked).",
            "how",
            {how: searches[how] for how in ("recent", "dht", "hedged")},
        )
        yield _counter(
            "p2pcache_miss_recent_peer_asks",
            "Narinfos asked of peers that provided lately, before any DHT search, by answer "
            "(held, not-held, failed; refused: held, but the node refused the narinfo).",
            "answer",
            {answer: searches[answer] for answer in ("held", "not-held", "failed", "refused")},
        )
        checks = CounterMetricFamily(
            "p2pcache_narinfo_checks",
            "Relayed narinfos checked, by where (loop: on the event loop; worker: in the "
            "checking process, in batches).",
            labels=["where"],
        )
        checks.add_metric(["loop"], c.narinfo_checks.inline)
        checks.add_metric(["worker"], c.narinfo_checks.offloaded)
        yield checks
        yield CounterMetricFamily(
            "p2pcache_narinfo_check_batches",
            "Batches of narinfos handed to the checking process.",
            c.narinfo_checks.batches,
        )
        yield GaugeMetricFamily(
            "p2pcache_narinfo_check_processes",
            "Narinfo checking processes running and ready (started at the first miss).",
            c.narinfo_checks.processes_ready,
        )
        yield CounterMetricFamily(
            "p2pcache_narinfo_check_worker_restarts",
            "Times the checking process stopped and was started again.",
            c.narinfo_checks.worker_failures,
        )
        yield _counter(
            "p2pcache_upstream_fetches",
            "NARs fetched from upstream substitute servers, by outcome.",
            "outcome",
            c.upstream_fetches,
        )
        yield CounterMetricFamily(
            "p2pcache_attestations_served",
            "Attestation bundles (own and carried) sent to peers.",
            c.log_served["attestations"],
        )
        yield CounterMetricFamily(
            "p2pcache_checkpoints_served",
            "Signed checkpoints of this node's builder log sent to peers.",
            c.log_served["checkpoint"],
        )
        yield _counter(
            "p2pcache_log_proofs_served",
            "Proofs from this node's builder log sent to peers, by kind.",
            "kind",
            Counter({k: c.log_served[k] for k in ("inclusion", "consistency")}),
        )
        yield from c.trust.families()
        known, banned = self.peers()
        yield GaugeMetricFamily("p2pcache_peers_known", "Peers this node has a score for.", known)
        yield GaugeMetricFamily(
            "p2pcache_peers_banned", "Peers banned for sending bad data.", banned
        )
        stats = self.dht_stats()
        if stats is None:
            return
        yield GaugeMetricFamily(
            "p2pcache_dht_routing_table_size",
            "Contacts in the DHT routing table.",
            stats.routing_table_size,
        )
        lookups = CounterMetricFamily(
            "p2pcache_dht_lookups",
            "DHT lookups, by kind (providers, outputs, nodes) and outcome.",
            labels=["kind", "outcome"],
        )
        for (kind, outcome), value in sorted(stats.lookups.items()):
            lookups.add_metric([kind, outcome], value)
        yield lookups
        yield _histogram(
            "p2pcache_dht_lookup_duration_seconds", "DHT lookup latency.", stats.lookup_seconds
        )
        for name, doc, counts in (
            (
                "p2pcache_dht_lookup_rounds",
                "Crawl rounds a DHT lookup took to its end.",
                stats.lookup_rounds,
            ),
            (
                "p2pcache_dht_lookup_rounds_to_first_record",
                "Crawl rounds until the first valid record arrived.",
                stats.lookup_rounds_to_first,
            ),
        ):
            family = HistogramMetricFamily(name, doc)
            bounds = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20)
            buckets, running = [], 0
            for bound in bounds:
                running = sum(v for r, v in counts.items() if r <= bound)
                buckets.append((str(bound), running))
            total = sum(counts.values())
            buckets.append(("+Inf", total))
            family.add_metric([], buckets, sum(r * v for r, v in counts.items()))
            yield family
        yield CounterMetricFamily(
            "p2pcache_dht_records_stored", "Valid DHT records stored.", stats.records_stored
        )
        yield _counter(
            "p2pcache_dht_records_rejected",
            "DHT records refused, by reason (bad signature, expired, quota, ...).",
            "reason",
            stats.records_rejected,
        )
        yield _counter(
            "p2pcache_dht_datagrams_dropped",
            "Incoming DHT datagrams dropped, by reason (malformed, oversize, rate limit, ...).",
            "reason",
            stats.datagrams_dropped,
        )
        yield CounterMetricFamily(
            "p2pcache_dht_keys_announced", "Keys this node announced.", stats.keys_announced
        )
        yield _counter(
            "p2pcache_dht_rpcs_sent",
            "DHT requests this node sent, by RPC (find_value, find_node, store, ping).",
            "rpc",
            stats.rpcs_sent,
        )
        yield _counter(
            "p2pcache_dht_rpcs_received",
            "DHT requests this node answered, by RPC.",
            "rpc",
            stats.rpcs_received,
        )
        datagrams = CounterMetricFamily(
            "p2pcache_dht_datagrams", "DHT datagrams, by direction (in, out).", labels=["direction"]
        )
        octets = CounterMetricFamily(
            "p2pcache_dht_bytes",
            "Bytes of DHT datagrams, by direction (in, out).",
            labels=["direction"],
        )
        for direction, count, size in (
            ("in", stats.datagrams_received, stats.bytes_received),
            ("out", stats.datagrams_sent, stats.bytes_sent),
        ):
            datagrams.add_metric([direction], count)
            octets.add_metric([direction], size)
        yield datagrams
        yield octets
        yield CounterMetricFamily(
            "p2pcache_dht_rpc_timeouts", "DHT requests that timed out.", stats.rpc_timeouts
        )
        yield CounterMetricFamily(
            "p2pcache_dht_contacts_evicted",
            "Contacts removed from the DHT routing table as stale (several RPCs unanswered).",
            stats.contacts_evicted,
        )
        yield _counter(
            "p2pcache_dht_rebootstraps",
            "Re-joins through the bootstrap peers after losing every live contact, by outcome.",
            "outcome",
            Counter({"joined": 0, "failed": 0, **stats.rebootstraps}),  # both, even at 0
        )
