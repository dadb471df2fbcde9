"""The provenance kept for promised items: bounded in count and in bundle bytes, oldest first."""

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcache.cache.index import Origin
from p2pcache.provenance import Provenance, Provenances


def found(n: int, bundle_sizes: tuple[int, ...] = ()) -> Provenance:
    return Provenance(Origin.PEER, f"http://peer-{n}", None, tuple(b"b" * s for s in bundle_sizes))


def test_the_oldest_go_first_when_there_are_too_many():
    kept = Provenances(max_items=3)
    for n in range(5):
        kept.add(f"h{n}", found(n))
    assert len(kept) == 3
    assert [kept.get(f"h{n}") for n in range(2)] == [None, None]
    assert kept.get("h4") == found(4)


def test_bundle_bytes_are_bounded_and_counted_back_when_forgotten():
    kept = Provenances(max_bundle_bytes=1000)
    kept.add("a", found(1, (300, 100)))
    kept.add("b", found(2, (500,)))
    assert kept.bundle_bytes == 900
    kept.add("c", found(3, (200,)))  # 1100: the oldest goes
    assert kept.get("a") is None and kept.bundle_bytes == 700
    kept.pop("b")
    kept.pop("b")  # twice: no harm
    assert kept.bundle_bytes == 200
    kept.add("d", found(4, (5000,)))  # more than the bound alone: not kept, nor kept others
    assert len(kept) == 0 and kept.bundle_bytes == 0


def test_an_item_added_again_is_the_newest_and_counted_once():
    kept = Provenances(max_items=2)
    kept.add("a", found(1, (10,)))
    kept.add("b", found(2))
    kept.add("a", found(3, (20,)))
    kept.add("c", found(4))
    assert kept.get("b") is None and kept.get("a") == found(3, (20,))
    assert kept.bundle_bytes == 20


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from("abcdefgh"),
            st.booleans(),
            st.lists(st.integers(0, 400), max_size=3),
        ),
        max_size=60,
    )
)
def test_bounds_and_byte_count_hold_whatever_happens(steps):
    kept = Provenances(max_items=4, max_bundle_bytes=1000)
    for n, (key, remove, sizes) in enumerate(steps):
        if remove:
            kept.pop(key)
        else:
            kept.add(key, found(n, tuple(sizes)))
        present = [kept.get(k) for k in "abcdefgh" if kept.get(k) is not None]
        assert len(present) == len(kept) <= 4
        assert kept.bundle_bytes == sum(p.bundle_bytes for p in present) <= 1000
