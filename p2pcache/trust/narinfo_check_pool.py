"""Checking relayed narinfos in a worker process, a loop iteration's worth at a time.

Accepting a narinfo found for a miss is pure CPU: parsing, Guix's ECDSA signature check
(most of its 0.35 ms when it went through libsodium; about 0.14 ms in all since the C
extension, 2026-11-26), the layout and item checks. A Guix batch of 1000 misses
had the node's event loop make 1000 of them in a row, about a third of its CPU per miss, on one
core while the other had little to do (loadtest/RESULTS.md). Made in a worker process, they
run beside the event loop.

Handing one narinfo to a process costs the loop about as much CPU as checking it
(loadtest/bench_narinfo_checks.py, 2026-11-26: 0.90x of the inline check for a lone item,
0.23x each in batches of 8, 0.09x in batches of 64). So the checks asked for in one loop
iteration go to the worker together (a narinfo list from one peer arrives in one iteration),
and a lone check, with nothing already at the worker, is made inline: a single miss never
waits for a process.

The checks themselves are the pure functions of narinfo_acceptance and narinfo_claim; this
module only decides where they run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Literal

from p2pcache.guix.signing_key import GuixPublicKey
from p2pcache.trust.narinfo_acceptance import (
    AcceptedNarinfo,
    NarinfoRejected,
    accept_relayed_narinfo,
)
from p2pcache.trust.narinfo_claim import RelayedNarinfo, read_relayed_narinfo

log = logging.getLogger(__name__)

Kind = Literal["accept", "read"]
Request = tuple[Kind, bytes, str]
Outcome = tuple[Literal[True], Any] | tuple[Literal[False], str, str]

# Items sent to the worker at once: larger batches cost the loop less per item, smaller ones
# bring the first answers back sooner (64 checks take about 22 ms).
BATCH_LIMIT = 64
# A worker that fails this often without checking a batch in between (it cannot start, or
# dies on every batch) is given up for the node's lifetime: checks stay on the loop.
MAX_FAILURES_IN_A_ROW = 3


def check_one(kind: Kind, data: bytes, hash_part: str, acl: list[GuixPublicKey], store_dir: str):
    """The check itself, wherever it runs: AcceptedNarinfo, RelayedNarinfo, or raises."""
    if kind == "accept":
        return accept_relayed_narinfo(data, hash_part, acl, store_dir)
    return read_relayed_narinfo(data, hash_part, acl, store_dir)


def check_batch(requests: list[Request], acl: list[GuixPublicKey], store_dir: str) -> list[Outcome]:
    """Run in the worker: one outcome per request, a refusal as (False, reason, message)
    (an exception with extra attributes does not survive pickling whole)."""
    outcomes: list[Outcome] = []
    for kind, data, hash_part in requests:
        try:
            outcomes.append((True, check_one(kind, data, hash_part, acl, store_dir)))
        except NarinfoRejected as e:
            outcomes.append((False, e.reason, str(e)))
    return outcomes


def _warm() -> None:
    """Each worker's initializer and first job: importing this module in a worker imports
    everything a check needs, so a worker that has run it is ready."""


@dataclass
class CheckCounts:
    """Checks made on the loop and in the worker, batches sent, worker restarts (metrics)."""

    inline: int = 0
    offloaded: int = 0
    batches: int = 0
    worker_failures: int = 0
    processes_ready: int = 0
    """Worker processes started and done importing (0 before the first miss)."""


class NarinfoCheckPool:
    """Accepts or reads relayed narinfos, in a worker process when that is cheaper.

    `processes` 0 checks everything inline on the event loop (the behaviour before).
    """

    def __init__(
        self,
        acl: list[GuixPublicKey],
        store_dir: str,
        processes: int,
        counts: CheckCounts | None = None,
    ) -> None:
        self.acl = acl
        self.store_dir = store_dir
        self.processes = processes
        self.counts = counts if counts is not None else CheckCounts()
        self._executor: ProcessPoolExecutor | None = None
        self._warming: list[Future] = []
        self._enabled = False
        self._pending: list[tuple[Request, asyncio.Future]] = []
        self._flush_scheduled = False
        self._in_flight = 0
        self._failures_in_a_row = 0

    def start(self) -> None:
        """Enable the workers. They are started at the node's first check (a node that never
        misses, like most nodes in tests, never pays for a process; one that missed once is
        likely to get a Guix batch soon, which should not wait for them) and check nothing
        before they have finished importing: meanwhile, checks are made inline."""
        self._enabled = self.processes > 0

    async def warm_up(self) -> None:
        """Start the worker now and wait until it takes checks (tests, benchmarks); a worker
        that cannot start is dealt with at the next batch, as always."""
        if self._enabled:
            self._worker_ready()
            with contextlib.suppress(Exception):
                await asyncio.gather(*(asyncio.wrap_future(w) for w in self._warming))

    def _worker_ready(self) -> bool:
        if self._executor is None:
            self._executor = self._new_executor()
        warming = self._warming
        if not all(w.done() for w in warming):
            return False
        for w in warming:
            error = None if w.cancelled() else w.exception()
            if error is not None:  # a process could not start
                self._worker_failed(self._executor, error)
                return False
        return True

    def _new_executor(self) -> ProcessPoolExecutor:
        # spawn, not fork: the node has threads (aiosqlite, zstd, the store db) whose locks
        # a forked child would inherit in whatever state they were.
        # One job per process: the pool starts a process per job while none is idle, so all
        # of them start (and import, in the initializer) now rather than during the batch.
        executor = ProcessPoolExecutor(
            self.processes, mp_context=multiprocessing.get_context("spawn"), initializer=_warm
        )
        warming = [executor.submit(_warm) for _ in range(self.processes)]
        self._warming = warming
        for w in warming:
            w.add_done_callback(lambda _, warming=warming: self._warmed(warming))
        return executor

    def _warmed(self, warming: list[Future]) -> None:
        # In the executor's thread: only a plain attribute is set, and only for the workers
        # in use (replaced ones may finish starting after their successors' failure counted).
        if warming is not self._warming or not self._enabled:
            return
        if all(w.done() and not w.cancelled() and w.exception() is None for w in warming):
            self.counts.processes_ready = self.processes

    def close(self) -> None:
        self._enabled = False
        self.counts.processes_ready = 0
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def accept(self, data: bytes, hash_part: str) -> AcceptedNarinfo:
        """accept_relayed_narinfo: raises NarinfoRejected."""
        return await self._check(("accept", data, hash_part))

    async def read(self, data: bytes, hash_part: str) -> RelayedNarinfo:
        """read_relayed_narinfo: raises NarinfoRejected."""
        return await self._check(("read", data, hash_part))

    async def _check(self, request: Request) -> Any:
        if not self._enabled:
            self.counts.inline += 1
            return check_one(*request, self.acl, self.store_dir)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((request, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        pending = [(request, future) for request, future in pending if not future.done()]
        if not pending:
            return
        if not self._enabled:
            self._check_inline(pending)
            return
        ready = self._worker_ready()  # started at the first check, lone or not
        lone = len(pending) == 1 and self._in_flight == 0
        if lone or not ready:
            self._check_inline(pending)
            return
        for start in range(0, len(pending), BATCH_LIMIT):
            self._submit(pending[start : start + BATCH_LIMIT])

    def _submit(self, batch: list[tuple[Request, asyncio.Future]]) -> None:
        executor = self._executor
        if executor is None:  # the worker failed while the batch was being handed over
            self._check_inline(batch)
            return
        requests = [request for request, _ in batch]
        try:
            done = executor.submit(check_batch, requests, self.acl, self.store_dir)
        except BrokenProcessPool as e:
            self._worker_failed(executor, e)
            self._check_inline(batch)
            return
        self._in_flight += 1
        self.counts.batches += 1
        self.counts.offloaded += len(batch)
        loop = asyncio.get_running_loop()
        wrapped = asyncio.wrap_future(done, loop=loop)
        wrapped.add_done_callback(lambda result: self._settle(batch, result, executor))

    def _settle(
        self,
        batch: list[tuple[Request, asyncio.Future]],
        result: asyncio.Future,
        executor: ProcessPoolExecutor,
    ) -> None:
        self._in_flight -= 1
        if result.cancelled():
            if self._enabled:  # cancelled with a failed worker's queue: check them here
                self._check_inline(batch)
            else:  # the node is stopping
                for _, future in batch:
                    future.cancel()
            return
        error = result.exception()
        if isinstance(error, BrokenProcessPool):
            self._worker_failed(executor, error)
            self._check_inline(batch)
            return
        if error is not None:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self._failures_in_a_row = 0
        for (_, future), outcome in zip(batch, result.result(), strict=True):
            if future.done():
                continue  # its miss gave up meanwhile
            if outcome[0]:
                future.set_result(outcome[1])
            else:
                future.set_exception(NarinfoRejected(outcome[1], outcome[2]))

    def _check_inline(self, batch: list[tuple[Request, asyncio.Future]]) -> None:
        for request, future in batch:
            if future.done():
                continue
            self.counts.inline += 1
            try:
                future.set_result(check_one(*request, self.acl, self.store_dir))
            except Exception as e:  # a refusal, or a bug: either way the miss hears of it
                future.set_exception(e)

    def _worker_failed(self, executor: ProcessPoolExecutor, error: BaseException) -> None:
        """A worker died (killed, out of memory): start a new one, check these inline."""
        if executor is not self._executor:
            return  # already replaced, or closed
        self.counts.worker_failures += 1
        self._failures_in_a_row += 1
        executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None  # a new one is started at the next batch
        self.counts.processes_ready = 0
        if self._failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            self._enabled = False
            log.error(
                "the process checking narinfo signatures failed %d times in a row (last: %s); "
                "checking them on the event loop from now on",
                self._failures_in_a_row,
                error or type(error).__name__,
            )
            return
        log.warning(
            "the process checking narinfo signatures stopped (%s); checking the narinfos it "
            "held here, and starting a new one",
            error or type(error).__name__,
        )
