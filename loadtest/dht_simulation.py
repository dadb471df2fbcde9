"""DHT simulation: many p2pcache DHT nodes in one process, on loopback, measured.

Every node is a real DHTNode with its own UDP socket on its own address 127.A.B.1 (so each
node is alone in its /24 and the routing table's per-IP and per-/24 limits stay on), all on
one uvloop event loop. Latencies therefore include the loop's queueing (CPU), not a network.

Lookup phase (issue 4, "Proof"): `--items` keys are each announced by `--announcers` random
nodes; then `--lookups` lookups of a random key from a random node that does not hold the key
itself; then `--kill` of the nodes are stopped and the lookups run again, counting only keys
that still have a live announcer. A lookup succeeds when it returns a valid record signed by
a live announcer of the key. Reported: success rate, rounds to the first valid record and to
the end (median, p95, max), latency, queries, and how many lookups took longer than twice the
RPC timeout.

Announce phase (`--announce 10000,100000`): one node announces that many new items with the
grouped placer (region walks + store_many); `--naive N` places N items the per-key way (one
k-closest lookup and k STOREs each) for comparison. Reported: time, requests the announcer
sent, datagrams sent by all nodes, replicas placed, and a sample of lookups for the items.

    python loadtest/dht_simulation.py --nodes 200 --lookups 5000 --kill 0.3
    python loadtest/dht_simulation.py --nodes 1000 --lookups 5000 --kill 0.3
    python loadtest/dht_simulation.py --nodes 1000 --lookups 0 --announce 10000,100000 \\
        --naive 10000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pcache.guix import nix32
from p2pcache.net.dht import DHTConfig, DHTNode
from p2pcache.net.dht_storage import StorageLimits
from p2pcache.net.identity import NodeIdentity
from p2pcache.net.provider_record import (
    ProviderRecord,
    provider_key,
    sign_record,
)


def node_address(index: int) -> str:
    """127.A.B.1, a /24 of its own for each node (all of 127/8 reaches loopback)."""
    return f"127.{10 + index // 250}.{index % 250 + 1}.1"


def random_hash_part(rng: random.Random) -> str:
    return nix32.encode(rng.randbytes(20))


@dataclass
class LookupSample:
    success: bool
    any_record: bool
    rounds_to_first: int | None
    rounds: int
    seconds: float
    queries: int
    unanswered: int
    stalled: int
    complete: bool


def _median(values: list[int]) -> float:
    return statistics.median(values) if values else 0


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def network_datagrams(nodes: list[DHTNode]) -> int:
    return sum(n.stats.datagrams_sent for n in nodes)


async def start_network(count: int, config: DHTConfig, rng: random.Random) -> list[DHTNode]:
    nodes: list[DHTNode] = []
    first = DHTNode(NodeIdentity.generate(), config, rng=random.Random(rng.random()))
    await first.start(node_address(0), 0)
    nodes.append(first)
    started = time.monotonic()
    # Nodes join a few at a time, each through a random node already in.
    batch = 10
    for base in range(1, count, batch):
        joining = []
        for index in range(base, min(count, base + batch)):
            node = DHTNode(NodeIdentity.generate(), config, rng=random.Random(rng.random()))
            joining.append((node, index, rng.choice(nodes).address))
        await asyncio.gather(*(n.start(node_address(i), 0, [boot]) for n, i, boot in joining))
        nodes.extend(n for n, _, _ in joining)
    sizes = sorted(n.stats.routing_table_size for n in nodes)
    print(
        f"joined {count} nodes in {time.monotonic() - started:.1f} s; routing table size "
        f"median {statistics.median(sizes)} (min {sizes[0]}, max {sizes[-1]})",
        flush=True,
    )
    return nodes


async def announce_items(
    nodes: list[DHTNode], items: int, per_item: int, rng: random.Random
) -> dict[str, set[bytes]]:
    """Each item announced by `per_item` random nodes; returns hash part -> announcer keys."""
    announcers: dict[str, set[bytes]] = {}
    per_node: dict[int, list[str]] = {}
    for _ in range(items):
        hash_part = random_hash_part(rng)
        chosen = rng.sample(range(len(nodes)), per_item)
        announcers[hash_part] = {nodes[i].identity.public_key for i in chosen}
        for i in chosen:
            per_node.setdefault(i, []).append(hash_part)
    started = time.monotonic()
    semaphore = asyncio.Semaphore(20)

    async def announce(index: int, hash_parts: list[str]) -> None:
        async with semaphore:
            node = nodes[index]
            await node.announce(hash_parts, f"http://{node.address[0]}:8081")

    await asyncio.gather(*(announce(i, h) for i, h in per_node.items()))
    print(
        f"announced {items} items x {per_item} announcers from {len(per_node)} nodes in "
        f"{time.monotonic() - started:.1f} s",
        flush=True,
    )
    return announcers


async def run_lookups(
    nodes: list[DHTNode],
    alive: list[bool],
    announcers: dict[str, set[bytes]],
    count: int,
    concurrency: int,
    rng: random.Random,
) -> list[LookupSample]:
    live_keys = {n.identity.public_key for n, up in zip(nodes, alive, strict=True) if up}
    eligible = [h for h, owners in announcers.items() if owners & live_keys]
    live_nodes = [n for n, up in zip(nodes, alive, strict=True) if up]
    jobs = []
    for _ in range(count):
        hash_part = rng.choice(eligible)
        key = provider_key(hash_part)
        while True:
            node = rng.choice(live_nodes)
            if node.identity.public_key not in announcers[hash_part] and not (
                node.storage.records(key)
            ):
                break
        jobs.append((node, hash_part))
    samples: list[LookupSample] = []
    semaphore = asyncio.Semaphore(concurrency)

    async def one(node: DHTNode, hash_part: str) -> None:
        async with semaphore:
            result = await node.find_providers(hash_part)
        signers = {r.record.public_key for r in result.records}
        samples.append(
            LookupSample(
                success=bool(signers & announcers[hash_part] & live_keys),
                any_record=result.found,
                rounds_to_first=result.rounds_to_first,
                rounds=result.rounds,
                seconds=result.seconds,
                queries=result.queries,
                unanswered=result.unanswered,
                stalled=result.stalled,
                complete=result.complete,
            )
        )

    await asyncio.gather(*(one(n, h) for n, h in jobs))
    return samples


def report_lookups(title: str, samples: list[LookupSample], rpc_timeout: float) -> None:
    n = len(samples)
    ok = sum(s.success for s in samples)
    first = [s.rounds_to_first for s in samples if s.rounds_to_first is not None]
    rounds = [s.rounds for s in samples]
    seconds = [s.seconds for s in samples]
    queries = [s.queries for s in samples]
    slow = sum(s.seconds > 2 * rpc_timeout for s in samples)
    with_dead = [s for s in samples if s.unanswered or s.stalled]
    print(f"--- {title}")
    print(f"lookups                       {n}")
    print(f"success (live announcer)      {ok}/{n} = {100 * ok / n:.2f} %")
    print(f"any valid record              {sum(s.any_record for s in samples)}/{n}")
    print(
        f"rounds to first record        median {statistics.median(first)}, "
        f"p95 {percentile(first, 0.95)}, max {max(first)}"
    )
    print(
        f"rounds to the end             median {statistics.median(rounds)}, "
        f"p95 {percentile(rounds, 0.95)}, max {max(rounds)}"
    )
    print(
        f"latency                       median {1000 * statistics.median(seconds):.1f} ms, "
        f"p95 {1000 * percentile(seconds, 0.95):.1f} ms, max {1000 * max(seconds):.1f} ms"
    )
    print(
        f"queries per lookup            median {statistics.median(queries)}, "
        f"p95 {percentile(queries, 0.95)}"
    )
    print(
        f"lookups with silent peers     {len(with_dead)} (queries stalled / timed out per "
        f"such lookup: median {_median([s.stalled for s in with_dead])} / "
        f"{_median([s.unanswered for s in with_dead])})"
    )
    print(f"cut short at the time bound   {sum(not s.complete for s in samples)}")
    print(
        f"longer than 2 x RPC timeout   {slow} (timeout {rpc_timeout} s; "
        f"max latency {max(seconds):.3f} s)",
        flush=True,
    )
    for s in [s for s in samples if s.seconds > 2 * rpc_timeout][:10]:
        print(f"  slow lookup: {s}")


async def measure_announce(
    nodes: list[DHTNode], count: int, rng: random.Random, *, naive: bool, sample: int
) -> None:
    announcer = rng.choice(nodes)
    hash_parts = [random_hash_part(rng) for _ in range(count)]
    endpoint = f"http://{announcer.address[0]}:8081"
    before_net = network_datagrams(nodes)
    before_own = announcer.stats.datagrams_sent
    before_rpcs = announcer.stats.rpcs_sent.copy()
    before_timeouts = announcer.stats.rpc_timeouts
    # One process holds every node's records (2 million for 100k items): a full collection
    # of that many objects pauses the loop for seconds, longer than the RPC timeout, which a
    # real node (holding a thousandth of them) never sees. So no collections while measuring.
    gc.disable()
    cpu_before = time.process_time()
    started = time.monotonic()
    if naive:
        now = int(time.time())
        identity = announcer.identity
        records = [
            sign_record(
                provider_key(h),
                ProviderRecord(identity.public_key, endpoint, now, now + 3600),
                identity.signing_key,
            )
            for h in hash_parts
        ]
        for record in records:
            announcer.storage.add(record)
        report = await announcer.placer.place_one_by_one(records)
    else:
        report = await announcer.announce(hash_parts, endpoint, ttl=3600)
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_before
    gc.enable()
    gc.collect()
    gc.freeze()
    rpcs = announcer.stats.rpcs_sent - before_rpcs
    own = announcer.stats.datagrams_sent - before_own
    net = network_datagrams(nodes) - before_net
    replicas = sorted(report.replicas_per_key)
    label = "naive (one lookup + k STOREs per key)" if naive else "grouped (announcer)"
    print(f"--- announce {count} items, {label}")
    print(f"time                          {elapsed:.1f} s (process CPU {cpu:.1f} s)")
    print(f"requests sent by announcer    {own} ({own / count:.2f} per item)")
    print(f"  FIND_NODE in walks          {report.walk_queries} over {report.walks} walks")
    print(
        f"  STORE / store_many          {report.store_requests} "
        f"({rpcs['store']} STORE, {rpcs['store_many']} store_many; "
        f"{announcer.stats.rpc_timeouts - before_timeouts} timeouts)"
    )
    print(f"datagrams sent, all nodes     {net} ({net / count:.2f} per item)")
    print(
        f"replicas per key              median {statistics.median(replicas)}, "
        f"min {replicas[0]}; keys placed {report.keys_placed}/{count}"
    )
    # Lookups for a sample of the announced items, from other nodes.
    probes = rng.sample(hash_parts, min(sample, count))
    others = [n for n in nodes if n is not announcer]
    semaphore = asyncio.Semaphore(50)
    found = 0

    async def probe(hash_part: str) -> None:
        nonlocal found
        async with semaphore:
            result = await rng.choice(others).find_providers(hash_part)
        found += any(r.record.public_key == announcer.identity.public_key for r in result.records)

    await asyncio.gather(*(probe(h) for h in probes))
    print(f"lookups of announced items    {found}/{len(probes)} found", flush=True)


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    limits = StorageLimits(max_records_per_source=200_000, max_records=1_000_000)
    config = DHTConfig(
        rpc_timeout=args.rpc_timeout,
        maintenance_interval=3600,
        storage_limits=limits,
        # One process: every node's rate limiter sees honest traffic only.
        requests_per_second_per_ip=1000,
        request_burst_per_ip=2000,
    )
    print(
        f"DHT simulation: {args.nodes} nodes, k={config.ksize}, alpha={config.alpha}, "
        f"RPC timeout {config.rpc_timeout} s, seed {args.seed}, pid {os.getpid()}",
        flush=True,
    )
    nodes = await start_network(args.nodes, config, rng)
    alive = [True] * len(nodes)
    if args.lookups:
        announcers = await announce_items(nodes, args.items, args.announcers, rng)
        gc.collect()
        gc.freeze()  # a thousand nodes' long-lived objects: keep full collections short
        samples = await run_lookups(nodes, alive, announcers, args.lookups, args.concurrency, rng)
        report_lookups(f"{args.nodes} nodes, all alive", samples, config.rpc_timeout)
    for count in args.announce:
        await measure_announce(nodes, count, rng, naive=False, sample=args.sample)
        gc.collect()
    for count in args.naive:
        await measure_announce(nodes, count, rng, naive=True, sample=args.sample)
    if args.lookups and args.kill:
        victims = rng.sample(range(len(nodes)), int(args.kill * len(nodes)))
        for index in victims:
            await nodes[index].stop()
            alive[index] = False
        dead_keys = sum(
            not any(alive[i] for i, n in enumerate(nodes) if n.identity.public_key in owners)
            for owners in announcers.values()
        )
        print(
            f"killed {len(victims)} nodes ({100 * args.kill:.0f} %); {dead_keys} of "
            f"{len(announcers)} items lost all their announcers and are not looked up",
            flush=True,
        )
        samples = await run_lookups(nodes, alive, announcers, args.lookups, args.concurrency, rng)
        report_lookups(
            f"{args.nodes} nodes, {100 * args.kill:.0f} % killed", samples, config.rpc_timeout
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process: CPU {time.process_time():.1f} s, peak RSS {peak:.0f} MB", flush=True)
    for node, up in zip(nodes, alive, strict=True):
        if up:
            await node.stop()


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--items", type=int, default=1000, help="items announced for lookups")
    parser.add_argument("--announcers", type=int, default=3, help="announcers per item")
    parser.add_argument("--lookups", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50, help="lookups at once")
    parser.add_argument("--kill", type=float, default=0.3, help="fraction of nodes stopped")
    parser.add_argument("--rpc-timeout", type=float, default=1.0)
    parser.add_argument(
        "--announce", type=_counts, default=[], help="items to announce, e.g. 10000,100000"
    )
    parser.add_argument("--naive", type=_counts, default=[], help="items to place per key")
    parser.add_argument("--sample", type=int, default=500, help="lookups checking announces")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def _counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


if __name__ == "__main__":
    arguments = parse_arguments()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(arguments))
    else:
        uvloop.run(main(arguments))
