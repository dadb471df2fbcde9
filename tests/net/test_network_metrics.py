"""The network's metric families as Prometheus scrapes them (trust data served, so far)."""

from prometheus_client import CollectorRegistry, generate_latest

from p2pcache.net.network_metrics import NetworkCollector, NetworkCounters


def scrape(counters: NetworkCounters) -> str:
    registry = CollectorRegistry()
    registry.register(NetworkCollector(counters, lambda: None, lambda: (0, 0)))
    return generate_latest(registry).decode()


def test_trust_data_served_is_counted_by_kind():
    counters = NetworkCounters()
    text = scrape(counters)
    assert "p2pcache_attestations_served_total 0.0" in text
    assert "p2pcache_checkpoints_served_total 0.0" in text
    counters.log_served.update({"attestations": 3, "checkpoint": 1, "inclusion": 2})
    counters.log_served.update({"consistency": 1})
    text = scrape(counters)
    assert "p2pcache_attestations_served_total 3.0" in text
    assert "p2pcache_checkpoints_served_total 1.0" in text
    assert 'p2pcache_log_proofs_served_total{kind="inclusion"} 2.0' in text
    assert 'p2pcache_log_proofs_served_total{kind="consistency"} 1.0' in text
