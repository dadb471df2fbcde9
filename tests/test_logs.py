"""Logging set-up: JSON lines for machines, and bursts of events told in a bounded number of
lines."""

import asyncio
import io
import json
import logging

import pytest

from p2pcache.logs import JsonFormatter, LinesPerWindow


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def records(caplog):
    caplog.set_level(logging.INFO, logger="test.burst")
    return caplog


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.burst"]


def test_a_burst_logs_its_first_events_then_one_line_for_the_rest(records):
    clock = Clock()
    lines = LinesPerWindow(logging.getLogger("test.burst"), "items", burst=3, clock=clock)
    for n in range(1000):
        lines.info("found item %d", n)
    assert messages(records) == ["found item 0", "found item 1", "found item 2"]
    clock.now += 10.0  # the window is over: the next event tells the rest first
    lines.info("found item %d", 1000)
    assert messages(records)[3:] == ["997 more items in the last 10 s", "found item 1000"]


def test_events_spread_out_are_each_logged(records):
    clock = Clock()
    lines = LinesPerWindow(logging.getLogger("test.burst"), "items", burst=2, clock=clock)
    for n in range(5):
        lines.info("found item %d", n)
        clock.now += 6.0  # two a window at most
    assert messages(records) == [f"found item {n}" for n in range(5)]


async def test_the_rest_of_a_burst_is_told_when_its_window_ends(records):
    lines = LinesPerWindow(logging.getLogger("test.burst"), "items", burst=1, window=0.05)
    for n in range(4):
        lines.info("found item %d", n)
    assert messages(records) == ["found item 0"]
    await asyncio.sleep(0.1)
    assert messages(records) == ["found item 0", "3 more items in the last 0 s"]
    lines.info("found item %d", 4)  # a new window
    assert messages(records)[-1] == "found item 4"


def test_nothing_is_counted_when_info_is_not_logged(caplog):
    caplog.set_level(logging.WARNING, logger="test.quiet")
    lines = LinesPerWindow(logging.getLogger("test.quiet"), "items", burst=1)
    for n in range(5):
        lines.info("found item %d", n)
    lines.flush()
    assert [r for r in caplog.records if r.name == "test.quiet"] == []


def test_json_lines_carry_the_message_and_extra_fields():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("peer %s banned", "http://127.0.0.1:1", extra={"offences": 3})
    finally:
        logger.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "peer http://127.0.0.1:1 banned"
    assert (entry["level"], entry["logger"], entry["offences"]) == ("warning", "test.json", 3)
    assert entry["time"].endswith("Z")
