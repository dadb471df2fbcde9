"""The miss path: finding a narinfo the cache does not have, among peers and upstream servers.

A narinfo request for an unknown item asks every source at once (the DHT's providers, then
each provider's narinfo; the configured upstream servers), bounded in time, and takes the
first narinfo the node accepts: signed by a key in the Guix ACL, for the requested item, in
the current layout; or, when a trust policy with builders is given (trust/item_trust.py),
whatever the policy decides from the item's attestation bundles, gathered once per lookup.
An item accepted on builders' word alone is recorded without a signed part: the node signs
its own narinfo for it. Pipelined misses resolve concurrently, up to a bound, and the
same item asked twice at once is looked up once. A miss is remembered for a short time so a
burst of requests for an absent item costs one lookup; but only a conclusive one, where every
source answered (absent): a lookup that timed out or a source that could not tell (a DHT
lookup nobody answered, providers that were all down) raises LookupUndecided: the endpoint
answers 404 with a max-age of its own (0 by default, so that Guix asks again next time), and
the miss is never remembered as absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from p2pcache.cache.grouped_adds import GroupedAdds
from p2pcache.cache.index import CacheIndex, IndexedItem, NewItem, Origin
from p2pcache.errors import LookupUndecided, P2PCacheError
from p2pcache.guix.narinfo import Narinfo
from p2pcache.guix.signing_key import GuixPublicKey
from p2pcache.logs import LinesPerWindow
from p2pcache.provenance import Provenance, Provenances
from p2pcache.trust.item_trust import ItemTrust
from p2pcache.trust.narinfo_acceptance import NarinfoRejected
from p2pcache.trust.narinfo_check_pool import NarinfoCheckPool
from p2pcache.trust.policy import Decision

log = logging.getLogger(__name__)

KEPT_BUNDLE_BYTES = 64 * 1024
"""An item's bundles are kept with its resolution up to this size (a few builders' bundles are
a few KiB); larger sets are gathered again when the NAR is about to be committed."""


class _Inconclusive(Exception):
    """No narinfo was accepted, and a source could not tell whether it has the item."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A narinfo offered by a source, not yet judged."""

    origin: Origin
    source: str
    """The peer's or the upstream server's URL."""
    data: bytes


NarinfoSource = Callable[[str], AsyncGenerator[Candidate, None]]


@dataclass(frozen=True)
class ResolverSettings:
    store_dir: str = "/gnu/store"
    timeout: float = 8.0
    negative_ttl: float = 20.0
    max_concurrent: int = 1024
    """Misses resolved at once: a whole Guix batch (the endpoint's pipeline bound), so that
    asking the peers that provided lately costs one round trip for the batch, not one per
    wave. The costly part, DHT searches, has its own bound (network.MAX_CONCURRENT_SEARCHES)."""
    max_negative: int = 100_000


@dataclass(frozen=True, slots=True)
class Resolution:
    item: IndexedItem
    provenance: Provenance


@dataclass(frozen=True, slots=True)
class Judged:
    """A candidate the node accepts, and what it records for it."""

    narinfo: Narinfo
    nar_size: int
    signed_part: bytes | None
    """The upstream-signed part, relayed byte for byte; None: the node signs its own."""
    signature_line: bytes | None
    decision: Decision | None
    bundles: tuple[bytes, ...] = ()


class MissResolver:
    def __init__(
        self,
        index: CacheIndex,
        acl: list[GuixPublicKey],
        sources: list[NarinfoSource],
        settings: ResolverSettings | None = None,
        *,
        on_outcome: Callable[[str, float], None] = lambda outcome, seconds: None,
        on_rejected: Callable[[str], None] = lambda reason: None,
        trust: ItemTrust | None = None,
        checks: NarinfoCheckPool | None = None,
    ) -> None:
        self.index = index
        # Items accepted at the same moment (a Guix batch) are recorded in one transaction.
        self._adds = GroupedAdds(index.add_items_and_read)
        self._found_log = LinesPerWindow(log, "items found for misses")
        self.trust = trust
        self.sources = sources
        self.settings = settings or ResolverSettings()
        # Where relayed narinfos are checked (a worker process, or inline when None is given).
        self.checks = checks or NarinfoCheckPool(acl, self.settings.store_dir, 0)
        self.on_outcome = on_outcome
        self.on_rejected = on_rejected
        self._limit = asyncio.Semaphore(self.settings.max_concurrent)
        self._inflight: dict[str, asyncio.Future[Resolution | None]] = {}
        self._absent: dict[str, float] = {}
        self.provenances = Provenances()
        """Where each accepted item was found, for its NAR download."""

    @property
    def acl(self) -> list[GuixPublicKey]:
        """The Guix keys whose signatures the checks accept (passed to every check)."""
        return self.checks.acl

    @acl.setter
    def acl(self, keys: list[GuixPublicKey]) -> None:
        self.checks.acl = keys

    async def resolve(self, hash_part: str) -> IndexedItem | None:
        resolution = await self.resolution(hash_part)
        return resolution.item if resolution else None

    async def resolution(self, hash_part: str) -> Resolution | None:
        now = time.monotonic()
        until = self._absent.get(hash_part)
        if until is not None:
            if until > now:
                return None
            del self._absent[hash_part]
        running = self._inflight.get(hash_part)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Resolution | None] = asyncio.get_running_loop().create_future()
        self._inflight[hash_part] = future
        try:
            result = await self._lookup(hash_part)
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: waiters get it, no "never retrieved" warning
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[hash_part]

    async def _lookup(self, hash_part: str) -> Resolution | None:
        started = time.monotonic()
        async with self._limit:
            try:
                async with asyncio.timeout(self.settings.timeout):
                    accepted = await self._first_accepted(hash_part)
            except TimeoutError:
                accepted, outcome = None, "timeout"
            except _Inconclusive:
                accepted, outcome = None, "inconclusive"
            else:
                outcome = "found" if accepted else "absent"
        seconds = time.monotonic() - started
        self.on_outcome(outcome, seconds)
        if accepted is None:
            if outcome != "absent":
                raise LookupUndecided(
                    f"the lookup of {hash_part} "
                    + ("timed out" if outcome == "timeout" else "had no source that could tell")
                )
            self._remember_absent(hash_part)
            return None
        candidate, judged = accepted
        resolution = await self._record(hash_part, candidate, judged)
        self._found_log.info(
            "found %s at %s %s (%.0f ms)%s",
            judged.narinfo.store_path,
            "upstream" if candidate.origin is Origin.UPSTREAM else "peer",
            candidate.source,
            seconds * 1000,
            f", {judged.decision.explain()}" if judged.decision else "",
        )
        return resolution

    def _remember_absent(self, hash_part: str) -> None:
        if len(self._absent) >= self.settings.max_negative:
            now = time.monotonic()
            self._absent = {h: t for h, t in self._absent.items() if t > now}
            if len(self._absent) >= self.settings.max_negative:
                self._absent.clear()
        self._absent[hash_part] = time.monotonic() + self.settings.negative_ttl

    async def _first_accepted(self, hash_part: str) -> tuple[Candidate, Judged] | None:
        """The first candidate accepted; None when every source answered and none offered an
        acceptable narinfo; _Inconclusive when none was accepted and a source failed."""
        if len(self.sources) == 1:
            return await self._first_accepted_from(self.sources[0], hash_part)
        queue: asyncio.Queue[tuple[Candidate, asyncio.Future[None]] | None] = asyncio.Queue()
        failed: list[str] = []
        loop = asyncio.get_running_loop()

        async def drain(source: NarinfoSource) -> None:
            try:
                # Closed where it stands when this task is cancelled, not later by the
                # garbage collector: its pending asks end with the lookup.
                async with contextlib.aclosing(source(hash_part)) as candidates:
                    async for candidate in candidates:
                        # A source hears how its candidate fared before it goes on: one that
                        # was accepted closes the source where it stands (a DHT search not
                        # yet begun never begins); a refused one lets it ask further.
                        judged = loop.create_future()
                        await queue.put((candidate, judged))
                        await judged
            except P2PCacheError as e:
                log.debug("a narinfo source failed for %s: %s", hash_part, e)
                failed.append(str(e))
            finally:
                await queue.put(None)

        tasks = [asyncio.create_task(drain(source)) for source in self.sources]
        remaining = len(tasks)
        bundles: list[list[bytes]] = []  # gathered at most once per lookup
        try:
            while remaining:
                offered = await queue.get()
                if offered is None:
                    remaining -= 1
                    continue
                candidate, judged = offered
                accepted = await self._judge_or_refuse(candidate, hash_part, bundles)
                if accepted is None:
                    judged.set_result(None)
                    continue
                return candidate, accepted
            if failed:
                raise _Inconclusive(failed)
            return None
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _first_accepted_from(
        self, source: NarinfoSource, hash_part: str
    ) -> tuple[Candidate, Judged] | None:
        """`_first_accepted` for a node with one source (the default: peers, no upstream),
        in the lookup's own task: no task, queue and hand-over per miss, which were a tenth
        of the loop's work in a Guix batch. The source is suspended at its yield while its
        candidate is judged, as the hand-over makes it in the general case."""
        bundles: list[list[bytes]] = []
        async with contextlib.aclosing(source(hash_part)) as candidates:
            while True:
                try:
                    candidate = await anext(candidates)
                except StopAsyncIteration:
                    return None
                except P2PCacheError as e:
                    log.debug("a narinfo source failed for %s: %s", hash_part, e)
                    raise _Inconclusive([str(e)]) from e
                accepted = await self._judge_or_refuse(candidate, hash_part, bundles)
                if accepted is not None:
                    return candidate, accepted

    async def _judge_or_refuse(
        self, candidate: Candidate, hash_part: str, bundles: list[list[bytes]]
    ) -> Judged | None:
        """The candidate judged, or None when refused (counted and logged)."""
        try:
            return await self._judge(candidate, hash_part, bundles)
        except NarinfoRejected as e:
            self.on_rejected(e.reason)
            log.info("refused the narinfo of %s from %s: %s", hash_part, candidate.source, e)
            return None

    async def _judge(
        self, candidate: Candidate, hash_part: str, bundles: list[list[bytes]]
    ) -> Judged:
        """Accept a candidate or raise NarinfoRejected with the reason (for metrics)."""
        if self.trust is None or not self.trust.policy.needs_attestations:
            upstream = await self.checks.accept(candidate.data, hash_part)
            return Judged(
                upstream.narinfo,
                upstream.nar_size,
                upstream.signed_part,
                upstream.signature_line,
                None,
            )
        relayed = await self.checks.read(candidate.data, hash_part)
        if not bundles:
            bundles.append(await self.trust.gather(hash_part))
        decision = await self.trust.judge(relayed.claim, bundles[0])
        if not decision.accepted:
            raise NarinfoRejected(decision.reason, f"trust policy: {decision.explain()}")
        upstream = relayed.upstream if decision.basis in ("upstream", "both") else None
        return Judged(
            relayed.narinfo,
            relayed.claim.nar_size,
            upstream.signed_part if upstream else None,
            upstream.signature_line if upstream else None,
            decision,
            tuple(bundles[0]) if sum(map(len, bundles[0])) <= KEPT_BUNDLE_BYTES else (),
        )

    async def _record(self, hash_part: str, candidate: Candidate, accepted: Judged) -> Resolution:
        narinfo = accepted.narinfo
        assert narinfo.store_path is not None and narinfo.nar_hash is not None
        item = await self._adds.add(
            NewItem(
                hash_part=hash_part,
                store_path=narinfo.store_path,
                nar_hash=narinfo.nar_hash,
                nar_size=accepted.nar_size,
                references=narinfo.references or (),
                deriver=narinfo.deriver,
                origin=candidate.origin,
                signed_part=accepted.signed_part,
                signature=accepted.signature_line,
            )
        )
        assert item is not None  # read back in the transaction that added it
        provenance = Provenance(
            candidate.origin, candidate.source, accepted.decision, accepted.bundles
        )
        self.provenances.add(hash_part, provenance)
        return Resolution(item, provenance)
