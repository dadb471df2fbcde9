"""Prometheus families of log watching: checkpoint gossip, the witness, cosignatures collected.

Same conventions as net/network_metrics.py: the services count into plain counters, a custom
collector turns them into families when scraped. Every family is exported from the start
(with no traffic yet), so the dashboard and alerts can rely on the names.

Forks found by gossip or by the witness are counted through `on_fork` into the trust policy's
`p2pcache_trust_forks_detected_total` (net/network_metrics.TrustCounters), with those the
attestation verifier finds: one number, whoever found the fork, for the operator to alert on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass
class LogWatchCounters:
    gossip_checkpoints: Counter[str] = field(default_factory=Counter)  # by outcome
    gossip_pulls: Counter[str] = field(default_factory=Counter)  # ok, unavailable, misbehaved
    witness_checkpoints: Counter[str] = field(default_factory=Counter)  # by witness outcome
    cosignatures_collected: Counter[str] = field(default_factory=Counter)  # attached, ...
    on_fork: Callable[[object], None] = lambda evidence: None
    """Counts a fork where every fork is counted (TrustCounters.count_fork)."""

    def count_fork(self, evidence: object = None) -> None:
        self.on_fork(evidence)


def _counter(name: str, doc: str, label: str, values: Counter[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class LogWatchCollector(Collector):
    def __init__(self, counters: LogWatchCounters) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        c = self.counters
        yield _counter(
            "p2pcache_gossip_checkpoints",
            "Builder checkpoints received by gossip from peers, by what the node made of them.",
            "outcome",
            c.gossip_checkpoints,
        )
        yield _counter(
            "p2pcache_gossip_pulls",
            "Checkpoint lists asked of peers, by result (ok, unavailable, misbehaved).",
            "result",
            c.gossip_pulls,
        )
        yield _counter(
            "p2pcache_witness_checkpoints",
            "Builder checkpoints this node judged as a witness, by outcome (cosigned, ...).",
            "outcome",
            c.witness_checkpoints,
        )
        yield CounterMetricFamily(
            "p2pcache_witness_cosignatures",
            "Builder checkpoints this node cosigned as a witness.",
            value=c.witness_checkpoints["cosigned"],
        )
        yield _counter(
            "p2pcache_builder_cosignatures_collected",
            "Witness cosignatures of this builder's checkpoints collected, by result.",
            "result",
            c.cosignatures_collected,
        )
