"""Logging set-up: sentences for people by default, one JSON object per line for machines."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import TextIO

_STANDARD = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", ...extra fields}` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value if isinstance(value, int | float | str | bool) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log and asyncio's debug chatter are not what a node operator reads.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class LinesPerWindow:
    """One log line per event until `burst` of them came within `window` seconds; the rest of
    that window are counted and told in one line when it ends.

    A Guix batch resolves up to a thousand misses in a second: a line for each was 6-8 % of the
    resolving node's event loop (py-spy, 2026-11-26), and a thousand lines are not what an
    operator reads. The first few still say what happened in full.
    """

    def __init__(
        self,
        logger: logging.Logger,
        more: str,
        *,
        burst: int = 10,
        window: float = 10.0,
        clock=time.monotonic,
    ) -> None:
        self.logger = logger
        self.more = more
        """How the summary names what was not logged: "%d more <more> in the last %.0f s"."""
        self.burst = burst
        self.window = window
        self.clock = clock
        self._window_ends = 0.0
        self._logged = 0
        self._unlogged = 0

    def info(self, message: str, *args: object) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        now = self.clock()
        if now >= self._window_ends:
            self.flush()
            self._window_ends = now + self.window
        if self._logged < self.burst:
            self._logged += 1
            self.logger.info(message, *args)
            return
        if not self._unlogged:
            self._flush_later()
        self._unlogged += 1

    def _flush_later(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # said at the next event after the window, or at flush()
        delay = max(0.0, self._window_ends - self.clock())
        loop.call_later(delay, self._flush_window, self._window_ends)

    def _flush_window(self, ends: float) -> None:
        if ends == self._window_ends:  # not a later window, begun by an event meanwhile
            self.flush()

    def flush(self) -> None:
        """Say how many events went unlogged in the window, if any; start a new window."""
        if self._unlogged:
            self.logger.info(
                "%d more %s in the last %.0f s", self._unlogged, self.more, self.window
            )
        self._unlogged = 0
        self._logged = 0
        self._window_ends = 0.0
