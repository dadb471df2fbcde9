"""deploy/grafana/p2pcache.json: importable, and querying only what a real node exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY
from tests.deploy.promql_names import exported_series_names, names_in, unknown_names
from tests.deploy.promtool import assert_promtool_passes

DASHBOARD = DEPLOY / "grafana" / "p2pcache.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# Families the dashboard does not graph, and why. Every other family a node exports must be
# on a panel, so a family added to the node without a panel fails here.
NOT_GRAPHED: dict[str, str] = {}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_queries(dashboard: dict[str, Any]) -> list[str]:
    return [
        target["expr"] for panel in all_panels(dashboard) for target in panel.get("targets", [])
    ]


def variable_queries(dashboard: dict[str, Any]) -> list[str]:
    """The PromQL inside query variables (`label_values(SELECTOR, label)` keeps SELECTOR)."""
    out = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"\s*label_values\((.+),\s*\w+\s*\)\s*", query)
        out.append(match.group(1) if match else query)
    return out


def test_dashboard_has_a_prometheus_data_source_variable(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables["DS_PROMETHEUS"]
    assert source["type"] == "datasource"
    assert source["query"] == "prometheus"
    assert dashboard["uid"] == "p2pcache"
    assert "__inputs" not in dashboard  # provisioning would not substitute them


def test_every_query_uses_the_data_source_variable(dashboard):
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            assert "targets" not in panel
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE


def test_panels_have_unique_ids_and_fit_the_grid(dashboard):
    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in all_panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0 and grid["y"] >= 0, panel["title"]
        assert panel["title"].strip()


def test_every_query_names_only_metrics_the_node_exports(dashboard, node_exposition):
    queries = panel_queries(dashboard) + variable_queries(dashboard)
    assert len(queries) > 30
    assert unknown_names(queries, node_exposition) == {}


def test_every_exported_family_is_graphed(dashboard, node_exposition):
    """Each family of a real node appears on some panel (or in NOT_GRAPHED, with a reason)."""
    used = set(names_in(panel_queries(dashboard)))
    families = {}
    for series, kind in exported_series_names(node_exposition).items():
        if series.endswith("_created"):
            continue
        family = re.sub(r"_(bucket|sum|count)$", "", series) if kind == "histogram" else series
        families.setdefault(family, set()).add(series)
    missing = {
        family
        for family, series in families.items()
        if not series & used and family not in NOT_GRAPHED
    }
    assert missing == set(), f"exported but on no panel: {sorted(missing)}"


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables replaced by values Prometheus would see, for a syntax check."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def test_every_query_is_valid_promql(dashboard, tmp_path):
    """promtool parses each panel query (with Grafana's variables filled in) as a rule."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)}
        for i, expr in enumerate(panel_queries(dashboard) + variable_queries(dashboard))
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = assert_promtool_passes("check", "rules", path)
    assert f"{len(rules)} rules found" in out
