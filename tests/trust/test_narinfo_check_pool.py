"""NarinfoCheckPool: the same verdicts as the pure checks, made in a real worker process."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from p2pcache.guix.narinfo import (
    format_nar_hash,
    render_narinfo,
    render_signature_line,
    render_signed_part,
)
from p2pcache.guix.narinfo_signature import signature_field
from p2pcache.guix.signing_key import generate_key_pair
from p2pcache.trust.narinfo_acceptance import NarinfoRejected, accept_relayed_narinfo
from p2pcache.trust.narinfo_check_pool import NarinfoCheckPool
from p2pcache.trust.narinfo_claim import read_relayed_narinfo
from tests.trust.test_narinfo_acceptance import GROUPS

STORE = "/gnu/store"


def hash_of(n: int) -> str:
    return f"{n:032d}".replace("0", "a").replace("1", "b")[:32]


def narinfo(key, n: int, *, tampered: bool = False, signed: bool = True) -> tuple[bytes, str]:
    """A narinfo for item n (its hash part and store path differ per n)."""
    h = hash_of(n)
    body = render_signed_part(
        f"{STORE}/{h}-item-{n}", format_nar_hash(bytes([n % 256]) * 32), 1000 + n, [], None
    )
    if not signed:
        return body + b"URL: nar/x\nCompression: none\n", h
    data = render_narinfo(body, render_signature_line(signature_field(body, key, "up")), GROUPS)
    if tampered:
        data = data.replace(f"NarSize: {1000 + n}".encode(), f"NarSize: {2000 + n}".encode())
    return data, h


def inline_verdict(check, data: bytes, h: str, acl):
    try:
        return check(data, h, acl, STORE)
    except NarinfoRejected as e:
        return ("refused", e.reason)


async def pool_verdict(method, data: bytes, h: str):
    try:
        return await method(data, h)
    except NarinfoRejected as e:
        return ("refused", e.reason)


def expected_verdicts(batch: list[tuple[bytes, str]], key) -> list:
    return [inline_verdict(accept_relayed_narinfo, d, h, [key.public]) for d, h in batch]


@pytest.fixture
async def pool():
    key = generate_key_pair()
    checks = NarinfoCheckPool([key.public], STORE, 1)
    checks.start()
    await checks.warm_up()
    try:
        yield checks, key
    finally:
        checks.close()


def mixed_batch(key, count: int) -> list[tuple[bytes, str]]:
    other = generate_key_pair()
    out = []
    for n in range(count):
        if n % 5 == 1:
            out.append(narinfo(key, n, tampered=True))
        elif n % 5 == 2:
            out.append(narinfo(other, n))
        elif n % 5 == 3:
            out.append(narinfo(key, n, signed=False))
        else:
            out.append(narinfo(key, n))
    return out


async def test_a_batch_goes_to_the_worker_and_gets_the_verdicts_of_the_pure_check(pool):
    checks, key = pool
    batch = mixed_batch(key, 150)  # more than one BATCH_LIMIT
    verdicts = await asyncio.gather(*(pool_verdict(checks.accept, d, h) for d, h in batch))
    assert verdicts == expected_verdicts(batch, key)
    reasons = {v[1] for v in verdicts if isinstance(v, tuple)}
    assert reasons == {"hash-mismatch", "unauthorized-key", "unsigned"}
    assert sum(not isinstance(v, tuple) for v in verdicts) == 60
    assert checks.counts.offloaded == 150 and checks.counts.inline == 0
    assert checks.counts.batches == 3


async def test_reading_claims_in_the_worker_matches_the_pure_reader(pool):
    checks, key = pool
    batch = mixed_batch(key, 20)
    verdicts = await asyncio.gather(*(pool_verdict(checks.read, d, h) for d, h in batch))
    expected = [inline_verdict(read_relayed_narinfo, d, h, [key.public]) for d, h in batch]
    assert verdicts == expected
    assert checks.counts.offloaded == 20


async def test_a_lone_check_is_made_on_the_loop_without_a_process(pool):
    checks, key = pool
    data, h = narinfo(key, 7)
    accepted = await checks.accept(data, h)
    assert accepted.narinfo.store_path == f"{STORE}/{h}-item-7"
    assert (checks.counts.inline, checks.counts.offloaded) == (1, 0)


async def test_the_workers_start_at_the_first_check_and_batches_are_checked_inline_meanwhile():
    key = generate_key_pair()
    checks = NarinfoCheckPool([key.public], STORE, 2)
    checks.start()
    try:
        assert checks._executor is None  # no process for a node that never misses
        data, h = narinfo(key, 7)
        await checks.accept(data, h)  # a lone miss: checked inline, but the workers start
        assert checks._executor is not None and checks.counts.inline == 1
        batch = mixed_batch(key, 10)
        verdicts = await asyncio.gather(*(pool_verdict(checks.accept, d, h) for d, h in batch))
        assert verdicts == expected_verdicts(batch, key)
        assert (checks.counts.inline, checks.counts.offloaded) == (11, 0)
        await checks.warm_up()
        assert len(checks._executor._processes) == 2  # both started, not one per batch
        assert checks.counts.processes_ready == 2
        again = await asyncio.gather(*(pool_verdict(checks.accept, d, h) for d, h in batch))
        assert again == verdicts
        assert checks.counts.offloaded == 10
    finally:
        checks.close()


async def test_no_processes_checks_everything_inline():
    key = generate_key_pair()
    checks = NarinfoCheckPool([key.public], STORE, 0)
    checks.start()
    batch = mixed_batch(key, 10)
    verdicts = await asyncio.gather(*(pool_verdict(checks.accept, d, h) for d, h in batch))
    assert verdicts == expected_verdicts(batch, key)
    assert (checks.counts.inline, checks.counts.offloaded) == (10, 0)
    checks.close()


async def test_the_acl_in_force_is_the_one_each_check_uses(pool):
    checks, key = pool
    batch = [narinfo(key, n) for n in range(4)]
    checks.acl = []
    verdicts = await asyncio.gather(*(pool_verdict(checks.accept, d, h) for d, h in batch))
    assert verdicts == [("refused", "unauthorized-key")] * 4


async def test_a_killed_worker_is_replaced_and_its_checks_are_still_answered(pool):
    checks, key = pool
    first = mixed_batch(key, 10)
    await asyncio.gather(*(pool_verdict(checks.accept, d, h) for d, h in first))
    executor = checks._executor
    assert executor is not None
    for pid in list(executor._processes):  # the worker processes started so far
        os.kill(pid, signal.SIGKILL)
    batch = mixed_batch(key, 30)
    verdicts = await asyncio.wait_for(
        asyncio.gather(*(pool_verdict(checks.accept, d, h) for d, h in batch)), 60
    )
    assert verdicts == expected_verdicts(batch, key)
    assert checks.counts.worker_failures == 1
    # A new worker is started and takes the next batch.
    await checks.warm_up()
    assert checks._executor is not executor
    offloaded = checks.counts.offloaded
    again = await asyncio.gather(*(pool_verdict(checks.accept, d, h) for d, h in batch))
    assert again == verdicts
    assert checks.counts.offloaded == offloaded + 30


async def test_checks_in_flight_when_the_worker_dies_are_all_answered(pool):
    """The batch that was running and those queued behind it fail with the dead pool (or are
    cancelled by its shutdown); their misses must still get verdicts."""
    checks, key = pool
    batch = mixed_batch(key, 200)  # four batches for the one worker
    tasks = [asyncio.create_task(pool_verdict(checks.accept, d, h)) for d, h in batch]
    while checks.counts.batches < 4:
        await asyncio.sleep(0)
    for pid in list(checks._executor._processes):
        os.kill(pid, signal.SIGKILL)
    verdicts = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert verdicts == expected_verdicts(batch, key)
    assert checks.counts.worker_failures == 1


def dying_start() -> None:
    """Replaces the worker's first job: the process dies as it starts."""
    os._exit(3)


async def test_a_worker_that_cannot_start_is_given_up_and_checks_stay_on_the_loop(monkeypatch):
    from p2pcache.trust import narinfo_check_pool

    monkeypatch.setattr(narinfo_check_pool, "_warm", dying_start)
    key = generate_key_pair()
    checks = NarinfoCheckPool([key.public], STORE, 1)
    checks.start()
    try:
        batch = mixed_batch(key, 10)
        for _ in range(narinfo_check_pool.MAX_FAILURES_IN_A_ROW + 1):
            verdicts = await asyncio.gather(*(pool_verdict(checks.accept, d, h) for d, h in batch))
            assert verdicts == expected_verdicts(batch, key)
            await checks.warm_up()  # the new process dies starting
        assert checks.counts.worker_failures == narinfo_check_pool.MAX_FAILURES_IN_A_ROW
        assert checks.counts.offloaded == 0 and checks._executor is None
        verdicts = await asyncio.gather(*(pool_verdict(checks.accept, d, h) for d, h in batch))
        assert verdicts == expected_verdicts(batch, key)
        assert checks._executor is None  # no new attempt
    finally:
        checks.close()


async def test_a_check_whose_miss_gave_up_does_not_disturb_the_others(pool):
    checks, key = pool
    batch = [narinfo(key, n) for n in range(40)]
    tasks = [asyncio.create_task(checks.accept(d, h)) for d, h in batch]
    await asyncio.sleep(0)  # the batch is handed to the worker
    tasks[3].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    assert [r.narinfo.store_path for i, r in enumerate(results) if i != 3] == [
        f"{STORE}/{h}-item-{n}" for n, (_, h) in enumerate(batch) if n != 3
    ]
