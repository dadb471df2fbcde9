"""A real Prometheus (Debian package `prometheus`) scrapes a real node with the shipped scrape
configuration and alert rules: the node is up, the rules evaluate without error, and every
dashboard query runs and the main ones return data."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from p2pcache.config import ListenAddress
from p2pcache.testing import generate_test_store, remove_test_store
from tests import guix_client
from tests.conftest import require_binary
from tests.deploy.conftest import DEPLOY
from tests.deploy.test_grafana_dashboard import (
    DASHBOARD,
    grafana_to_promql,
    panel_queries,
)
from tests.integration.conftest import node_config, running_node

# The node and Prometheus get an address of their own, so the fixed ports cannot collide.
HOST = "127.66.6.1"
METRICS_PORT = 8084  # the metrics listener port the deploy files document
PROMETHEUS_PORT = 9090
DEADLINE = 60.0  # seconds for Prometheus to start, scrape and evaluate


def prometheus_config(directory: Path) -> Path:
    """deploy/prometheus/prometheus.yml aimed at the test node, scraping every second."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"{HOST}:{METRICS_PORT}"]}]
    (directory / "p2pcache-rules.yml").write_text(
        (DEPLOY / "prometheus" / "p2pcache-rules.yml").read_text()
    )
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def api(path: str, **params: str) -> dict:
    url = f"http://{HOST}:{PROMETHEUS_PORT}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def query(expr: str) -> list[dict]:
    return api("query", query=expr)["result"]


async def wait_for(what: str, condition) -> None:
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            if await asyncio.to_thread(condition):
                return
        except OSError:
            pass  # Prometheus not listening yet
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.5)


def is_up() -> bool:
    return [r["value"][1] for r in query('up{job="p2pcache"}')] == ["1"]


def has_traffic() -> bool:
    """A hit seen, and two samples of the series that the first request created."""
    hits = query('rate(p2pcache_narinfo_lookups_total{result="hit"}[1m]) > 0')
    samples = query("min(count_over_time(p2pcache_http_requests_total[1m])) >= 2")
    return len(hits) == len(samples) == 1


def rules_evaluated() -> bool:
    rules = [rule for group in api("rules")["groups"] for rule in group["rules"]]
    return len(rules) >= 7 and all(r["health"] == "ok" for r in rules)


@pytest.fixture
def prometheus(tmp_path):
    binary = require_binary("prometheus", "prometheus")
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={prometheus_config(tmp_path)}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address={HOST}:{PROMETHEUS_PORT}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


async def test_prometheus_scrapes_a_node_and_runs_the_rules_and_dashboard(tmp_path, prometheus):
    store = generate_test_store(tmp_path / "store", items=5, seed=3)
    config = node_config(
        tmp_path / "node",
        store,
        listen=ListenAddress(HOST, 0),
        metrics_listen=ListenAddress(HOST, METRICS_PORT),
    )
    try:
        async with running_node(config) as node:
            await wait_for("the first scrape", is_up)
            base = store.items[0].path.rsplit("/", 1)[-1]
            await guix_client.narinfos(HOST, node.guix_port, [base[:32], "0" * 32])
            await guix_client.get(HOST, node.guix_port, f"/nar/{base}")
            await wait_for("scrapes after the traffic", has_traffic)
            await wait_for("the alert rules to evaluate", rules_evaluated)

            results = {}
            for expr in panel_queries(json.loads(DASHBOARD.read_text())):  # every query must run
                results[expr] = await asyncio.to_thread(
                    query, grafana_to_promql(expr).replace("[5m]", "[1m]")
                )
    finally:
        remove_test_store(tmp_path / "store")
    with_data = {expr for expr, result in results.items() if result}
    for family in (
        "p2pcache_http_requests_total",
        "p2pcache_narinfo_lookups_total",
        "p2pcache_nar_served_bytes_total",
        "p2pcache_cache_size_bytes",
        "p2pcache_dht_routing_table_size",
        "p2pcache_build_info",
    ):
        assert any(family in expr for expr in with_data), f"no dashboard data for {family}"
    (hit_ratio,) = {
        expr for expr in results if expr.startswith("sum(rate(p2pcache_narinfo_lookups_total")
    }
    (sample,) = results[hit_ratio]
    assert 0 < float(sample["value"][1]) < 1  # one hit, one miss
    firing = [a["labels"]["alertname"] for a in api("alerts")["alerts"]]
    assert "P2PCacheNodeDown" not in firing
