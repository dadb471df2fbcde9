"""Benchmark: the Guix endpoint of `p2pcache serve` against nginx serving the same files.

nginx (one worker) serves the very narinfo bytes the node serves, written as static files, and
the same compressed NAR; both run alone on core 1, wrk on core 0 (see harness.py). Measured:

- narinfo hits on a hot set (default 1,000 items), 64 connections, random keys;
- narinfo hits with N items in the index (default 1,000,000) and random keys, 64 connections;
- one connection, hot set: p50 and p99 latency;
- NAR download of one compressed NAR (default 256 MiB of NAR), one connection;
- the serving node's memory (RSS) with N items.

Targets (issue 2 of 5): hot >= 1.0x nginx; 1M random >= 0.5x; one connection p50 within 1.2x
of nginx's and p99 <= 0.5 ms; NAR >= 0.9x; RSS with 1M items <= 150 MB.

Run from the repository root (Debian nginx and wrk; building 1M items takes a few minutes the
first time, then the work directory is reused):

    python3 loadtest/bench_endpoint.py [--items 1000000] [--hot 1000] [--duration 10] \
        [--workdir /var/tmp/p2pcache-bench]

Both servers are measured with their data in the page cache, as on a serving machine with the
memory for it (this one has 24 GiB): the two NARs are read before the rounds, and right before
each random-key run its server's files (nginx's million narinfo files, the node's index) are
read whole (see warm_random_keys); each random run prints what its server still read from disk
a request. Without that the random-key rates mostly measure the disk and whichever server ran
after the other: nginx measured 5.7k, 12.3k and 17.3k req/s in three rounds with part of its
files in the page cache, and 64k with all of them there.

The 1M bulk items carry the signature line of a hot item (same length, not valid for them):
serving cost does not depend on validity, and signing 1M narinfos would only slow the setup.
The hot items are signed properly.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (
    RANDOM_PATHS_LUA,
    disk_read_bytes,
    free_port,
    nginx,
    pinned_process,
    require_tools,
    rss_mib,
    wait_metric,
    wrk,
)

from p2pcache.cache.chunked_zstd import ChunkedZstdWriter
from p2pcache.cache.index import CacheIndex, NewItem, Origin
from p2pcache.cache.nar_store import NarStore
from p2pcache.guix import nix32
from p2pcache.guix.narinfo import (
    NarURL,
    format_nar_hash,
    nar_url,
    render_signature_line,
    render_signed_part,
    render_url_groups,
)
from p2pcache.guix.narinfo_signature import signature_field
from p2pcache.guix.signing_key import write_key_pair

BATCH = 10_000


def hash_part(n: int) -> str:
    return nix32.encode(hashlib.sha256(b"bench item %d" % n).digest()[:20])


def basename(n: int) -> str:
    return f"{hash_part(n)}-package-{n % 997}-{n % 13}.{n % 7}"


async def build(workdir: Path, items: int, hot: int, nar_mib: int) -> None:
    marker = workdir / f".built-v2-{items}-{hot}-{nar_mib}"
    if marker.exists():
        return
    if workdir.exists():
        shutil.rmtree(workdir)
    data, root = workdir / "node", workdir / "nginx"
    (root / "nar" / "zstd").mkdir(parents=True)
    key = write_key_pair(data)
    started = time.monotonic()
    template_signature = b""
    async with CacheIndex(data / "index.sqlite") as index:
        for first in range(0, items, BATCH):
            batch = []
            for n in range(first, min(items, first + BATCH)):
                base = basename(n)
                refs = sorted({basename((n * 7 + k) % items) for k in range(3)})
                digest = hashlib.sha256(base.encode()).digest()
                size = 1000 + n % 100_000
                signed = render_signed_part(
                    f"/gnu/store/{base}", format_nar_hash(digest), size, refs, f"{base}.drv"[:200]
                )
                if n < hot or not template_signature:
                    line = render_signature_line(signature_field(signed, key, "bench"))
                    template_signature = template_signature or line
                else:
                    line = template_signature
                groups = [NarURL(nar_url(base, "none"), "none", size)]
                (root / f"{base[:32]}.narinfo").write_bytes(
                    signed + line + render_url_groups(groups)
                )
                batch.append(
                    NewItem(base[:32], f"/gnu/store/{base}", format_nar_hash(digest), size,
                            tuple(refs), f"{base}.drv"[:200], Origin.STORE, None, signed, line)
                )  # fmt: skip
            await index.add_items(batch)
            print(f"\r  built {first + len(batch)}/{items} items", end="", flush=True)
        print(f" ({time.monotonic() - started:.0f} s)")
        await add_nar(index, NarStore(data / "nar"), root, nar_mib)
    with open(workdir / "hot.txt", "w") as f:
        f.writelines(f"/{basename(n)[:32]}.narinfo\n" for n in range(min(hot, items)))
    with open(workdir / "all.txt", "w") as f:
        f.writelines(f"/{basename(n)[:32]}.narinfo\n" for n in range(items))
    marker.touch()


def nar_stream(mib: int):
    """NAR-like bytes that compress about 2:1 with zstd -3, as store items typically do.

    Each 8 KiB piece is a third random bytes and two thirds text-like repetition, so the
    compressed file is big enough that a download measures throughput, not request overhead.
    """
    rng = random.Random(7)
    words = [rng.randbytes(rng.randint(3, 12)) for _ in range(512)]
    for _ in range(mib * 128):
        text = b" ".join(rng.choice(words) for _ in range(700))[: 8192 - 2730]
        yield rng.randbytes(2730) + text.ljust(8192 - 2730, b" ")


async def add_nar(index: CacheIndex, store: NarStore, root: Path, mib: int) -> None:
    store.prepare()
    base = "0" * 31 + "1-bench-nar"
    with store.writing() as pending:
        writer = ChunkedZstdWriter(pending.file, level=3)
        for piece in nar_stream(mib):
            writer.write(piece)
        table, summary = writer.finish()
        name = store.commit(pending, base[:32])
    await index.add_items(
        [NewItem(base[:32], f"/gnu/store/{base}", summary.nar_hash, summary.size, (), None,
                 Origin.PEER)]
    )  # fmt: skip
    await index.mark_baked(base[:32], name, table.file_size, table.encode(), table.root)
    shutil.copyfile(store.path_of(name), root / "nar" / "zstd" / base)
    (root / "nar-path.txt").write_text(f"/nar/zstd/{base}\n")


def read_files(files: Iterable[Path], *, drop_first: bool = False) -> tuple[int, int]:
    """Read files whole, into the page cache; (files, bytes). `drop_first` drops what the
    page cache holds of each first, so that every copy is cached the same way."""
    count = total = 0
    for path in files:
        with path.open("rb") as f:
            if drop_first:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            while chunk := f.read(1 << 20):
                total += len(chunk)
        count += 1
    return count, total


def nar_files(workdir: Path) -> list[Path]:
    return [p for p in (workdir / "nginx" / "nar").rglob("*") if p.is_file()] + [
        p for p in (workdir / "node" / "nar").rglob("*") if p.is_file()
    ]


def random_key_files(workdir: Path, server: str) -> list[Path]:
    """What a server reads to answer random keys: nginx's narinfo files, the node's index."""
    if server == "nginx":
        return [p for p in (workdir / "nginx").iterdir() if p.suffix == ".narinfo"]
    return sorted((workdir / "node").glob("index.sqlite*")) + sorted(
        (workdir / "node").glob("rendered-narinfos")
    )


def warm_nars(workdir: Path) -> None:
    """Both copies of the NAR, dropped from the page cache and read back alike.

    How a file was written decides how its cached pages are grouped (large folios or single
    pages), and sendfile's cost per byte may follow that. Measured 2026-11-25 (first 8 s run
    of a fresh node each time): the node's copy, as the baker wrote it, 1,833-1,884 MiB/s;
    read back alike, 1,987-2,007 MiB/s against nginx's 2,017-2,068.
    """
    count, total = read_files(nar_files(workdir), drop_first=True)
    print(f"NARs read into the page cache: {count} files, {total / 2**20:.0f} MiB")


def warm_random_keys(workdir: Path, server: str) -> None:
    """Read what `server` answers random keys from, just before it does.

    Both servers' data fits in this machine's memory, but the machine runs DAMON's `pageout`
    scheme (kdamond, paddr: pages not accessed for 60 s are reclaimed at up to 128 MiB/s), so
    whatever the other server's runs left idle for a minute is partly back on disk: warmed
    once at the start, the node read 0.41 KiB from disk a request under random keys in its
    round and nginx 0.13-0.20 KiB (2026-11-26), and the node's rate fell from round to round.
    Each random run now starts right after its server's files were read.
    """
    started = time.monotonic()
    count, total = read_files(random_key_files(workdir, server))
    print(
        f"  {server:8} random: {count} files, {total / 2**30:.2f} GiB read into the page "
        f"cache first, in {time.monotonic() - started:.0f} s"
    )


def nginx_master_pid(tmp: Path, timeout: float = 5.0) -> int:
    """nginx writes its pid file just after it starts listening: wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int((tmp / "nginx.pid").read_text())
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def wait_rendered(admin: int) -> None:
    """Wait for the node's first build of its rendered narinfos (it answers from the index
    until then), and say how long it took."""
    started = time.monotonic()
    wait_metric(admin, "p2pcache_rendered_narinfo_builds_total", 1)
    waited = time.monotonic() - started
    print(f"the node's rendered narinfos were ready {waited:.1f} s after it listened")


def serve_argv(workdir: Path, port: int, admin: int) -> list[str]:
    return [
        sys.executable, "-m", "p2pcache", "serve",
        "--data-dir", str(workdir / "node"),
        "--store-root", str(workdir / "no-store"),
        "--db", str(workdir / "no-db.sqlite"),
        "--listen", f"127.0.0.1:{port}",
        "--admin-listen", f"127.0.0.1:{admin}",
        "--peer-listen", "127.0.0.1:0",
        "--dht-listen", "",
        "--log-level", "warning",
    ]  # fmt: skip


def run_suite(name: str, pid: int, port: int, workdir: Path, lua: Path, duration: int) -> dict:
    base = f"http://127.0.0.1:{port}"
    hot, everything = str(workdir / "hot.txt"), str(workdir / "all.txt")
    nar = (workdir / "nginx" / "nar-path.txt").read_text().strip()
    wrk(base, 64, 2, script=lua, script_args=(hot,))  # warm up
    hot_run = wrk(base, 64, duration, script=lua, script_args=(hot,))
    warm_random_keys(workdir, name)
    read_before = disk_read_bytes(pid)
    random_run = wrk(base, 64, duration, script=lua, script_args=(everything,))
    disk_kib = (disk_read_bytes(pid) - read_before) / 1024
    out = {
        "hot": hot_run,
        "random": random_run,
        "one": wrk(base, 1, duration, script=lua, script_args=(hot,), latency=True),
        "nar": wrk(base + nar, 1, duration),
    }
    for key, r in out.items():
        note = f"  [{r.errors}]" if r.errors else ""
        latency = f", p50 {r.p50_ms:.3f} ms, p99 {r.p99_ms:.3f} ms" if r.p50_ms else ""
        print(
            f"  {name:8} {key:7} {r.requests_per_second:10.0f} req/s "
            f"{r.mib_per_second:8.1f} MiB/s{latency}{note}"
        )
    requests = max(1.0, random_run.requests_per_second * duration)
    print(f"  {name:8} random: {disk_kib / requests:.2f} KiB read from disk a request")
    return out


def best(runs: list[dict], key: str, field: str, low: bool = False) -> float:
    values = [getattr(run[key], field) for run in runs if getattr(run[key], field) is not None]
    return (min if low else max)(values) if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--hot", type=int, default=1000)
    parser.add_argument("--nar-mib", type=int, default=256)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs; best kept")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/p2pcache-bench"))
    args = parser.parse_args()
    require_tools("nginx", "wrk", "taskset")
    print(f"building {args.items} items in {args.workdir} (reused when already built)")
    asyncio.run(build(args.workdir, args.items, args.hot, args.nar_mib))
    warm_nars(args.workdir)
    nginx_runs: list[dict] = []
    our_runs: list[dict] = []
    rss = peak = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-endpoint-") as tmp_name:
        tmp = Path(tmp_name)
        lua = tmp / "random.lua"
        lua.write_text(RANDOM_PATHS_LUA)
        print(f"servers on core 1, wrk -t1 on core 0, {args.duration} s a run, best of rounds")
        for round_number in range(1, args.rounds + 1):
            print(f"round {round_number}: nginx (1 worker)")
            with nginx(args.workdir / "nginx", tmp) as port:
                pid = nginx_master_pid(tmp)
                nginx_runs.append(run_suite("nginx", pid, port, args.workdir, lua, args.duration))
            port, admin = free_port(), free_port()
            print(f"round {round_number}: p2pcache serve (uvloop)")
            with pinned_process(serve_argv(args.workdir, port, admin), port) as proc:
                wait_rendered(admin)
                our_runs.append(
                    run_suite("p2pcache", proc.pid, port, args.workdir, lua, args.duration)
                )
                now, high = rss_mib(proc.pid)
                rss, peak = max(rss, now), max(peak, high)
    print(f"\np2pcache RSS with {args.items} items: {rss:.1f} MiB (peak {peak:.1f} MiB)")
    print("best of each, p2pcache / nginx:")
    for key, field, unit in (
        ("hot", "requests_per_second", "req/s"),
        ("random", "requests_per_second", "req/s"),
        ("one", "requests_per_second", "req/s"),
        ("nar", "mib_per_second", "MiB/s"),
    ):
        mine, theirs = best(our_runs, key, field), best(nginx_runs, key, field)
        ratio = f"{mine / theirs:5.2f}x" if theirs else "(baseline failed)"
        print(f"  {key:7} {mine:10.0f} vs {theirs:10.0f} {unit:6} {ratio}")
    p50, base_p50 = best(our_runs, "one", "p50_ms", True), best(nginx_runs, "one", "p50_ms", True)
    p99, base_p99 = best(our_runs, "one", "p99_ms", True), best(nginx_runs, "one", "p99_ms", True)
    print(
        f"  one connection: p50 {p50:.3f} ms vs {base_p50:.3f} ms ({p50 / base_p50:.2f}x), "
        f"p99 {p99:.3f} ms vs {base_p99:.3f} ms"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
