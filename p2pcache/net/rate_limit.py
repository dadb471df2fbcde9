"""Token buckets: how much a source (or the node itself) may send per second.

A bucket holds up to `burst` tokens and refills at `rate` per second; an action costs one
token and is refused when none is left. The clock is an argument (loop time in the node,
anything monotonic in tests), so the arithmetic is pure.
"""

from __future__ import annotations

from collections import OrderedDict


class TokenBucket:
    """One budget: `rate` actions per second on average, `burst` at once."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = now

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take `cost` tokens if there are that many; say whether the action may go ahead."""
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < cost:
            return False
        self._tokens -= cost
        return True

    def available(self, now: float) -> float:
        """Tokens in the bucket now (nothing is taken)."""
        return min(self.burst, self._tokens + (now - self._stamp) * self.rate)

    def delay_for(self, now: float, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens will be available (0 if they are now)."""
        return max(0.0, (cost - self.available(now)) / self.rate)


class PerSourceLimiter:
    """A token bucket per source (an IP address), for at most `max_sources` sources.

    The table is bounded so that a spoofed-source flood cannot grow it without end: the least
    recently seen source is forgotten first (it starts again with a full bucket, which costs
    an attacker nothing it did not already have).
    """

    def __init__(self, rate: float, burst: float, max_sources: int = 4096) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, source: str, now: float) -> bool:
        """Whether `source` may have one more action now."""
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._buckets.popitem(last=False)
            bucket = self._buckets[source] = TokenBucket(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(source)
        return bucket.allow(now)

    def __len__(self) -> int:
        return len(self._buckets)
