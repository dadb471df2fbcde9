"""Benchmark: the builder side at scale: logging attestations by item, and serving own bundles.

bench_attestations.py measures the bare Merkle log (append, proofs) and verification. This
measures what a builder node adds on top (trust/builder_log.py, trust/bundle_store.py):

- `BuilderLog.append` of N attestations (default 1,000,000) in batches of 1,000, as
  `p2pcache attest --all` does: the log append plus filing each entry by item, durable;
- disk: the log and the bundle store (item map, checkpoints);
- filing the whole log from scratch (what opening does after a run cut short, worst case);
- signing a checkpoint at that size;
- one own bundle at that size (leaf read, inclusion proof from storage, rendering): what a
  `GET /p2p/v1/attestations/<hash>` costs the builder, median latency and rate on one core.

Signing the attestations is the builder's cost and is timed apart. Run from the repository
root (a few minutes for 1M, most of it signing):

    python3 loadtest/bench_builder_log.py [--items 1000000] [--cpu 0] [--workdir /var/tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import nacl.signing
from bench_attestations import disk_size, human_bytes, make_attestation, reference_pool

from p2pcache.trust.attestation import sign_attestation
from p2pcache.trust.attestation_bundle import parse_bundle, verify_bundle
from p2pcache.trust.builder_log import BUNDLES_FILE, LOG_FILE, TRUST_DIR, BuilderLog, hash_part_of

BATCH = 1_000  # as cli/attest.py appends
BUNDLE_SAMPLE = 2_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="log size (default 1M)")
    parser.add_argument("--cpu", type=int, default=0, help="core to pin to (default 0)")
    parser.add_argument("--workdir", default="/var/tmp", help="where the files go")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})

    key = nacl.signing.SigningKey(hashlib.sha256(b"benchmark builder").digest())
    public = bytes(key.verify_key)
    workdir = Path(tempfile.mkdtemp(prefix="p2pcache-bench-builder-", dir=args.workdir))
    trust = workdir / TRUST_DIR
    pool = reference_pool()
    print(f"pinned to core {args.cpu}; files in {trust}")

    sign_seconds = append_seconds = 0.0
    paths: list[str] = []
    with BuilderLog.open(workdir, key) as builder_log:
        for start in range(0, args.items, BATCH):
            t0 = time.perf_counter()
            batch = [
                sign_attestation(make_attestation(key, i, pool), key)
                for i in range(start, min(start + BATCH, args.items))
            ]
            t1 = time.perf_counter()
            builder_log.append(batch)
            append_seconds += time.perf_counter() - t1
            sign_seconds += t1 - t0
            if len(paths) < BUNDLE_SAMPLE * 10:
                paths.extend(s.attestation.store_path for s in batch)
            if start // BATCH % 100 == 99:
                done = start + len(batch)
                print(f"  {done:>9,} logged ({done / append_seconds:,.0f}/s)", file=sys.stderr)
        t0 = time.perf_counter()
        checkpoint = builder_log.checkpoint()
        checkpoint_seconds = time.perf_counter() - t0
        size = builder_log.size

        rng = random.Random(1)
        sample = rng.sample(paths, min(BUNDLE_SAMPLE, len(paths)))
        latencies = []
        for path in sample:
            t0 = time.perf_counter()
            data = builder_log.own_bundle(hash_part_of(path))
            latencies.append(time.perf_counter() - t0)
        verify_bundle(parse_bundle(data), public, sample[-1])
        bundle_bytes = len(data)
        builder_log.log._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        builder_log.bundles._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        log_disk = disk_size(trust / LOG_FILE)
        map_disk = disk_size(trust / BUNDLES_FILE)

    # Filing from scratch: the item map removed, as if every run had died before filing.
    for leftover in trust.glob(BUNDLES_FILE + "*"):
        leftover.unlink()
    t0 = time.perf_counter()
    with BuilderLog.open(workdir, key) as reopened:
        refile_seconds = time.perf_counter() - t0
        assert reopened.bundles.indexed_size == size

    ms, us = 1e3, 1e6
    report = [
        ("attestations logged", f"{size:,}"),
        ("signing them (builder's cost)", f"{sign_seconds:.1f} s, "
         f"{args.items / sign_seconds:,.0f}/s"),
        (f"BuilderLog.append ({BATCH:,} a batch)", f"{append_seconds:.1f} s, "
         f"{args.items / append_seconds:,.0f}/s (log append + filing by item, durable)"),
        ("log file on disk", f"{human_bytes(log_disk)}, {log_disk / size:.0f} B per attestation"),
        ("item map + checkpoints on disk", f"{human_bytes(map_disk)}, {map_disk / size:.0f} B "
         "per attestation"),
        (f"checkpoint at {size:,}", f"{checkpoint_seconds * ms:.1f} ms (size {checkpoint.size:,})"),
        (f"own bundle at {size:,}", f"median {statistics.median(latencies) * us:.0f} µs, "
         f"p99 {sorted(latencies)[len(latencies) * 99 // 100] * us:.0f} µs, "
         f"{len(latencies) / sum(latencies):,.0f}/s, {bundle_bytes} B"),
        ("filing the whole log from scratch", f"{refile_seconds:.1f} s, "
         f"{size / refile_seconds:,.0f}/s"),
    ]  # fmt: skip
    print()
    for label, value in report:
        print(f"{label + ':':<38}{value}")
    if not args.keep:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
