"""deploy/prometheus/: promtool checks the config and rules, runs the rule unit tests, and
every metric an alert uses is one a real node exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY
from tests.deploy.promql_names import unknown_names
from tests.deploy.promtool import assert_promtool_passes, promtool

PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "p2pcache-rules.yml"
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
SCRAPE_CONFIGS = [PROMETHEUS / "prometheus.yml", DEPLOY / "container" / "prometheus.yml"]

# What the issue asks an operator to be alerted about, by alert name.
REQUIRED_ALERTS = {
    "P2PCacheNodeDown",
    "P2PCacheHitRatioCollapse",
    "P2PCachePeerDataFailedVerification",
    "P2PCacheBadlySignedRecords",
    "P2PCacheQuotaNearlyFull",
    "P2PCacheNoDHTPeers",
}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"]]


def test_rules_pass_promtool_check():
    out = assert_promtool_passes("check", "rules", RULES)
    assert f"{len(alert_rules())} rules found" in out


@pytest.mark.parametrize("config", SCRAPE_CONFIGS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_scrape_config_passes_promtool_check(config):
    assert_promtool_passes("check", "config", config)
    jobs = {job["job_name"]: job for job in load(config)["scrape_configs"]}
    assert jobs["p2pcache"]["metrics_path"] == "/metrics"


def test_alerts_cover_what_an_operator_must_know():
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_rule_unit_tests_pass():
    assert RULE_TESTS, "no promtool rule tests under deploy/prometheus/tests"
    tested = set()
    for path in RULE_TESTS:
        out = assert_promtool_passes("test", "rules", path.name, cwd=path.parent)
        assert "SUCCESS" in out
        for case in load(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                if check["exp_alerts"]:
                    tested.add(check["alertname"])
    assert len(tested) >= 2, f"rule unit tests make only {tested} fire"


def test_rule_unit_tests_catch_a_broken_rule(tmp_path):
    """The unit tests fail when an alert's threshold is wrong (they can fail at all)."""
    broken = RULES.read_text().replace(
        'p2pcache_dht_routing_table_size{job="p2pcache"} == 0',
        'p2pcache_dht_routing_table_size{job="p2pcache"} == 1',
    )
    assert broken != RULES.read_text()
    (tmp_path / "tests").mkdir()
    (tmp_path / RULES.name).write_text(broken)
    for path in RULE_TESTS:
        (tmp_path / "tests" / path.name).write_text(path.read_text())
    results = [promtool("test", "rules", path.name, cwd=tmp_path / "tests") for path in RULE_TESTS]
    assert any(r.returncode != 0 and "P2PCacheNoDHTPeers" in r.stdout + r.stderr for r in results)


def test_alerts_name_only_metrics_the_node_exports(node_exposition):
    expressions = [rule["expr"] for rule in alert_rules()]
    assert unknown_names(expressions, node_exposition) == {}
