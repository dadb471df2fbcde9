"""Rounds run on schedule, survive a failing round, and stop when told."""

from __future__ import annotations

import asyncio
import itertools

from p2pcache.trust.periodic_rounds import PeriodicRounds


async def test_rounds_run_every_interval_and_a_failing_one_does_not_end_them():
    calls = []

    async def one_round():
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 2:
            raise RuntimeError("a round that fails")

    rounds = PeriodicRounds("test rounds", one_round, 0.05, first_delay=0.1)
    start = asyncio.get_running_loop().time()
    await rounds.start()
    await asyncio.sleep(0.4)
    await rounds.stop()
    count = len(calls)
    assert count >= 4  # the failing second round was followed by more
    assert calls[0] - start >= 0.095  # the first delay held
    assert all(b - a >= 0.045 for a, b in itertools.pairwise(calls))  # timer resolution
    await asyncio.sleep(0.15)
    assert len(calls) == count  # stopped means stopped
    await rounds.stop()  # twice is harmless
