"""The miss resolver: the first acceptable narinfo any source offers; a conclusive absence is
remembered for a while, a lookup that could not finish is not, and says so."""

import asyncio

import pytest

from p2pcache.cache.index import CacheIndex, Origin
from p2pcache.errors import LookupUndecided, P2PCacheError
from p2pcache.guix.signing_key import generate_key_pair
from p2pcache.resolver import Candidate, MissResolver, ResolverSettings
from tests.trust.test_narinfo_acceptance import HASH, body, signed

STORE_PATH = f"/gnu/store/{HASH}-p2p-test-tree"


def signed_narinfo(key) -> bytes:
    return signed(key, body(STORE_PATH))


class Source:
    """A narinfo source whose behaviour a test sets: offer these narinfos, wait, or fail."""

    def __init__(self, offers=(), delay: float = 0.0, error: str | None = None) -> None:
        self.offers = list(offers)
        self.delay = delay
        self.error = error
        self.asked: list[str] = []

    async def __call__(self, hash_part: str):
        self.asked.append(hash_part)
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise P2PCacheError(self.error)
        for data in self.offers:
            yield Candidate(Origin.PEER, "http://127.0.0.1:1", data)


@pytest.fixture
async def index(tmp_path):
    async with CacheIndex(tmp_path / "index.sqlite") as idx:
        yield idx


def resolver(index, sources, outcomes: list[str] | None = None, key=None) -> MissResolver:
    record = outcomes if outcomes is not None else []
    return MissResolver(
        index,
        [key.public] if key else [],
        sources,
        ResolverSettings(timeout=0.3),
        on_outcome=lambda outcome, seconds: record.append(outcome),
    )


async def test_the_first_acceptable_narinfo_is_recorded(index):
    key = generate_key_pair()
    garbage, good = Source([b"not a narinfo"]), Source([signed_narinfo(key)], delay=0.05)
    outcomes: list[str] = []
    item = await resolver(index, [garbage, good], outcomes, key).resolve(HASH)
    assert item is not None and item.store_path == STORE_PATH
    assert index.get(HASH).signed_part.startswith(b"StorePath: " + STORE_PATH.encode())
    assert outcomes == ["found"]


async def test_a_conclusive_absence_is_remembered(index):
    source = Source()
    outcomes: list[str] = []
    r = resolver(index, [source], outcomes)
    assert await r.resolve(HASH) is None
    assert await r.resolve(HASH) is None
    assert source.asked == [HASH] and outcomes == ["absent"]  # the second from memory


@pytest.mark.parametrize(
    ("source", "outcome", "says"),
    [
        (Source(delay=5.0), "timeout", "timed out"),
        (Source(error="no DHT contact answered"), "inconclusive", "no source that could tell"),
    ],
)
async def test_a_lookup_that_could_not_finish_says_so_and_is_asked_again(
    index, source, outcome, says
):
    outcomes: list[str] = []
    r = resolver(index, [source], outcomes)
    for _ in range(2):
        with pytest.raises(LookupUndecided, match=says):
            await r.resolve(HASH)
    assert source.asked == [HASH, HASH]  # never remembered as absent
    assert outcomes == [outcome, outcome]


async def test_the_same_miss_asked_twice_at_once_is_looked_up_once(index):
    key = generate_key_pair()
    source = Source([signed_narinfo(key)], delay=0.05)
    r = resolver(index, [source], key=key)
    first, second = await asyncio.gather(r.resolve(HASH), r.resolve(HASH))
    assert first == second and first is not None
    assert source.asked == [HASH]


class ClosingSource(Source):
    """A Source that notes when its generator is closed, and how far it got."""

    def __init__(self, offers=(), delay: float = 0.0) -> None:
        super().__init__(offers, delay)
        self.closed_after: int | None = None

    async def __call__(self, hash_part: str):
        offered = 0
        try:
            async for candidate in super().__call__(hash_part):
                offered += 1
                yield candidate
        finally:
            self.closed_after = offered


@pytest.mark.parametrize("alone", [True, False], ids=["one source", "with a second source"])
async def test_a_refused_candidate_lets_the_source_go_on_and_an_accepted_one_closes_it(
    index, alone
):
    """Alone, the source is read in the lookup's own task; beside another, through the
    hand-over queue. Either way it is suspended while its candidate is judged, goes on after
    a refusal, and is closed where it stands after an acceptance."""
    key = generate_key_pair()
    source = ClosingSource([b"not a narinfo", signed_narinfo(key), signed_narinfo(key)])
    sources = [source] if alone else [source, Source(delay=5.0)]
    closed_when_decided: list[int | None] = []
    r = MissResolver(
        index,
        [key.public],
        sources,
        ResolverSettings(timeout=0.3),
        on_outcome=lambda outcome, seconds: closed_when_decided.append(source.closed_after),
    )
    item = await r.resolve(HASH)
    assert item is not None and item.store_path == STORE_PATH
    # Closed by the time the outcome is known (not later by the garbage collector), before
    # the third candidate was produced.
    assert closed_when_decided == [2]


@pytest.mark.parametrize("alone", [True, False], ids=["one source", "with a second source"])
async def test_a_lookup_that_times_out_closes_its_sources(index, alone):
    source = ClosingSource(delay=5.0)
    sources = [source] if alone else [source, Source(delay=5.0)]
    closed_when_decided: list[int | None] = []
    r = MissResolver(
        index,
        [],
        sources,
        ResolverSettings(timeout=0.3),
        on_outcome=lambda outcome, seconds: closed_when_decided.append(source.closed_after),
    )
    with pytest.raises(LookupUndecided, match="timed out"):
        await r.resolve(HASH)
    assert closed_when_decided == [0]
