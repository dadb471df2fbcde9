"""Token buckets, per node and per source."""

from __future__ import annotations

import pytest

from p2pcache.net.rate_limit import PerSourceLimiter, TokenBucket


def test_a_bucket_allows_its_burst_then_its_rate():
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert [bucket.allow(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.delay_for(0.0) == pytest.approx(0.1)
    assert bucket.allow(0.1)
    assert not bucket.allow(0.1)
    assert bucket.available(10.0) == 5  # never more than the burst


def test_a_bucket_takes_several_tokens_at_once():
    bucket = TokenBucket(rate=100, burst=1000, now=0.0)
    assert bucket.allow(0.0, 600)
    assert not bucket.allow(0.0, 600)
    assert bucket.delay_for(0.0, 600) == pytest.approx(2.0)


def test_sources_have_separate_buckets():
    limiter = PerSourceLimiter(rate=1, burst=2)
    assert [limiter.allow("192.0.2.1", 0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("192.0.2.2", 0.0)


def test_the_source_table_is_bounded():
    limiter = PerSourceLimiter(rate=1, burst=1, max_sources=100)
    for i in range(1000):
        limiter.allow(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(limiter) == 100


def test_a_bucket_needs_a_positive_rate():
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0.0)
