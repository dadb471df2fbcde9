"""The DHT's counters."""

from __future__ import annotations

from p2pcache.net.dht_stats import LOOKUP_SECONDS_BUCKETS, DHTStats


def test_a_lookup_is_counted_with_its_rounds_and_time():
    stats = DHTStats()
    stats.observe_lookup("providers", "found", 2, 3, 0.004)
    stats.observe_lookup("providers", "not_found", None, 4, 7.0)
    assert stats.lookups == {("providers", "found"): 1, ("providers", "not_found"): 1}
    assert stats.lookup_rounds_to_first == {2: 1}
    assert stats.lookup_rounds == {3: 1, 4: 1}
    histogram = stats.lookup_seconds
    assert histogram.count == 2 and histogram.total == 7.004
    assert histogram.counts[LOOKUP_SECONDS_BUCKETS.index(0.005)] == 1
    assert histogram.counts[-1] == 1  # above the largest bound: +Inf
