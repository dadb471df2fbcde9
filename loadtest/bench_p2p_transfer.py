"""Benchmark: a NAR fetched from peers by a real node, against nginx + curl | zstd -d | hashlib.

The item is a real tree (default: copies of /usr/share/javascript and /usr/share/locale, about
380 MB of NAR) in a generated store, baked by two seeder nodes. Each of our runs starts a fresh
fetching node (an empty cache, its own 127.A.B.1 address) and asks it the way Guix does: the
narinfo (a miss: DHT lookup, the narinfo from a provider, trust check), then GET /nar/<item>
on its Guix endpoint, the whole body read by curl. Behind that request the node takes the chunk
table and the zstd frames from the providers over the peer API, decompresses and checks every
chunk against its digest, hashes the NAR, writes the frames into its cache, fsyncs and commits
only when NarHash and NarSize match. Variants: `peer.fetch_parallel` 2 (both providers at
once) and 1 (one provider, the other only on failure).

Baseline, in the same go and alternating with ours: nginx (one worker) serves the seeder's own
compressed file (the very zstd frames), `curl | zstd -d | python3` where the Python reads
stdin in 1 MiB blocks, SHA-256s them with hashlib, writes them to a file and fsyncs it.

Rate = uncompressed NAR bytes / wall time of the whole run (narinfo included for ours); ratio =
our rate / baseline rate, for the best run of each and for the medians. Target (issue 3 of 5):
>= 0.8x. After each of our runs the item is read back from the fetcher's cache and hashed
(not timed), so a fast but wrong run cannot count. `--profile` adds one run with py-spy
attached to the fetching node and prints where its CPU went.

    python3 loadtest/bench_p2p_transfer.py [--rounds 5] [--tree DIR ...] [--profile]

All traffic stays on loopback; every process started here is stopped and the work directory
(under /var/tmp by default) removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import nginx, process_cpu_times, require_tools
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

from p2pcache.guix.narinfo import parse_narinfo
from p2pcache.testing.file_tree import remove_read_only_tree
from tests import guix_client

DEFAULT_TREES = [Path("/usr/share/javascript"), Path("/usr/share/locale")]
TARGET = 0.8
UNWRITTEN = "baseline, no write or fsync (info)"
SEEDER_OPTIONS = {"dht.announce_keys_per_second": "5000"}

# Reads stdin in 1 MiB blocks: hash, write, and fsync at the end; prints "<sha256 hex> <size>".
HASH_AND_WRITE = """
import hashlib, os, sys
h, n, src = hashlib.sha256(), 0, sys.stdin.buffer
out = open(sys.argv[1], "wb") if len(sys.argv) > 1 else None
while block := src.read(1 << 20):
    h.update(block)
    n += len(block)
    if out:
        out.write(block)
if out:
    out.flush()
    os.fsync(out.fileno())
print(h.hexdigest(), n)
"""


@dataclass
class Run:
    seconds: float
    cpu_seconds: float
    narinfo_seconds: float = 0.0
    providers_used: int = 0


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def hash_pipeline(url: str, out: Path | None, decompress: bool) -> tuple[str, int]:
    """curl URL [| zstd -d] | python hashlib [+ write + fsync]; returns (sha256 hex, size)."""
    stages = [f"curl -sSf {shlex.quote(url)}"]
    if decompress:
        stages.append("zstd -d -c")
    hasher = f"{shlex.quote(sys.executable)} -c {shlex.quote(HASH_AND_WRITE)}"
    stages.append(hasher + (f" {shlex.quote(str(out))}" if out else ""))
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", " | ".join(stages)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"{stages[0]} ... failed: {result.stderr.strip()}")
    digest, size = result.stdout.split()
    return digest, int(size)


class Bench:
    def __init__(self, network: Network, big, seeders: list[NodeProcess], work: Path) -> None:
        self.network = network
        self.big = big
        self.seeders = seeders
        self.work = work
        self.fetchers = 0

    def check(self, digest: str, size: int, what: str) -> None:
        if (digest, size) != (self.big.nar_sha256.hex(), self.big.nar_size):
            raise SystemExit(f"{what}: got sha256 {digest} ({size} bytes), not the item's NAR")

    def baseline(self, url: str, *, write: bool = True) -> Run:
        out = self.work / "baseline.nar" if write else None
        cpu = children_cpu()
        started = time.monotonic()
        digest, size = hash_pipeline(url, out, decompress=True)
        seconds = time.monotonic() - started
        if out is not None:
            out.unlink()
        self.check(digest, size, "baseline")
        return Run(seconds, children_cpu() - cpu)

    def ours(self, parallel: int, profile: Path | None = None) -> Run:
        self.fetchers += 1
        name = f"fetcher-{self.fetchers}"
        fetcher = self.network.start(
            name,
            host_of(100 + self.fetchers),
            options={"peer.fetch_parallel": str(parallel)},
            log_level="info",
        )
        try:
            wait_joined(fetcher, len(self.seeders))
            spy = py_spy(fetcher, profile) if profile is not None else None
            nodes = [fetcher.proc.pid] + [s.proc.pid for s in self.seeders]
            cpu = children_cpu() + sum(sum(process_cpu_times(pid)) for pid in nodes)
            started = time.monotonic()
            host, port = fetcher.host, fetcher.guix_port
            hash_ = hash_part(self.big)
            (reply,) = asyncio.run(guix_client.narinfos(host, port, [hash_]))
            narinfo_seconds = time.monotonic() - started
            if reply.status != 200:
                raise SystemExit(f"{name}: narinfo answered {reply.status}; see {fetcher.log}")
            url = f"{fetcher.guix_url}/{parse_narinfo(reply.body).urls[0].url}"
            size = subprocess.run(
                ["curl", "-sSf", "-o", "/dev/null", "-w", "%{size_download}", url],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            seconds = time.monotonic() - started
            cpu = children_cpu() + sum(sum(process_cpu_times(pid)) for pid in nodes) - cpu
            if spy is not None:
                stop_py_spy(spy)
            if int(size) != self.big.nar_size:
                raise SystemExit(f"{name}: the NAR body was {size} bytes; see {fetcher.log}")
            # Not timed: what the fetcher committed must be the item, byte for byte.
            self.check(*hash_pipeline(url, None, decompress=False), f"{name}'s cache")
            used = re.search(r"fetched \S+ from (\d+) peer", fetcher.log.read_text())
            return Run(seconds, cpu, narinfo_seconds, int(used.group(1)) if used else 0)
        finally:
            self.network.stop_node(fetcher)
            remove_read_only_tree(fetcher.data_dir / "nar")


def rate(run: Run, size: int) -> float:
    return size / run.seconds / 1e6


def report(runs: dict[str, list[Run]], size: int) -> bool:
    base = runs["baseline"]
    best_base = max(rate(r, size) for r in base)
    median_base = statistics.median(rate(r, size) for r in base)
    print(f"\nNAR {size:,} bytes; rates are uncompressed NAR MB/s (1e6 B/s) over the whole run")
    header = f"{'pipeline':42} {'best':>8} {'median':>8} {'CPU-s':>6} {'ratio':>9} {'median':>7}"
    print(header)
    print("-" * len(header))
    met = True
    for name, results in runs.items():
        best = max(rate(r, size) for r in results)
        median = statistics.median(rate(r, size) for r in results)
        cpu = statistics.median(r.cpu_seconds for r in results)
        line = f"{name:42} {best:8.1f} {median:8.1f} {cpu:6.2f}"
        if name not in ("baseline", UNWRITTEN):
            ratio, ratio_median = best / best_base, median / median_base
            met = met and ratio >= TARGET
            line += f" {ratio:9.2f}x {ratio_median:6.2f}x"
            narinfo = statistics.median(r.narinfo_seconds for r in results) * 1000
            used = sorted({r.providers_used for r in results})
            line += f"   (narinfo miss {narinfo:.0f} ms; providers used: {used})"
        print(line)
    print(f"target: ours >= {TARGET}x baseline (best) -> {'met' if met else 'MISSED'}")
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, action="append", help="directory copied into the item")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parallel", type=int, action="append", help="fetch_parallel values")
    parser.add_argument("--dht-nodes", type=int, default=2, help="extra DHT-only nodes")
    parser.add_argument("--profile", action="store_true", help="one more run under py-spy")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    require_tools("nginx", "curl", "zstd", *(["py-spy"] if args.profile else []))
    trees = args.tree or DEFAULT_TREES
    parallels = args.parallel or [2, 1]
    print(f"load at start: {os.getloadavg()}")
    with work_directory(args.workdir, "p2p-transfer-", keep=args.keep) as work:
        started = time.monotonic()
        seed = build_seed_store(work / "store", 30, trees)
        big = seed.big
        assert big is not None
        store = seed.store
        dirs = [work / "seed-a", work / "seed-b"]
        write_acl(work / "acl", dirs)
        publish(dirs[0], store)
        publish(dirs[1], store, [big.path])
        print(f"built and baked {big.path} ({big.nar_size:,} bytes of NAR) twice "
              f"in {time.monotonic() - started:.0f} s")  # fmt: skip
        network = Network(work, work / "acl")
        with running(network):
            seeders = [
                network.start(d.name, host_of(n), store=store, options=SEEDER_OPTIONS)
                for n, d in enumerate(dirs)
            ]
            for n in range(args.dht_nodes):
                network.start(f"dht-{n}", host_of(2 + n))
            wait_announced(seeders[0], len(store.items) + 1)
            wait_announced(seeders[1], 1)
            sign_published(seeders[0], [hash_part(i) for i in [*store.items, big]])
            sign_published(seeders[1], [hash_part(big)])
            zst = dirs[0] / "nar" / hash_part(big)[:2] / f"{hash_part(big)}.zst"
            nginx_root = work / "nginx"
            (nginx_root / "nar" / "zstd").mkdir(parents=True)
            basename = big.path.rsplit("/", 1)[-1]
            os.link(zst, nginx_root / "nar" / "zstd" / basename)
            print(f"compressed file {zst.stat().st_size:,} bytes; "
                  f"{len(seeders)} providers, {args.dht_nodes} more DHT nodes")  # fmt: skip
            bench = Bench(network, big, seeders, work)
            names = {
                p: f"p2pcache, fetch_parallel={p} ({min(p, 2)} provider(s))" for p in parallels
            }
            runs: dict[str, list[Run]] = {"baseline": [], **{names[p]: [] for p in parallels}}
            runs[UNWRITTEN] = []
            (work / "nginx-tmp").mkdir()
            with nginx(nginx_root, work / "nginx-tmp") as port:
                url = f"http://127.0.0.1:{port}/nar/zstd/{basename}"
                bench.baseline(url)  # warm the page cache and the tools
                for round_number in range(1, args.rounds + 1):
                    runs["baseline"].append(bench.baseline(url))
                    for p in parallels:
                        runs[names[p]].append(bench.ours(p))
                    runs[UNWRITTEN].append(bench.baseline(url, write=False))
                    print(f"round {round_number}: " + ", ".join(
                        f"{k.split(' (')[0]} {rate(v[-1], big.nar_size):.0f} MB/s"
                        for k, v in runs.items()
                    ) + f"; load {os.getloadavg()[0]:.2f}")  # fmt: skip
                report(runs, big.nar_size)
                if args.profile:
                    raw = work / "profile.txt"
                    run = bench.ours(parallels[0], profile=raw)
                    print(f"\nprofiled run: {rate(run, big.nar_size):.0f} MB/s")
                    profile_summary(raw, "fetching node")
        print(f"load at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
