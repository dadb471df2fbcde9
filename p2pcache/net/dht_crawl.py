"""The node lookup (Kademlia paper §2.3), collecting every valid record on the way.

The paper's lookup asks the alpha closest known nodes, learns closer ones from their answers,
and ends when the k closest it knows have all answered; a value lookup ends at the first
value. kademlia's SpiderCrawl does this in lock-step rounds (each waits for the slowest of
alpha, so one dead node adds a full RPC timeout per round) and its ValueSpiderCrawl stops at
the first value, takes a majority vote, and caches the winner on a nearby node. For provider
records a first value is just one holder's random subset, and anyone can answer first, so
this lookup instead:

* keeps querying until the k closest known nodes have answered (dead ones are dropped when
  their RPC times out) or `enough_records` distinct providers are in hand, merging every
  valid record (newest per node) from every answer and keeping none that fails a check;
* is not lock-step: up to alpha queries are "active"; a query that has not been answered
  within the stall time (a few smoothed round trips, at most a quarter of the RPC timeout)
  stops counting as active and its node is presumed dead, so the next closest node is asked
  meanwhile and the lookup can end without waiting for the RPC timeout. A dead node costs a
  stall time, not an RPC timeout, and not once per round. Not so for the end of a value
  lookup that has found nothing yet: a stalled node may be a busy provider holding the
  only record, so its answer or RPC timeout is awaited (a Guix batch of 1000 misses had 5
  items answered 404 that way, loadtest/RESULTS.md);
* follows the paper's rule for the end game: once a round (all queries of one round number)
  has brought no node closer than the closest seen when it started (nor a new provider),
  all of the k closest not yet asked are asked at once, instead of alpha at a time;
* bounds everything: at most `max_in_flight` queries outstanding, `max_queries` in all, the
  lookup's duration (twice the RPC timeout by default: what it has by then is its answer),
  and a candidate list with the routing table's address limits (one address cannot fill it
  with fake contacts, and a reply counts for at most k contacts);
* counts rounds: a query's round is one more than the highest round among the answers
  received before it was sent (the first queries are round 1; with lock-step waves this is
  the wave number). It reports the round of the answer that brought the first valid record
  and the highest round answered by the end;
* never stores the result anywhere (no caching STORE), so a lookup cannot spread a value;
* reports itself incomplete when no node answered (or none could be asked), so that a
  caller does not take "nobody answered" for "nobody holds the item".

Measured 2026-11-25 with loadtest/dht_simulation.py (1,000 nodes on loopback, k = 20,
alpha = 3, RPC timeout 1 s, 5,000 lookups each): all lookups found a live provider; the first
valid record came in round 1 (median; p95 2) and lookups ended after 4 rounds (p95 5); with
30 % of the nodes killed, still all, in 6 rounds (p95 9), the slowest taking 1.3 s.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kademlia.node import Node

from p2pcache.net.dht_protocol import DHTProtocol, FindReply
from p2pcache.net.dht_routing import AddressCensus, ContactLimits
from p2pcache.net.provider_record import (
    OutputsRecord,
    ProviderRecord,
    RecordKind,
    SignedRecord,
    decode_value,
)


@dataclass(frozen=True)
class CrawlConfig:
    """Lookup parameters: the paper's k and alpha, and the bounds."""

    ksize: int = 20
    alpha: int = 3
    # Distinct providers after which a value lookup may stop: a download uses a few; more
    # only lengthens the lookup.
    enough_records: int = 8
    # Outstanding queries at once (active and stalled): enough that k unresponsive contacts
    # cannot block the lookup until they time out.
    max_in_flight: int = 40
    max_queries: int = 120
    # None: twice the protocol's RPC timeout.
    max_seconds: float | None = None
    # Whether a node silent past the stall time is left out of the end condition. True for
    # finding records (any k-1 holders will do); False for placing them, which must reach
    # the k closest live nodes, slow ones included.
    presume_stalled_dead: bool = True
    contact_limits: ContactLimits = field(default_factory=ContactLimits)


@dataclass(frozen=True)
class LookupResult:
    """What a lookup found and what it cost."""

    key: bytes
    records: tuple[SignedRecord, ...]
    closest: tuple[Node, ...]  # the k closest nodes that answered, closest first
    rounds: int  # highest round answered by the end
    rounds_to_first: int | None  # round whose answer brought the first valid record
    queries: int
    unanswered: int  # queries whose RPC timed out (or was answered with garbage)
    seconds: float
    # False when cut short by the time or query bound, or when no node answered at all (a
    # not-found lookup is only evidence of absence when complete)
    complete: bool
    rejected: Counter[str] = field(default_factory=Counter)
    nodes_seen: int = 0  # distinct candidates not known to be dead
    stalled: int = 0  # queries still unanswered after the stall time (presumed dead)

    @property
    def found(self) -> bool:
        return bool(self.records)

    @property
    def providers(self) -> list[ProviderRecord]:
        return [r.record for r in self.records if isinstance(r.record, ProviderRecord)]

    @property
    def outputs(self) -> list[OutputsRecord]:
        return [r.record for r in self.records if isinstance(r.record, OutputsRecord)]


_NEW, _ASKED, _STALLED, _ANSWERED, _FAILED = range(5)


class _Candidate:
    __slots__ = ("distance", "node", "round", "sent_at", "settled", "state")

    def __init__(self, node: Node, distance: int) -> None:
        self.node = node
        self.distance = distance
        self.state = _NEW
        self.round = 0
        self.sent_at = 0.0
        self.settled = False  # answered, failed or stalled: counted out of its round


class Lookup:
    """One lookup for `key`: FIND_VALUE when `kind` is given (collecting records of that
    kind), FIND_NODE otherwise (finding the k closest live nodes)."""

    def __init__(
        self,
        protocol: DHTProtocol,
        key: bytes,
        config: CrawlConfig | None = None,
        *,
        kind: RecordKind | None = None,
        clock: Callable[[], float] = time.time,
        local_records: Iterable[SignedRecord] = (),
        seeds: Iterable[Node] | None = None,
    ) -> None:
        self.protocol = protocol
        self.key = key
        self.config = config or CrawlConfig()
        self.kind = kind
        self.clock = clock
        self._target = int.from_bytes(key, "big")
        self._candidates: dict[bytes, _Candidate] = {}
        self._order: list[_Candidate] = []
        self._census = AddressCensus(self.config.contact_limits)
        self._records: dict[tuple, SignedRecord] = {}
        self._verified: dict[tuple[bytes, bytes], SignedRecord] = {}
        self._rejected: Counter[str] = Counter()
        self._rounds_to_first: int | None = None
        self._highest_answered = 0
        self._best_seen: int | None = None
        self._round_best: dict[int, int | None] = {}
        self._round_open: Counter[int] = Counter()
        self._round_improved: set[int] = set()
        self._widened = False
        self._queries = 0
        self._unanswered = 0
        self._stalled = 0
        for record in local_records:
            self._merge_record(record, 0)
        if seeds is None:
            seeds = protocol.router.find_neighbors(Node(key), self.config.ksize)
        self._add_contacts(seeds)

    async def run(self) -> LookupResult:
        """Run the lookup to its end (see the module docstring for when that is)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        config = self.config
        max_seconds = config.max_seconds or 2 * self.protocol.config.rpc_timeout
        deadline = started + max_seconds
        pending: dict[asyncio.Task, _Candidate] = {}
        active: set[asyncio.Task] = set()
        complete = True
        while not self._has_enough() and not self._converged():
            self._launch(pending, active, loop.time())
            if not pending:
                break
            now = loop.time()
            if now >= deadline:
                complete = False
                break
            stall = self.protocol.stall_timeout()
            wake = min((pending[t].sent_at + stall for t in active), default=deadline)
            done, _ = await asyncio.wait(
                pending,
                timeout=max(0.0, min(wake, deadline) - now),
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in done:
                candidate = pending.pop(task)
                active.discard(task)
                self._absorb(candidate, task.result())
            now = loop.time()
            for task in [t for t in active if pending[t].sent_at + stall <= now]:
                active.discard(task)  # stalled: still awaited, no longer holding a slot
                if config.presume_stalled_dead:
                    pending[task].state = _STALLED
                self._stalled += 1
                self._close_round(pending[task])
        for task in pending:
            self.protocol.keep_alive(task)  # let it finish: a timeout still prunes the table
        if self._queries >= config.max_queries and not self._converged():
            complete = False
        if not any(c.state == _ANSWERED for c in self._order):
            # Nobody could be asked (an empty routing table) or nobody answered: the lookup
            # learnt nothing, which is not the same as learning that no record exists.
            complete = False
        return self._result(loop.time() - started, complete)

    # -- candidates ----------------------------------------------------------------------------

    def _add_contacts(self, nodes: Iterable[Node]) -> None:
        own_id = self.protocol.source_node.id
        added = False
        for node in nodes:
            if node.id in self._candidates or node.id == own_id:
                continue
            if self._census.refusal(node.ip) is not None:
                continue
            self._census.add(node.ip)
            candidate = _Candidate(node, node.long_id ^ self._target)
            self._candidates[node.id] = candidate
            self._order.append(candidate)
            added = True
        if added:
            self._order.sort(key=lambda c: c.distance)
            best = self._order[0].distance
            if self._best_seen is None or best < self._best_seen:
                self._best_seen = best

    def _closest_alive(self) -> Iterable[_Candidate]:
        """The k closest candidates not known or presumed dead (stalled), closest first."""
        count = 0
        for candidate in self._order:
            if candidate.state == _FAILED or candidate.state == _STALLED:
                continue
            yield candidate
            count += 1
            if count == self.config.ksize:
                return

    def _closest_not_failed(self) -> Iterable[_Candidate]:
        """The k closest candidates not known to be dead (stalled ones included)."""
        count = 0
        for candidate in self._order:
            if candidate.state == _FAILED:
                continue
            yield candidate
            count += 1
            if count == self.config.ksize:
                return

    def _converged(self) -> bool:
        """Paper §2.3: done when the k closest known (live) nodes have all answered. A node
        that has not answered within the stall time is presumed dead here: waiting for its
        RPC timeout would delay the lookup by a whole timeout for each dead node among the
        k closest (their answers are still merged if they come before the end). Except
        while a value lookup has found nothing: then a slow node may be the one holding the
        only record (a busy provider answers late), so its answer or its RPC timeout is
        awaited (within the lookup's time bound) before concluding that nobody has one."""
        if self.kind is not None and not self._records:
            closest = self._closest_not_failed()
        else:
            closest = self._closest_alive()
        return all(c.state == _ANSWERED for c in closest) and any(
            c.state == _ANSWERED for c in self._order
        )

    def _has_enough(self) -> bool:
        return self.kind is not None and len(self._records) >= self.config.enough_records

    def _launch(self, pending: dict, active: set, now: float) -> None:
        config = self.config
        width = config.ksize if self._widened else config.alpha
        for candidate in self._closest_alive():
            if (
                len(active) >= width
                or len(pending) >= config.max_in_flight
                or self._queries >= config.max_queries
            ):
                return
            if candidate.state != _NEW:
                continue
            candidate.state = _ASKED
            candidate.round = self._highest_answered + 1
            candidate.sent_at = now
            if candidate.round not in self._round_best:
                self._round_best[candidate.round] = self._best_seen
            self._round_open[candidate.round] += 1
            self._queries += 1
            task = asyncio.ensure_future(
                self.protocol.query(candidate.node, self.key, want_value=self.kind is not None)
            )
            pending[task] = candidate
            active.add(task)

    # -- answers -------------------------------------------------------------------------------

    def _absorb(self, candidate: _Candidate, reply: FindReply) -> None:
        if not reply.answered:
            candidate.state = _FAILED
            self._unanswered += 1
            self._close_round(candidate)
            return
        candidate.state = _ANSWERED
        self._highest_answered = max(self._highest_answered, candidate.round)
        providers = len(self._records)
        if reply.value is not None:
            self._merge_value(reply.value, candidate.round)
        self._add_contacts(reply.contacts)
        before = self._round_best.get(candidate.round)
        closer = before is None or (self._best_seen is not None and self._best_seen < before)
        if closer or len(self._records) > providers:
            self._round_improved.add(candidate.round)  # progress: a closer node, or providers
        self._close_round(candidate)

    def _close_round(self, candidate: _Candidate) -> None:
        """A query is settled (answered, failed or stalled); when its whole round is and
        brought nothing closer, the lookup widens (paper §2.3)."""
        if candidate.settled:
            return  # already settled when it stalled
        candidate.settled = True
        number = candidate.round
        self._round_open[number] -= 1
        if self._round_open[number] == 0 and number not in self._round_improved:
            self._widened = True

    def _merge_value(self, value: bytes, round_number: int) -> None:
        decoded = decode_value(self.key, value, self.clock(), self._verified)
        self._rejected.update(error.reason for error in decoded.rejected)
        for record in decoded.records:
            self._merge_record(record, round_number)

    def _merge_record(self, record: SignedRecord, round_number: int) -> None:
        if self.kind is None or record.record.kind != self.kind or record.key != self.key:
            self._rejected["wrong_kind"] += 1
            return
        held = self._records.get(record.identity)
        if held is None or record.is_newer_than(held):
            self._records[record.identity] = record
        if self._rounds_to_first is None:
            self._rounds_to_first = round_number

    def _result(self, seconds: float, complete: bool) -> LookupResult:
        answered = [c.node for c in self._order if c.state == _ANSWERED][: self.config.ksize]
        records = sorted(self._records.values(), key=lambda r: r.record.expires, reverse=True)
        return LookupResult(
            key=self.key,
            records=tuple(records),
            closest=tuple(answered),
            rounds=self._highest_answered,
            rounds_to_first=self._rounds_to_first,
            queries=self._queries,
            unanswered=self._unanswered,
            seconds=seconds,
            complete=complete,
            rejected=self._rejected,
            nodes_seen=sum(1 for c in self._order if c.state != _FAILED),
            stalled=self._stalled,
        )
