"""A round of work run every so many seconds, started and stopped with the node.

The witness, the cosignature collector and checkpoint gossip each do one bounded round (ask a
few peers, judge what they sent) and then wait. This runs such a round on a schedule: one
task, a failing round logged and followed by the next, cancelled on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class PeriodicRounds:
    """Call `one_round()` after `first_delay` seconds, then every `interval` seconds."""

    def __init__(
        self,
        name: str,
        one_round: Callable[[], Awaitable[object]],
        interval: float,
        *,
        first_delay: float = 0.0,
    ) -> None:
        self.name = name
        self.one_round = one_round
        self.interval = interval
        self.first_delay = first_delay
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        await asyncio.sleep(self.first_delay)
        while True:
            try:
                await self.one_round()
            except Exception:
                log.exception("%s failed; it runs again in %.0f s", self.name, self.interval)
            await asyncio.sleep(self.interval)
