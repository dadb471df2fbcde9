"""The access log: bounded, drained in batches."""

from p2pcache.cache.access_log import AccessLog


def test_records_and_drains():
    log = AccessLog(limit=10)
    log.record("a")
    log.record("b")
    log.record("a")
    assert len(log) == 2
    drained = log.drain()
    assert set(drained) == {"a", "b"} and all(t > 1_700_000_000 for t in drained.values())
    assert len(log) == 0


def test_calls_back_when_full_so_memory_stays_bounded():
    full = []
    log = AccessLog(limit=3, on_full=lambda: full.append(len(log)))
    for h in "abcde":
        log.record(h)
        if full:
            log.drain()
            full.clear()
        assert len(log) < 3
