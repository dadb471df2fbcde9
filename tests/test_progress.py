"""Progress reports what `publish` and `attest` are doing: sizes and durations a person can read,
the rate and time left computed from the bytes counted, a redrawn bar on a terminal and a log
sentence every `log_interval` seconds otherwise.

The CLI tests only check that a "publishing: " line shows up. These tests check the module's own
contract: the formatting boundaries (0, 999/1000 of a unit, hours), the exact progress line for
known counts and times, that nothing but the bar is ever written to the stream (and nothing at
all when it is not a terminal), and when a line is drawn or logged. Time is driven by replacing
the `time` module that `p2pcache.progress` reads `monotonic()` from, so no test sleeps.
"""

from __future__ import annotations

import io
import logging
import sys

import pytest

from p2pcache import progress
from p2pcache.progress import Progress, human_bytes, human_duration

LOGGER = "p2pcache.progress"


class Clock:
    """Stands in for the `time` module in p2pcache.progress: a monotonic clock we move."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


class Terminal(io.StringIO):
    """A stream that says it is a terminal, and counts its flushes."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def isatty(self) -> bool:
        return True

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(progress, "time", clock)
    return clock


def progress_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


# human_bytes


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (1500, "1.5 kB"),
        (999_000, "999.0 kB"),
        (999_400, "999.4 kB"),
        (1_000_000, "1.0 MB"),
        (2_500_000_000, "2.5 GB"),
        (999_000_000_000, "999.0 GB"),
        (1_000_000_000_000, "1.0 TB"),
        (12.4, "12 B"),
        (-1500, "-1.5 kB"),
    ],
)
def test_human_bytes_uses_decimal_units_with_one_decimal_above_bytes(n: float, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [(999.5, "1.0 kB"), (999_950, "1.0 MB"), (999_999_999, "1.0 GB"), (999_949, "999.9 kB")],
)
def test_human_bytes_moves_up_a_unit_when_the_figure_rounds_to_1000(n: float, text: str) -> None:
    assert human_bytes(n) == text


def test_human_bytes_stops_at_terabytes() -> None:
    assert human_bytes(5_000_000_000_000_000) == "5000.0 TB"
    assert human_bytes(10**18) == "1000000.0 TB"


# human_duration


def test_human_duration_of_a_negative_time_is_zero() -> None:
    assert human_duration(-5) == "0:00"
    assert human_duration(-7200) == "0:00"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0:00"),
        (0.99, "0:00"),
        (9, "0:09"),
        (59, "0:59"),
        (59.99, "0:59"),
        (60, "1:00"),
        (61, "1:01"),
        (599, "9:59"),
        (600, "10:00"),
        (3599, "59:59"),
        (3599.9, "59:59"),
        (3600, "1:00:00"),
        (3661, "1:01:01"),
        (36_000, "10:00:00"),
        (360_000, "100:00:00"),
    ],
)
def test_human_duration_is_minutes_and_seconds_then_hours_from_one_hour(
    seconds: float, text: str
) -> None:
    assert human_duration(seconds) == text


# The progress line: rate, percentage and time left


def test_line_reports_counts_percentage_rate_and_time_left(clock: Clock) -> None:
    p = Progress("publishing", 4, 1000, stream=io.StringIO())
    p.items, p.bytes = 1, 250
    clock.now += 10
    # 250 B in 10 s is 25 B/s; the 750 B left take 30 s more.
    assert p.line() == "publishing: 1/4 items, 250 B of 1.0 kB (25%), 25 B/s, ETA 0:30"


def test_line_time_left_runs_into_hours_for_a_slow_large_transfer(clock: Clock) -> None:
    p = Progress("attesting", 10, 10_000_000_000, stream=io.StringIO())
    p.bytes = 1_000_000_000
    clock.now += 1000
    # 1 MB/s, 9 GB left: 9000 s.
    assert p.line() == ("attesting: 0/10 items, 1.0 GB of 10.0 GB (10%), 1.0 MB/s, ETA 2:30:00")


def test_line_names_failures_only_when_there_are_some(clock: Clock) -> None:
    p = Progress("publishing", 3, 300, stream=io.StringIO())
    clock.now += 1
    p.item_done(ok=True)
    assert ", 0 failed" not in p.line()
    assert "failed" not in p.line()
    p.item_done(ok=False)
    p.item_done(ok=False)
    assert p.line().startswith("publishing: 3/3 items, 2 failed, 0 B of 300 B (0%)")
    assert (p.items, p.failed) == (3, 2)


def test_line_before_any_byte_has_zero_rate_and_no_time_left(clock: Clock) -> None:
    p = Progress("publishing", 2, 5000, stream=io.StringIO())
    clock.now += 3
    assert p.line() == "publishing: 0/2 items, 0 B of 5.0 kB (0%), 0 B/s, ETA 0:00"


def test_line_right_at_the_start_does_not_divide_by_zero(clock: Clock) -> None:
    p = Progress("publishing", 1, 100, stream=io.StringIO())
    p.bytes = 50
    assert p.line().startswith("publishing: 0/1 items, 50 B of 100 B (50%), ")


def test_line_with_no_bytes_to_move_is_complete(clock: Clock) -> None:
    p = Progress("attesting", 2, 0, stream=io.StringIO())
    clock.now += 1
    assert p.line() == "attesting: 0/2 items, 0 B of 0 B (100%), 0 B/s, ETA 0:00"


def test_add_bytes_accumulates(clock: Clock) -> None:
    p = Progress("publishing", 1, 10_000, stream=io.StringIO())
    for n in (100, 200, 3000):
        p.add_bytes(n)
    clock.now += 1
    assert p.bytes == 3300
    assert "3.3 kB of 10.0 kB (33%), 3.3 kB/s, ETA 0:02" in p.line()


# Not a terminal: log sentences every log_interval, nothing on the stream


def test_not_a_terminal_logs_at_the_interval_and_never_writes_the_stream(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    stream = io.StringIO()
    caplog.set_level(logging.INFO, logger=LOGGER)
    p = Progress("publishing", 10, 10_000, stream=stream, log_interval=10.0)
    assert p.is_terminal is False

    clock.now += 1
    p.add_bytes(1000)  # the first report comes at once
    assert progress_lines(caplog) == [
        "publishing: 0/10 items, 1.0 kB of 10.0 kB (10%), 1.0 kB/s, ETA 0:09"
    ]
    clock.now += 9.75
    p.add_bytes(1000)
    p.item_done()
    assert len(progress_lines(caplog)) == 1  # 9.75 s after the last one: too soon
    clock.now += 0.25
    p.add_bytes(1000)  # 10 s after the last one
    assert progress_lines(caplog)[1:] == [
        "publishing: 1/10 items, 3.0 kB of 10.0 kB (30%), 273 B/s, ETA 0:25"
    ]
    p.finish()
    assert len(progress_lines(caplog)) == 2  # finish adds nothing off a terminal
    assert stream.getvalue() == ""
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == LOGGER)


def test_not_a_terminal_honours_a_custom_log_interval(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    p = Progress("attesting", 100, 100_000, stream=io.StringIO(), log_interval=2.0)
    for _ in range(10):  # 0.5 s apart over 5 s
        p.add_bytes(100)
        clock.now += 0.5
    # Drawn at 0, 2 and 4 s.
    assert len(progress_lines(caplog)) == 3


def test_last_item_is_always_logged_however_recent_the_last_line(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    p = Progress("publishing", 2, 200, stream=io.StringIO(), log_interval=10.0)
    p.add_bytes(100)
    p.item_done()
    clock.now += 1
    p.add_bytes(100)
    assert len(progress_lines(caplog)) == 1
    p.item_done()
    assert progress_lines(caplog)[-1].startswith("publishing: 2/2 items, 200 B of 200 B (100%)")
    assert len(progress_lines(caplog)) == 2


def test_default_stream_is_standard_error_read_when_progress_is_made(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    p = Progress("publishing", 1, 10)
    assert p.stream is terminal
    assert p.is_terminal is True
    p.add_bytes(5)
    assert terminal.getvalue().startswith("\r[")


# A terminal: one bar redrawn in place, at most every 0.2 s


def test_terminal_draws_a_bar_of_30_cells_then_the_line_then_clears_the_rest(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    terminal = Terminal()
    p = Progress("publishing", 2, 1000, stream=terminal)
    clock.now += 2
    p.add_bytes(500)
    assert terminal.getvalue() == (
        "\r[" + "#" * 15 + "-" * 15 + "] "
        "publishing: 0/2 items, 500 B of 1.0 kB (50%), 250 B/s, ETA 0:02\x1b[K"
    )
    assert terminal.flushes == 1
    assert progress_lines(caplog) == []  # the bar replaces the log sentences


def test_terminal_bar_rounds_down_partial_cells(clock: Clock) -> None:
    terminal = Terminal()
    p = Progress("publishing", 1, 300, stream=terminal)
    p.add_bytes(29)  # 2.9 cells
    assert terminal.getvalue().startswith("\r[##" + "-" * 28 + "] ")


def test_terminal_redraws_at_most_every_fifth_of_a_second_whatever_the_log_interval(
    clock: Clock,
) -> None:
    terminal = Terminal()
    p = Progress("publishing", 10, 1000, stream=terminal, log_interval=60.0)
    p.add_bytes(100)
    clock.now += 0.125
    p.add_bytes(100)
    assert terminal.getvalue().count("\r[") == 1
    clock.now += 0.125
    p.add_bytes(100)
    assert terminal.getvalue().count("\r[") == 2
    assert terminal.getvalue().endswith("300 B of 1.0 kB (30%), 1.2 kB/s, ETA 0:00\x1b[K")
    assert "\n" not in terminal.getvalue()


def test_terminal_finish_draws_the_final_state_and_ends_the_line(clock: Clock) -> None:
    terminal = Terminal()
    p = Progress("attesting", 2, 200, stream=terminal)
    p.add_bytes(100)
    clock.now += 0.01
    p.add_bytes(100)  # too soon to redraw
    assert "200 B of 200 B" not in terminal.getvalue()
    p.finish()
    assert terminal.getvalue().endswith(
        "\r[" + "#" * 30 + "] attesting: 0/2 items, 200 B of 200 B (100%), 20.0 kB/s, ETA 0:00"
        "\x1b[K\n"
    )
    assert terminal.getvalue().count("\n") == 1


def test_terminal_with_no_bytes_to_move_shows_a_full_bar(clock: Clock) -> None:
    terminal = Terminal()
    p = Progress("attesting", 1, 0, stream=terminal)
    p.item_done()
    assert terminal.getvalue().startswith("\r[" + "#" * 30 + "] attesting: 1/1 items, ")


def test_more_bytes_than_the_total_fill_the_bar_and_leave_no_time(clock: Clock) -> None:
    """`publish` counts items of unknown size as 0 in the total, yet bakes their bytes."""
    terminal = Terminal()
    p = Progress("publishing", 2, 100, stream=terminal)
    clock.now += 100
    p.add_bytes(250)
    assert terminal.getvalue() == (
        "\r[" + "#" * 30 + "] publishing: 0/2 items, 250 B of 100 B (250%), 2 B/s, ETA 0:00\x1b[K"
    )
