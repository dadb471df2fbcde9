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

The 1M bulk items carry the signature line of a hot item (same length, not valid for them):
serving cost does not depend on validity, and signing 1M narinfos would only slow the setup.
The hot items are signed properly.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (
    RANDOM_PATHS_LUA,
    free_port,
    nginx,
    pinned_process,
    require_tools,
    rss_mib,
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
    marker = workdir / f".built-{items}-{hot}-{nar_mib}"
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
    """A NAR-like stream that compresses like real binaries do (about 3:1), not like zeros."""
    seed = hashlib.sha256(b"bench nar").digest()
    block = b"".join(
        hashlib.sha256(seed + bytes([i])).digest()[:12] + b"\0" * 20 for i in range(256)
    )
    for i in range(mib * 128):
        yield hashlib.sha256(b"%d" % i).digest() + block[: 8192 - 32]


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


def serve_argv(workdir: Path, port: int, admin: int) -> list[str]:
    return [
        sys.executable, "-m", "p2pcache", "serve",
        "--data-dir", str(workdir / "node"),
        "--store-root", str(workdir / "no-store"),
        "--db", str(workdir / "no-db.sqlite"),
        "--listen", f"127.0.0.1:{port}",
        "--admin-listen", f"127.0.0.1:{admin}",
        "--log-level", "warning",
    ]  # fmt: skip


def run_suite(name: str, port: int, workdir: Path, lua: Path, duration: int) -> dict:
    base = f"http://127.0.0.1:{port}"
    hot, everything = str(workdir / "hot.txt"), str(workdir / "all.txt")
    nar = (workdir / "nginx" / "nar-path.txt").read_text().strip()
    wrk(base, 64, 2, script=lua, script_args=(hot,))  # warm up
    out = {
        "hot": wrk(base, 64, duration, script=lua, script_args=(hot,)),
        "random": wrk(base, 64, duration, script=lua, script_args=(everything,)),
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
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--hot", type=int, default=1000)
    parser.add_argument("--nar-mib", type=int, default=256)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/p2pcache-bench"))
    args = parser.parse_args()
    require_tools("nginx", "wrk", "taskset")
    print(f"building {args.items} items in {args.workdir} (reused when already built)")
    asyncio.run(build(args.workdir, args.items, args.hot, args.nar_mib))
    with tempfile.TemporaryDirectory(prefix="bench-endpoint-") as tmp_name:
        tmp = Path(tmp_name)
        lua = tmp / "random.lua"
        lua.write_text(RANDOM_PATHS_LUA)
        print(f"nginx, 1 worker, core 1; wrk -t1 on core 0; {args.duration} s per run")
        with nginx(args.workdir / "nginx", tmp) as port:
            base_results = run_suite("nginx", port, args.workdir, lua, args.duration)
        port, admin = free_port(), free_port()
        print("p2pcache serve (uvloop), core 1")
        with pinned_process(serve_argv(args.workdir, port, admin), port) as proc:
            ours = run_suite("p2pcache", port, args.workdir, lua, args.duration)
            rss, peak = rss_mib(proc.pid)
    print(f"p2pcache RSS with {args.items} items: {rss:.1f} MiB (peak {peak:.1f} MiB)")
    print("ratios p2pcache / nginx:")
    for key in ("hot", "random", "one", "nar"):
        ours_r, base_r = ours[key], base_results[key]
        if key == "nar":
            mine, theirs = ours_r.mib_per_second, base_r.mib_per_second
        else:
            mine, theirs = ours_r.requests_per_second, base_r.requests_per_second
        print(f"  {key:7} {mine / theirs:5.2f}x" if theirs else f"  {key:7} (baseline failed)")
    one, base_one = ours["one"], base_results["one"]
    print(
        f"  one-connection p50 {one.p50_ms:.3f} ms vs {base_one.p50_ms:.3f} ms "
        f"({one.p50_ms / base_one.p50_ms:.2f}x); p99 {one.p99_ms:.3f} ms"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
