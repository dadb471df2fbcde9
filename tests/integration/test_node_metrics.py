"""The admin listener's /metrics under traffic: the families an operator graphs, moving."""

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests import guix_client


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def test_metrics_move_under_traffic(node, test_store):
    before = await asyncio.to_thread(scrape, node.admin_port)
    item = test_store.items[1]
    base = item.path.rsplit("/", 1)[-1]
    await guix_client.narinfos("127.0.0.1", node.guix_port, [base[:32], "0" * 32])
    await guix_client.get("127.0.0.1", node.guix_port, f"/nar/{base}")
    await node.publisher.wait_idle(30)
    await node.refresh_gauges()
    after = await asyncio.to_thread(scrape, node.admin_port)

    def value(m, name, **labels):
        return m.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    assert value(after, "p2pcache_narinfo_lookups_total", result="hit") == (
        value(before, "p2pcache_narinfo_lookups_total", result="hit") + 1
    )
    assert value(after, "p2pcache_narinfo_lookups_total", result="miss") >= 1
    assert value(after, "p2pcache_http_requests_total", endpoint="narinfo", status="2xx") >= 1
    assert value(after, "p2pcache_http_requests_total", endpoint="narinfo", status="4xx") >= 1
    assert value(after, "p2pcache_http_request_duration_seconds_count", endpoint="narinfo") >= 2
    assert value(after, "p2pcache_nar_served_bytes_total", compression="none") >= item.nar_size
    assert value(after, "p2pcache_baked_items_total", outcome="ok") >= 1
    assert value(after, "p2pcache_baked_nar_bytes_total") >= item.nar_size
    assert value(after, "p2pcache_cache_size_bytes") > 0
    assert value(after, "p2pcache_cache_items", state="baked") >= 1
    assert value(after, "p2pcache_store_valid_paths") == len(test_store.items)
    assert value(after, "p2pcache_cache_max_size_bytes") == node.config.cache_max_size
    assert "p2pcache_build_info" in after
    assert "p2pcache_bake_duration_seconds_bucket" in after
