"""Plain counters about the DHT, for the node to export to Prometheus.

Nothing here knows Prometheus: the DHT updates integers on the event loop's thread, and the
metrics layer reads them when scraped (the same approach as p2pcache.metrics.FastCounter, for
the same reason: a counter update on the hot path must cost nanoseconds, not a lock). Labels
are small fixed vocabularies (a reason word, an RPC name, an outcome), never an address.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

# Lookup latency buckets, in seconds: loopback lookups take about a millisecond, a WAN lookup
# a few round trips, and a lookup is cut at twice the RPC timeout.
LOOKUP_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class SecondsHistogram:
    """Counts per upper bound (the last slot is +Inf) and the sum, like a Prometheus histogram."""

    bounds: tuple[float, ...] = LOOKUP_SECONDS_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LOOKUP_SECONDS_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass
class DHTStats:
    """Everything the DHT counts. Reasons and outcomes are the words listed in the fields."""

    routing_table_size: int = 0
    datagrams_received: int = 0
    datagrams_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    # oversize, short, malformed, unknown_type, rate_limited, unsolicited, wrong_source,
    # bad_arguments, unknown_rpc, error
    datagrams_dropped: Counter[str] = field(default_factory=Counter)
    rpcs_sent: Counter[str] = field(default_factory=Counter)  # by RPC name
    rpcs_received: Counter[str] = field(default_factory=Counter)  # by RPC name
    rpc_timeouts: int = 0
    # contacts removed from the routing table as stale (paper §4.1: several RPCs unanswered)
    contacts_evicted: int = 0
    # re-joins through the bootstrap peers after the table lost every live contact, by
    # outcome (joined, failed)
    rebootstraps: Counter[str] = field(default_factory=Counter)
    records_stored: int = 0  # records accepted into storage (new, or newer than held)
    # provider_record.REJECTION_REASONS, plus key_full, source_quota, storage_full, wrong_kind
    records_rejected: Counter[str] = field(default_factory=Counter)
    records_expired: int = 0  # dropped from storage because their signed expiry passed
    contacts_refused: Counter[str] = field(default_factory=Counter)  # per_ip, per_subnet
    # lookups by kind (providers, outputs, nodes) and outcome (found, not_found, incomplete)
    lookups: Counter[tuple[str, str]] = field(default_factory=Counter)
    lookup_rounds_to_first: Counter[int] = field(default_factory=Counter)
    lookup_rounds: Counter[int] = field(default_factory=Counter)
    lookup_seconds: SecondsHistogram = field(default_factory=SecondsHistogram)
    keys_announced: int = 0
    store_rpcs: int = 0  # STORE and store_many requests sent (each one datagram)

    def observe_lookup(
        self, kind: str, outcome: str, rounds_to_first: int | None, rounds: int, seconds: float
    ) -> None:
        """Count one finished lookup."""
        self.lookups[(kind, outcome)] += 1
        if rounds_to_first is not None:
            self.lookup_rounds_to_first[rounds_to_first] += 1
        self.lookup_rounds[rounds] += 1
        self.lookup_seconds.observe(seconds)
