"""Which recent providers a miss is offered to first, and when the DHT search must start."""

import asyncio

from p2pcache.net.recent_providers import RecentProviders


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def in_order(peers: list[str]) -> list[str]:
    return list(peers)


def recent(clock: Clock, **settings) -> RecentProviders:
    return RecentProviders(clock=clock, **settings)


def test_only_peers_whose_narinfos_were_accepted_are_asked():
    clock = Clock()
    providers = recent(clock)
    assert providers.to_ask(2, in_order) == []
    providers.accepted("http://a")
    providers.answered("http://b", True, 0.01)  # never accepted: not remembered
    assert providers.to_ask(2, in_order) == ["http://a"]
    assert providers.to_ask(0, in_order) == []


def test_the_best_hit_rates_come_first_and_the_ranking_filters():
    clock = Clock()
    providers = recent(clock)
    for peer in ("http://a", "http://b", "http://c"):
        providers.accepted(peer)
    providers.answered("http://a", False, 0.01)
    providers.answered("http://c", True, 0.01)
    assert providers.to_ask(2, in_order) == ["http://b", "http://c"]
    without_b = providers.to_ask(3, lambda peers: [p for p in peers if p != "http://b"])
    assert without_b == ["http://c", "http://a"]


def test_a_peer_that_mostly_lacks_the_items_stops_being_asked_until_it_provides_again():
    clock = Clock()
    providers = recent(clock, min_hit_rate=0.25)
    providers.accepted("http://a")
    asks = 0
    while providers.to_ask(1, in_order):
        providers.answered("http://a", False, 0.01)
        asks += 1
    assert asks == 7  # 0.8 ** 7 = 0.21: under a quarter after seven misses in a row
    providers.accepted("http://a")  # found through the DHT and accepted again
    assert providers.to_ask(1, in_order) == ["http://a"]


def test_failed_peers_are_dropped_and_silent_ones_forgotten():
    clock = Clock()
    providers = recent(clock, ttl=600.0)
    providers.accepted("http://a")
    providers.accepted("http://b")
    providers.failed("http://a")
    assert providers.to_ask(2, in_order) == ["http://b"]
    clock.now += 599.0
    providers.answered("http://b", True, 0.01)  # answering does not renew membership
    assert providers.to_ask(2, in_order) == ["http://b"]
    clock.now += 2.0
    assert providers.to_ask(2, in_order) == []


def test_the_number_of_peers_is_bounded_and_the_stalest_goes():
    clock = Clock()
    providers = recent(clock, max_peers=3)
    for n in range(5):
        clock.now += 1
        providers.accepted(f"http://p{n}")
    assert sorted(providers.to_ask(5, in_order)) == ["http://p2", "http://p3", "http://p4"]
    clock.now += 1
    providers.accepted("http://p2")  # renewed, so p3 is now the stalest
    providers.accepted("http://p5")
    assert sorted(providers.to_ask(5, in_order)) == ["http://p2", "http://p4", "http://p5"]


def test_the_hedge_follows_the_peers_usual_answer_time_and_its_progress():
    clock = Clock()
    providers = recent(clock, hedge_floor=0.2, hedge_factor=3.0)
    providers.accepted("http://a")
    asked = clock.now
    assert providers.hedge_at("http://a", asked) == asked + 0.2  # nothing known: the floor
    providers.answered("http://a", True, 0.5)
    assert providers.hedge_at("http://a", asked) == clock.now + 1.5
    clock.now += 1.0
    providers.answered("http://a", True, 0.5)  # still answering others: not stuck
    assert providers.hedge_at("http://a", asked) == clock.now + 1.5
    later = clock.now + 5.0
    assert providers.hedge_at("http://a", later) == later + 1.5
    assert providers.hedge_at("http://gone", asked) == asked  # dropped: search at once


async def test_a_new_peer_wakes_those_waiting_for_one():
    providers = recent(Clock())
    added = providers.next_added()
    assert providers.next_added() is added
    providers.accepted("http://a")
    await asyncio.wait_for(added, 1)
    again = providers.next_added()
    assert again is not added and not again.done()
    providers.accepted("http://a")  # known already: nobody new
    assert not again.done()
