"""Ranking peers by what they did: fast, reliable providers first; liars penalized, then banned.

A provider that was merely unavailable loses a little standing; one that sent bytes failing a
check (a chunk that does not match its digest, a malformed table) is penalized hard and, after
`ban_after` such offences, banned for `ban_seconds`. Throughput and latency are exponentially
weighted moving averages, so a peer that recovers climbs back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

SMOOTHING = 0.3


@dataclass
class PeerScore:
    successes: int = 0
    unavailable: int = 0
    misbehaved: int = 0
    latency: float | None = None
    """Seconds to the first byte, smoothed."""
    throughput: float | None = None
    """Bytes per second, smoothed."""
    banned_until: float = 0.0

    def rank_key(self) -> tuple[float, float, float]:
        # Lower is better: offences first, then slowness.
        speed = self.throughput or 0.0
        return (self.misbehaved * 10 + self.unavailable, -speed, self.latency or 1.0)


def _smooth(old: float | None, new: float) -> float:
    return new if old is None else (1 - SMOOTHING) * old + SMOOTHING * new


class PeerRanking:
    def __init__(
        self,
        *,
        ban_after: int = 3,
        ban_seconds: float = 600.0,
        max_peers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ban_after = ban_after
        self.ban_seconds = ban_seconds
        self.max_peers = max_peers
        self.clock = clock
        self.scores: dict[str, PeerScore] = {}

    def _score(self, peer: str) -> PeerScore:
        score = self.scores.get(peer)
        if score is None:
            if len(self.scores) >= self.max_peers:
                # Forget the least useful half of the peers we have never banned.
                keep = sorted(self.scores.items(), key=lambda kv: kv[1].rank_key())
                self.scores = dict(keep[: self.max_peers // 2])
            score = self.scores[peer] = PeerScore()
        return score

    def record_success(self, peer: str, seconds: float, nbytes: int, latency: float) -> None:
        score = self._score(peer)
        score.successes += 1
        score.latency = _smooth(score.latency, latency)
        if seconds > 0:
            score.throughput = _smooth(score.throughput, nbytes / seconds)

    def record_unavailable(self, peer: str) -> None:
        self._score(peer).unavailable += 1

    def record_misbehaved(self, peer: str) -> bool:
        """Count an offence; returns True when this one got the peer banned."""
        score = self._score(peer)
        score.misbehaved += 1
        if score.misbehaved % self.ban_after == 0:
            score.banned_until = self.clock() + self.ban_seconds
            return True
        return False

    def is_banned(self, peer: str) -> bool:
        score = self.scores.get(peer)
        return score is not None and score.banned_until > self.clock()

    def order(self, peers: Iterable[str]) -> list[str]:
        """Peers not banned, best first (unknown peers rank as neutral)."""
        usable = [p for p in dict.fromkeys(peers) if not self.is_banned(p)]
        return sorted(usable, key=lambda p: self.scores.get(p, PeerScore()).rank_key())

    def banned_count(self) -> int:
        now = self.clock()
        return sum(1 for s in self.scores.values() if s.banned_until > now)
