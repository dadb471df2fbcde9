"""Every metric family the dashboard and the alerts use, scraped from real nodes under traffic.

Two nodes on loopback: a seed publishing a test store, and a node that answers Guix with hits,
misses and one NAR it fetches from the seed. Each family below must be on the second node's
/metrics (and the seed's, for what only a seeding node does) with at least one sample, so a
renamed or forgotten family fails here before a dashboard panel goes blank.
"""

from __future__ import annotations

import asyncio
import hashlib
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from p2pcache.activity import CHECKS
from tests import guix_client
from tests.integration.test_peer_network import baked, network, wait_until_findable

# Family names as exposed (counters with their _total, histograms by their base name).
GUIX_ENDPOINT_FAMILIES = (
    "p2pcache_build_info",
    "p2pcache_http_requests_total",
    "p2pcache_http_request_duration_seconds",
    "p2pcache_http_open_connections",
    "p2pcache_narinfo_lookups_total",
    "p2pcache_nar_served_bytes_total",
)
CACHE_FAMILIES = (
    "p2pcache_cache_size_bytes",
    "p2pcache_cache_max_size_bytes",
    "p2pcache_cache_items",
    "p2pcache_cache_evictions_total",
    "p2pcache_cache_evicted_bytes_total",
    "p2pcache_cache_promises_expired_total",
)
PEER_FAMILIES = (
    "p2pcache_transfer_bytes_total",
    "p2pcache_transfers_total",
    "p2pcache_miss_lookups_total",
    "p2pcache_miss_duration_seconds",
    "p2pcache_peers_known",
    "p2pcache_peers_banned",
    "p2pcache_verification_failures_total",
    "p2pcache_narinfo_checks_total",
    "p2pcache_narinfo_check_batches_total",
    "p2pcache_narinfo_check_worker_restarts_total",
    "p2pcache_narinfo_check_processes",
)
DHT_FAMILIES = (
    "p2pcache_dht_routing_table_size",
    "p2pcache_dht_lookups_total",
    "p2pcache_dht_lookup_duration_seconds",
    "p2pcache_dht_records_stored_total",
    "p2pcache_dht_keys_announced_total",
    "p2pcache_dht_rpc_timeouts_total",
    "p2pcache_dht_rpcs_sent_total",
    "p2pcache_dht_rpcs_received_total",
    "p2pcache_dht_datagrams_total",
    "p2pcache_dht_bytes_total",
    "p2pcache_dht_contacts_evicted_total",
    "p2pcache_dht_rebootstraps_total",
)
SEEDING_FAMILIES = (
    "p2pcache_baked_items_total",
    "p2pcache_baked_nar_bytes_total",
    "p2pcache_bake_duration_seconds",
    "p2pcache_bake_queue_items",
    "p2pcache_store_valid_paths",
    "p2pcache_store_corrupt_items_total",
)
PROCESS_FAMILIES = ("process_cpu_seconds_total", "process_resident_memory_bytes")


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """Samples by sample name, then by sorted labels."""
    url = f"http://127.0.0.1:{port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def has_samples(samples: dict, family: str) -> bool:
    """A family is there when its own samples are, or a histogram's _count is."""
    return bool(samples.get(family) or samples.get(f"{family}_count"))


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


async def test_every_dashboard_family_is_exported_under_traffic(tmp_path, test_store):
    async with network(tmp_path, test_store, 2) as (seed, node):
        items = await baked(seed, 2)
        await wait_until_findable(node, items)
        host = node.config.listen.host
        wanted = [i.path.rsplit("/", 1)[-1] for i in items]
        # Misses that peers answer, one that nobody can, then hits for the same items.
        first = await guix_client.narinfos(host, node.guix_port, [w[:32] for w in wanted])
        absent = await guix_client.narinfos(host, node.guix_port, ["0" * 32])
        again = await guix_client.narinfos(host, node.guix_port, [w[:32] for w in wanted])
        assert [r.status for r in first + absent + again] == [200, 200, 404, 200, 200]
        nar = await guix_client.get(host, node.guix_port, f"/nar/{wanted[0]}")
        assert hashlib.sha256(nar.body).digest() == items[0].nar_sha256
        await seed.refresh_gauges()
        await node.refresh_gauges()
        at_node = await asyncio.to_thread(scrape, node.admin_port)
        at_seed = await asyncio.to_thread(scrape, seed.admin_port)

    families = (
        GUIX_ENDPOINT_FAMILIES + CACHE_FAMILIES + PEER_FAMILIES + DHT_FAMILIES + PROCESS_FAMILIES
    )
    assert [f for f in families if not has_samples(at_node, f)] == []
    assert [f for f in SEEDING_FAMILIES if not has_samples(at_seed, f)] == []

    # The traffic shows up where the dashboard looks for it.
    assert value(at_node, "p2pcache_narinfo_lookups_total", result="hit") >= 2
    assert value(at_node, "p2pcache_narinfo_lookups_total", result="miss") >= 3
    assert value(at_node, "p2pcache_miss_lookups_total", outcome="found") >= 2
    checked = value(at_node, "p2pcache_narinfo_checks_total", where="loop") + value(
        at_node, "p2pcache_narinfo_checks_total", where="worker"
    )
    assert checked >= 2
    assert value(at_node, "p2pcache_transfers_total", outcome="ok") == 1
    assert value(at_node, "p2pcache_transfer_bytes_total", direction="in") > 0
    assert value(at_seed, "p2pcache_transfer_bytes_total", direction="out") == value(
        at_node, "p2pcache_transfer_bytes_total", direction="in"
    )
    assert value(at_node, "p2pcache_nar_served_bytes_total", compression="none") >= (
        items[0].nar_size
    )
    assert value(at_node, "p2pcache_peers_known") >= 1
    assert value(at_node, "p2pcache_dht_routing_table_size") >= 1
    assert value(at_seed, "p2pcache_dht_keys_announced_total") >= 2
    # The node's lookups went out as find_value requests and came back as datagrams.
    assert value(at_node, "p2pcache_dht_rpcs_sent_total", rpc="find_value") >= 1
    assert value(at_node, "p2pcache_dht_datagrams_total", direction="in") >= 1
    assert value(at_node, "p2pcache_dht_bytes_total", direction="out") > value(
        at_node, "p2pcache_dht_datagrams_total", direction="out"
    )
    assert value(at_seed, "p2pcache_dht_rpcs_received_total", rpc="store") >= 1
    # Every verification check has its series from the start (at 0 on an honest network),
    # so `increase(p2pcache_verification_failures_total[10m]) > 0` has something to watch.
    assert {
        dict(labels)["check"]: v
        for labels, v in at_node["p2pcache_verification_failures_total"].items()
    } == dict.fromkeys(CHECKS, 0.0)
    assert value(at_node, "p2pcache_cache_items", state="baked") >= 1
