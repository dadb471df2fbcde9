"""Benchmark: a pipelined batch of narinfo misses against the time of one miss.

Guix asks for up to 1000 narinfos at once, pipelined on one connection, and reads the answers
in order (tests/guix_client.py does the same). Here every one of them is a miss at the asking
node: an item it has never seen, held by a seeding node, so each answer needs the narinfo from
the provider's peer API and the trust check. The provider is found by a DHT search, or, once
the seeder has provided accepted narinfos (the warm-up misses), asked first without one
(guix_endpoint.miss_recent_providers; `--recent-providers 0` searches the DHT for every
miss). The network: one seeder (a generated store of about 2,100 small items, baked with
`p2pcache publish`), a few
DHT-only nodes, and the asking node, each a real `p2pcache serve` process on its own
127.A.B.1 address.

Measured, alternating, on items never asked before: single misses (one request on a fresh
connection each; median), then a batch of `--batch` misses pipelined on one connection (time
from the first byte written to the last answer read). Target (issue 3 of 5): the batch takes
at most 5x the median single miss.

    python3 loadtest/bench_miss_batch.py [--batch 1000] [--singles 25] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import process_cpu_times, process_tree
from p2p_network import (
    Network,
    NodeProcess,
    build_seed_store,
    hash_part,
    host_of,
    profile_summary,
    publish,
    py_spy,
    running,
    sign_published,
    stop_py_spy,
    wait_announced,
    wait_joined,
    work_directory,
    write_acl,
)

from tests import guix_client

TARGET = 5.0
WARM_UP = 5
PAUSE = 3.0  # seconds between phases, so that the DHT nodes' per-source budgets refill
DIAGNOSTICS = (
    r"dht_lookups|dropped|rejected|timeouts|miss_lookups|refused|contacts_evicted|rebootstraps"
    r"|narinfo_check|transfers_total|upstream|peers_banned|provider_searches|recent_peer_asks"
)
PEER_TROUBLE = ("sent a bad answer", "banning peer", "could not answer")


@dataclass
class Batch:
    seconds: float
    asked: int
    found: int
    udp_dropped: int
    """The machine's UDP receive-buffer drops meanwhile (other work on it counts too)."""
    cpu: dict[str, tuple[float, float]]
    """CPU seconds (user, system; all threads) each node process and this client used
    meanwhile: which one the batch waited for."""
    dht_requests: float
    """DHT requests the asking node sent meanwhile."""
    checked_in_worker: tuple[float, float]
    """Narinfos (and batches of them) the asking node had checked in its checking process."""


def udp_receive_buffer_errors() -> int:
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    names, values = [line for line in lines if line[0] == "Udp:"][:2]
    return int(values[names.index("RcvbufErrors")])


def cpu_seconds(nodes: list[NodeProcess]) -> dict[str, tuple[float, float]]:
    """Each node's CPU time so far (utime, stime in /proc/PID/stat), and ours. A node's
    child processes (its narinfo checking process) count as the node's, under "NAME+"."""
    ours = os.times()
    used = {"client": (ours.user, ours.system)}
    for node in nodes:
        used[node.name] = process_cpu_times(node.proc.pid)
        children = []
        for pid in process_tree(node.proc.pid)[1:]:
            with contextlib.suppress(OSError):  # it may have exited since
                children.append(process_cpu_times(pid))
        if children:
            used[node.name + "+"] = (sum(c[0] for c in children), sum(c[1] for c in children))
    return used


def timed_narinfos(node: NodeProcess, hashes: list[str], nodes: list[NodeProcess]) -> Batch:
    """One pipelined batch on one connection: its time and how many answers were 200."""
    requests_before = node.metric("p2pcache_dht_rpcs_sent_total")
    worker_before = worker_checks(node)
    dropped = udp_receive_buffer_errors()
    cpu_before = cpu_seconds(nodes)
    started = time.monotonic()
    replies = asyncio.run(guix_client.narinfos(node.host, node.guix_port, hashes))
    seconds = time.monotonic() - started
    cpu = {
        name: (user - cpu_before.get(name, (0, 0))[0], system - cpu_before.get(name, (0, 0))[1])
        for name, (user, system) in cpu_seconds(nodes).items()
    }
    dropped = udp_receive_buffer_errors() - dropped
    requests = node.metric("p2pcache_dht_rpcs_sent_total") - requests_before
    found = sum(r.status == 200 for r in replies)
    worker_after = worker_checks(node)
    worker = (worker_after[0] - worker_before[0], worker_after[1] - worker_before[1])
    return Batch(seconds, len(hashes), found, dropped, cpu, requests, worker)


def worker_cpu(batch: Batch) -> str:
    used = batch.cpu.get("asker+")
    if not used:
        return ""
    return f"its checking process {1000 * sum(used) / batch.asked:.2f} ms per miss; "


def worker_checks(node: NodeProcess) -> tuple[float, float]:
    """(narinfos, batches) the node has had checked in its checking process so far."""
    lines = node.metrics_matching(r'^p2pcache_narinfo_checks_total\{where="worker"\}')
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines), node.metric(
        "p2pcache_narinfo_check_batches_total"
    )


def report(singles: list[Batch], batches: list[Batch]) -> bool:
    single = statistics.median(b.seconds for b in singles)
    p90 = statistics.quantiles([b.seconds for b in singles], n=10)[-1]
    found = sum(b.found for b in singles)
    print(
        f"\nsingle miss: median {single * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms "
        f"({found}/{len(singles)} found)"
    )
    for n, batch in enumerate(batches, 1):
        print(
            f"batch {n}: {batch.asked} pipelined misses in {batch.seconds * 1000:.0f} ms "
            f"= {batch.seconds / single:.2f}x the median single miss; "
            f"{batch.found}/{batch.asked} found"
        )
    best = min(b.seconds for b in batches)
    complete = all(b.found == b.asked for b in singles + batches)
    met = complete and best <= TARGET * single
    print(
        f"target: all found and batch <= {TARGET:.0f}x single -> best {best / single:.2f}x, "
        f"{'all found' if complete else 'NOT all found'}: {'met' if met else 'MISSED'}"
    )
    return met


def diagnose(network: Network) -> None:
    """Why misses were not found: each node's DHT drops, timeouts and lookup outcomes."""
    for each in network.nodes:
        contacts = each.metric("p2pcache_dht_routing_table_size")
        print(
            f"  -- {each.name}: {contacts:.0f} contacts in its DHT routing table",
            *each.metrics_matching(DIAGNOSTICS),
            sep="\n     ",
        )
        trouble = [
            line.rstrip()
            for line in each.log.read_text(errors="replace").splitlines()
            if any(words in line for words in PEER_TROUBLE)
        ]
        for line in trouble[:5]:
            print(f"     log: {line}")
        if len(trouble) > 5:
            print(f"     log: ... and {len(trouble) - 5} more such lines")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--singles", type=int, default=25, help="single misses per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dht-nodes", type=int, default=3, help="DHT-only nodes")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument(
        "--what-if-dht-rate",
        type=float,
        help="what-if: every node's DHT accepts this many requests/s per source IP",
    )
    parser.add_argument(
        "--what-if-miss-concurrency",
        type=int,
        help="what-if: the asking node resolves at most this many misses at once",
    )
    parser.add_argument(
        "--what-if-rtt-ms",
        type=float,
        help="what-if: emulate this round-trip time between nodes (see p2p_network._WHAT_IF)",
    )
    parser.add_argument(
        "--check-processes",
        type=int,
        help="the asker's guix_endpoint.miss_check_processes (default: the shipped setting)",
    )
    parser.add_argument(
        "--recent-providers",
        type=int,
        help="the asker's guix_endpoint.miss_recent_providers (default: the shipped setting; "
        "0: every miss searches the DHT)",
    )
    parser.add_argument(
        "--cold-start",
        action="store_true",
        help="the asker's first batch comes first: no warm-up misses and no single misses "
        "before it, so no peer has provided yet (a fresh node's first Guix command)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy on the asker's batches")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    needed = WARM_UP + args.rounds * (args.batch + args.singles)
    print(f"load at start: {os.getloadavg()}")
    with work_directory(args.workdir, "miss-batch-", keep=args.keep) as work:
        started = time.monotonic()
        seed = build_seed_store(work / "store", needed + 20, [])
        hashes = [hash_part(i) for i in seed.small]
        seeder_dir = work / "seed"
        write_acl(work / "acl", [seeder_dir])
        publish(seeder_dir, seed.store)
        print(f"built and baked {len(hashes)} items in {time.monotonic() - started:.0f} s")
        what_if = {
            name: value
            for name, value in (
                ("dht_rate", args.what_if_dht_rate),
                ("miss_concurrency", args.what_if_miss_concurrency),
                ("rtt_ms", args.what_if_rtt_ms),
            )
            if value is not None
        }
        network = Network(work, work / "acl", what_if=what_if)
        with running(network):
            seeder = network.start(
                "seed", host_of(0), store=seed.store,
                options={"dht.announce_keys_per_second": "5000"},
            )  # fmt: skip
            for n in range(args.dht_nodes):
                network.start(f"dht-{n}", host_of(1 + n))
            wait_announced(seeder, len(hashes))
            sign_published(seeder, hashes)
            options = {
                f"guix_endpoint.{key}": str(value)
                for key, value in (
                    ("miss_check_processes", args.check_processes),
                    ("miss_recent_providers", args.recent_providers),
                )
                if value is not None
            }
            asker = network.start("asker", host_of(100), log_level="info", options=options)
            wait_joined(asker, 1 + args.dht_nodes)
            print(f"seeder with {len(hashes)} items, {args.dht_nodes} DHT-only nodes, asker")
            fresh = iter(hashes)
            for _ in range(0 if args.cold_start else WARM_UP):
                timed_narinfos(asker, [next(fresh)], network.nodes)
            singles: list[Batch] = []
            batches: list[Batch] = []
            for round_number in range(1, args.rounds + 1):
                cold = args.cold_start and round_number == 1
                if not cold:
                    time.sleep(PAUSE)
                    these = [
                        timed_narinfos(asker, [next(fresh)], network.nodes)
                        for _ in range(args.singles)
                    ]
                time.sleep(PAUSE)
                spy = py_spy(asker, work / f"profile-{round_number}.txt") if args.profile else None
                batch = timed_narinfos(
                    asker, [next(fresh) for _ in range(args.batch)], network.nodes
                )
                if spy is not None:
                    stop_py_spy(spy)
                batches.append(batch)
                if cold:  # the singles after it, so that round 1 still has its own
                    time.sleep(PAUSE)
                    these = [
                        timed_narinfos(asker, [next(fresh)], network.nodes)
                        for _ in range(args.singles)
                    ]
                singles += these
                median = statistics.median(b.seconds for b in these)
                print(
                    f"round {round_number}: single median {median * 1000:.1f} ms "
                    f"({sum(b.found for b in these)}/{len(these)} found), batch of {args.batch}: "
                    f"{batch.seconds * 1000:.0f} ms ({batch.found} found, "
                    f"{batch.udp_dropped} UDP datagrams dropped by full receive buffers); "
                    f"load {os.getloadavg()[0]:.2f}"
                )
                asker_cpu = batch.cpu["asker"]
                print(
                    "  CPU during the batch (user + system): "
                    + ", ".join(f"{name} {sum(used):.2f} s" for name, used in batch.cpu.items())
                    + f"; asker {1000 * sum(asker_cpu) / batch.asked:.2f} ms per miss"
                    f" ({1000 * asker_cpu[1] / batch.asked:.2f} ms of it in the kernel); "
                    f"{worker_cpu(batch)}{batch.dht_requests / batch.asked:.1f} DHT requests "
                    "sent per miss; "
                    f"{batch.checked_in_worker[0]:.0f} narinfos checked in the worker process "
                    f"in {batch.checked_in_worker[1]:.0f} batches"
                )
            if any(b.found < b.asked for b in singles + batches):
                print("some misses were answered 404 although a peer holds the item:")
                diagnose(network)
        report(singles, batches)
        if args.profile:
            profile_summary(work / f"profile-{args.rounds}.txt", "asking node, last batch")
        if what_if:
            print(f"what-if run, not the shipped settings: {what_if}")
        print(f"load at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
