"""What the node did lately: recent NAR transfers and verification failures.

`p2pcache status` and the status page list the last few of each, so an operator sees at a
glance which items came from where and what was refused; the rings are bounded
(`RECENT_EVENTS` each) so a busy or attacked node never grows them. Verification failures are
also counted by check and exported as one family, `p2pcache_verification_failures_total{check}`,
so a single alert rule (`increase(...[10m]) > 0`) covers every check, whichever part made it.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

# Events kept per ring: enough for a screen of history, small enough to never matter.
RECENT_EVENTS = 50

# A detail comes from errors that may quote what a peer sent; keep it to a line.
MAX_DETAIL = 300

# The checks whose failure is counted, as the `check` label's only values:
#   chunk             a chunk from a peer did not hash to its digest in the chunk table
#   chunk_table       a peer's chunk table did not match the chunk root or the NarSize
#   nar_hash          a fetched NAR (from peers or an upstream) did not hash to its NarHash
#   narinfo_signature a relayed narinfo's signature was invalid or made for other contents
#   store_nar_hash    an item of the local store did not hash to what the Guix database says
CHECKS = ("chunk", "chunk_table", "nar_hash", "narinfo_signature", "store_nar_hash")


@dataclass(frozen=True, slots=True)
class Transfer:
    """One NAR brought into the cache from a peer or an upstream server (or not)."""

    time: float
    item: str
    source: str
    outcome: str
    nar_bytes: int
    seconds: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class VerificationFailure:
    """Bytes or a signature that did not pass a check; nothing of it was kept."""

    time: float
    check: str
    item: str
    source: str
    detail: str
    count: int = 1


def _line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


class RecentActivity(Collector):
    """Bounded rings of recent events, and the verification-failure counts as a metric."""

    def __init__(self, size: int = RECENT_EVENTS, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.transfers: deque[Transfer] = deque(maxlen=size)
        self.failures: deque[VerificationFailure] = deque(maxlen=size)
        self.failure_counts: Counter[str] = Counter({check: 0 for check in CHECKS})
        self.transfer_counts: Counter[str] = Counter()

    def transfer(
        self,
        item: str,
        source: str,
        outcome: str,
        nar_bytes: int,
        seconds: float,
        detail: str = "",
    ) -> None:
        """Record a transfer that ended (`outcome` "ok" or "failed")."""
        self.transfer_counts[outcome] += 1
        self.transfers.append(
            Transfer(
                self.clock(), item, source, outcome, nar_bytes, round(seconds, 3), _line(detail)
            )
        )

    def verification_failed(
        self, check: str, detail: str, *, item: str = "", source: str = "", count: int = 1
    ) -> None:
        """Record `count` failures of `check` (one of CHECKS: a bounded metric label)."""
        if check not in CHECKS:
            raise ValueError(f"unknown verification check {check!r}")
        self.failure_counts[check] += count
        self.failures.append(
            VerificationFailure(self.clock(), check, item, source, _line(detail), count)
        )

    def as_dict(self) -> dict[str, Any]:
        """The rings (newest first) and counts, as JSON-ready data."""
        return {
            "transfers": {
                "counts": dict(self.transfer_counts),
                "recent": [asdict(t) for t in reversed(self.transfers)],
            },
            "verification_failures": {
                "counts": dict(self.failure_counts),
                "recent": [asdict(f) for f in reversed(self.failures)],
            },
        }

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "p2pcache_verification_failures",
            "Data that failed a check and was refused, by check (chunk, chunk_table, nar_hash, "
            "narinfo_signature, store_nar_hash).",
            labels=["check"],
        )
        for check in CHECKS:
            family.add_metric([check], self.failure_counts[check])
        yield family
