"""BoundedRoutingTable: a neighbour search that finds neighbours, and address limits."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from kademlia.node import Node
from kademlia.routing import RoutingTable

from p2pcache.net.dht_routing import BoundedRoutingTable, ContactLimits, subnet_of
from p2pcache.net.dht_stats import DHTStats


class FakeProtocol:
    """What the routing table calls back: pings of a full bucket's oldest contact."""

    def __init__(self) -> None:
        self.pinged: list[Node] = []
        self.tasks: set[asyncio.Future] = set()

    async def call_ping(self, node: Node) -> tuple[bool, None]:
        self.pinged.append(node)
        return (True, None)

    def keep_alive(self, task: asyncio.Future) -> None:
        self.tasks.add(task)


def node_id(value: int) -> bytes:
    return value.to_bytes(20, "big")


def contact(value: int, ip: str | None = None, port: int = 8083) -> Node:
    return Node(node_id(value), ip or f"10.{value % 200}.{value // 200 % 200}.1", port)


def table(ksize: int = 20, limits: ContactLimits | None = None, own: int = 0):
    return BoundedRoutingTable(FakeProtocol(), ksize, Node(node_id(own)), limits, DHTStats())


def recount(routing: BoundedRoutingTable) -> Counter:
    return Counter(
        n.ip for b in routing.buckets for n in (*b.nodes.values(), *b.replacement_nodes.values())
    )


def test_neighbours_are_found_where_the_stock_table_finds_none():
    own = Node(node_id(0))
    stock = RoutingTable(FakeProtocol(), 2, own)
    ours = table(ksize=2)
    for value in range(1, 12):  # all near our own id: the far buckets stay empty
        stock.add_contact(contact(value))
        ours.add_contact(contact(value))
    far = Node(node_id(2**160 - 1))
    assert stock.find_neighbors(far) == []  # the library's bug: it stops at an empty bucket
    found = ours.find_neighbors(far)
    everyone = sorted(ours.contacts(), key=lambda n: n.long_id ^ far.long_id)
    assert [n.id for n in found] == [n.id for n in everyone[:2]]


def test_find_neighbors_is_the_k_closest_by_xor_distance():
    rng = random.Random(4)
    routing = table(ksize=8)
    for _ in range(300):
        value = rng.getrandbits(160)
        routing.add_contact(contact(value, ip=f"10.{rng.randrange(250)}.{rng.randrange(250)}.1"))
    for _ in range(50):
        target = Node(node_id(rng.getrandbits(160)))
        expected = sorted(routing.contacts(), key=lambda n: n.long_id ^ target.long_id)[:8]
        assert routing.find_neighbors(target) == expected


def test_the_target_and_the_excluded_address_are_left_out():
    routing = table(ksize=4)
    nodes = [contact(v) for v in (5, 6, 7, 8, 9)]
    for n in nodes:
        routing.add_contact(n)
    found = routing.find_neighbors(nodes[0], exclude=nodes[1])
    assert nodes[0] not in found and nodes[1] not in found and len(found) == 3


def test_one_ip_address_holds_at_most_two_contacts():
    routing = table()
    rng = random.Random(1)
    flood = [contact(rng.getrandbits(160), ip="203.0.113.66") for _ in range(300)]
    accepted = [routing.add_contact(n) for n in flood]
    assert sum(accepted) == 2
    assert routing.size() == 2
    assert routing.stats.contacts_refused["per_ip"] == 298


def test_one_subnet_holds_at_most_eight_contacts():
    routing = table()
    rng = random.Random(2)
    for host in range(1, 40):
        routing.add_contact(contact(rng.getrandbits(160), ip=f"203.0.113.{host}"))
    assert routing.size() == 8
    assert routing.stats.contacts_refused["per_subnet"] == 31


def test_ipv6_subnets_are_48_bits():
    limits = ContactLimits()
    assert subnet_of("2001:db8:1:2::7", limits) == subnet_of("2001:db8:1:ffff::9", limits)
    assert subnet_of("2001:db8:2::7", limits) != subnet_of("2001:db8:1::7", limits)
    assert subnet_of("127.5.6.1", limits) == "127.5.6.0/24"


def test_limits_are_configurable():
    routing = table(limits=ContactLimits(max_per_ip=5, max_per_subnet=5))
    rng = random.Random(3)
    for _ in range(20):
        routing.add_contact(contact(rng.getrandbits(160), ip="203.0.113.9"))
    assert routing.size() == 5


# Two ids sharing exactly 5 leading bits, far from our own id (all ones): their bucket is full
# at k = 2 and cannot split (paper §4.2: depth ≡ 0 mod 5), so newcomers go to its cache.
UNSPLITTABLE = (2**154, 1)


def test_replacement_caches_count_against_the_limits():
    routing = table(ksize=2, own=2**160 - 1)
    for value in UNSPLITTABLE:
        routing.add_contact(contact(value, ip=f"192.0.2.{value % 250}"))
    assert routing.add_contact(contact(3, ip="192.0.2.9")) is False  # cached
    assert routing.size() == 2
    assert routing.add_contact(contact(10, ip="192.0.2.9")) is False  # cached: 2nd for that IP
    assert routing.add_contact(contact(11, ip="192.0.2.9")) is False  # refused: 3rd
    assert routing.stats.contacts_refused["per_ip"] == 1
    assert recount(routing) == routing.census.per_ip


def test_a_known_id_is_not_moved_to_another_address():
    routing = table()
    original = contact(42, ip="192.0.2.42")
    routing.add_contact(original)
    routing.add_contact(Node(original.id, "203.0.113.66", 9999))
    (held,) = routing.contacts()
    assert (held.ip, held.port) == ("192.0.2.42", 8083)


def test_the_census_follows_splits_and_removals():
    routing = table(ksize=4)
    rng = random.Random(5)
    nodes = []
    for _ in range(400):
        n = contact(rng.getrandbits(160), ip=f"10.{rng.randrange(30)}.{rng.randrange(3)}.1")
        routing.add_contact(n)
        nodes.append(n)
        if rng.random() < 0.3:
            routing.remove_contact(rng.choice(nodes))
        assert recount(routing) == routing.census.per_ip
    assert max(routing.census.per_ip.values()) <= 2


async def test_a_full_bucket_pings_its_oldest_contact_once():
    routing = table(ksize=2, own=2**160 - 1)
    for value in UNSPLITTABLE:
        routing.add_contact(contact(value))
    routing.add_contact(contact(3))
    routing.add_contact(contact(4))
    await asyncio.gather(*routing.protocol.tasks)
    assert [n.long_id for n in routing.protocol.pinged] == [2**154]


@pytest.mark.parametrize("count", [0, 1, 15])
def test_size_counts_bucket_contacts(count):
    routing = table()
    for value in range(1, count + 1):
        routing.add_contact(contact(value * 7919))
    assert routing.size() == len(routing.contacts()) == count
