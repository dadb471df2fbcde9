"""Progress of long work: a one-line bar on a terminal, a sentence every few seconds otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger(__name__)


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        shown = f"{n:.0f}" if unit == "B" else f"{n:.1f}"
        # Decided on the rounded figure: 999,950 B is "1.0 MB", not "1000.0 kB".
        if abs(float(shown)) < 1000 or unit == "TB":
            return f"{shown} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Counts items and bytes against known totals and reports rate and time left."""

    def __init__(
        self,
        what: str,
        total_items: int,
        total_bytes: int,
        stream: TextIO | None = None,
        log_interval: float = 10.0,
    ) -> None:
        self.what = what
        self.total_items = total_items
        self.total_bytes = total_bytes
        self.items = 0
        self.bytes = 0
        self.failed = 0
        self.stream = stream or sys.stderr
        self.is_terminal = self.stream.isatty()
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._log_interval = log_interval

    def add_bytes(self, n: int) -> None:
        self.bytes += n
        self._maybe_draw()

    def item_done(self, ok: bool = True) -> None:
        self.items += 1
        if not ok:
            self.failed += 1
        self._maybe_draw(force=self.items == self.total_items)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.bytes / elapsed
        # The total may be short (items of unknown size): past it, nothing is said to be left.
        left = max(0, self.total_bytes - self.bytes) / rate if rate > 0 else 0.0
        pct = 100.0 * self.bytes / self.total_bytes if self.total_bytes else 100.0
        failed = f", {self.failed} failed" if self.failed else ""
        return (
            f"{self.what}: {self.items}/{self.total_items} items{failed}, "
            f"{human_bytes(self.bytes)} of {human_bytes(self.total_bytes)} ({pct:.0f}%), "
            f"{human_bytes(rate)}/s, ETA {human_duration(left)}"
        )

    def _maybe_draw(self, force: bool = False) -> None:
        now = time.monotonic()
        interval = 0.2 if self.is_terminal else self._log_interval
        if not force and now - self._last_draw < interval:
            return
        self._last_draw = now
        if self.is_terminal:
            width = 30
            share = min(1.0, self.bytes / self.total_bytes) if self.total_bytes else 1.0
            done = int(width * share)
            bar = "#" * done + "-" * (width - done)
            self.stream.write(f"\r[{bar}] {self.line()}\x1b[K")
            self.stream.flush()
        else:
            log.info("%s", self.line())

    def finish(self) -> None:
        if self.is_terminal:
            self._maybe_draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
