"""The recent-activity rings: bounded, newest first, and the verification-failure family."""

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from p2pcache.activity import CHECKS, MAX_DETAIL, RecentActivity


def test_rings_keep_only_the_newest_events_newest_first():
    clock = iter(range(100)).__next__
    activity = RecentActivity(size=3, clock=lambda: float(clock()))
    for n in range(5):
        activity.transfer(f"item-{n}", "peers", "ok", 100 * n, 0.5)
    recent = activity.as_dict()["transfers"]["recent"]
    assert [t["item"] for t in recent] == ["item-4", "item-3", "item-2"]
    assert activity.as_dict()["transfers"]["counts"] == {"ok": 5}


def test_a_hostile_detail_is_kept_to_one_bounded_line():
    activity = RecentActivity()
    activity.verification_failed("chunk", "line one\nline two " + "x" * 10_000, source="peers")
    detail = activity.as_dict()["verification_failures"]["recent"][0]["detail"]
    assert "\n" not in detail and detail.startswith("line one line two")
    assert len(detail) == MAX_DETAIL


def test_unknown_checks_are_refused_so_the_label_stays_bounded():
    with pytest.raises(ValueError, match="unknown verification check"):
        RecentActivity().verification_failed("made-up", "?")


def test_every_check_is_exported_from_zero():
    activity = RecentActivity()
    activity.verification_failed("nar_hash", "bad bytes", item="abc-hello", count=2)
    registry = CollectorRegistry()
    registry.register(activity)
    text = generate_latest(registry).decode()
    for check in CHECKS:
        expected = 2.0 if check == "nar_hash" else 0.0
        assert f'p2pcache_verification_failures_total{{check="{check}"}} {expected}' in text
