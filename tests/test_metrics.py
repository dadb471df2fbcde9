"""The request observer counts every response in the bucket Prometheus' `le` rule puts it in."""

from __future__ import annotations

from p2pcache.metrics import LATENCY_BUCKETS, NodeMetrics


def test_request_stats_count_each_response_by_endpoint_status_and_latency_bucket() -> None:
    metrics = NodeMetrics()
    observe = metrics.requests.observe
    first, second = LATENCY_BUCKETS[0], LATENCY_BUCKETS[1]
    observe("narinfo", 200, 0.0, 100)  # below the first bound
    observe("narinfo", 200, first, 100)  # on it: le is inclusive
    observe("narinfo", 404, (first + second) / 2, 10)
    metrics.requests("narinfo", 200, 100.0, 5)  # past the last bound: only +Inf
    observe("nar", 200, second, 1 << 20)
    sample = metrics.registry.get_sample_value
    assert sample("p2pcache_http_requests_total", {"endpoint": "narinfo", "status": "2xx"}) == 3
    assert sample("p2pcache_http_requests_total", {"endpoint": "narinfo", "status": "4xx"}) == 1
    assert sample("p2pcache_http_requests_total", {"endpoint": "nar", "status": "2xx"}) == 1

    def bucket(endpoint: str, le: str) -> float | None:
        labels = {"endpoint": endpoint, "le": le}
        return sample("p2pcache_http_request_duration_seconds_bucket", labels)

    assert bucket("narinfo", str(first)) == 2
    assert bucket("narinfo", str(second)) == 3
    assert bucket("narinfo", str(LATENCY_BUCKETS[-1])) == 3
    assert bucket("narinfo", "+Inf") == 4
    assert bucket("nar", str(first)) == 0
    assert bucket("nar", str(second)) == 1
    total = sample("p2pcache_http_request_duration_seconds_sum", {"endpoint": "narinfo"})
    assert total == first + (first + second) / 2 + 100.0
    assert sample("p2pcache_http_request_duration_seconds_count", {"endpoint": "narinfo"}) == 4
