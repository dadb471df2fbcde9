"""Benchmark: checking builder attestations, and the cost of a builder log with a million of them.

What it answers (issue 4 of 5):

- how many attestations, each with its inclusion proof, one core verifies per second, as a ratio
  to PyNaCl's raw Ed25519 verification rate measured in the same run (the floor: one signature
  per attestation is unavoidable, so the ratio says what parsing, hashing and the proof add);
- the same for whole bundles off the wire (parse, the checkpoint's signature as well);
- appending N attestations (default 1,000,000) to a log: time, rate, size on disk, and the
  latency of one durable append (its own transaction, synchronous=FULL);
- one inclusion and one consistency proof at that size: time and subtree hashes read.

Run from the repository root (takes a few minutes for 1M: most of it signs the attestations,
which is the builder's cost, not the log's, and is reported apart):

    python3 loadtest/bench_attestations.py [--items 1000000] [--cpu 0] [--workdir /var/tmp]

The process is pinned to one core (`--cpu`). Rates are the best of `--rounds` timed rounds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nacl.signing

from p2pcache.guix.store_path import make_store_path
from p2pcache.trust.attestation import (
    Attestation,
    Evidence,
    parse_attestation,
    render_attestation,
    sign_attestation,
    verify_attestation,
)
from p2pcache.trust.attestation_bundle import (
    AttestationBundle,
    parse_bundle,
    render_bundle,
    verify_bundle,
)
from p2pcache.trust.checkpoint import builder_origin, verify_checkpoint
from p2pcache.trust.merkle_hash import leaf_hash
from p2pcache.trust.merkle_log import MerkleLog
from p2pcache.trust.merkle_proof import verify_inclusion

BATCH = 10_000
SAMPLE = 2_000  # attestations in the verification sample


REFERENCE_NAMES = ("glibc-2.39", "gcc-14.2.0-lib", "zlib-1.3.1", "openssl-3.0.13", "bash-5.2.21")


def reference_pool(size: int = 5000) -> list[str]:
    """Basenames for references, made once (computing store paths is not what is measured)."""
    return [
        make_store_path("output:out", hashlib.sha256(b"ref %d" % i).digest(), name).basename
        for i in range(size)
        for name in [REFERENCE_NAMES[i % len(REFERENCE_NAMES)]]
    ]


def make_attestation(key: nacl.signing.SigningKey, i: int, pool: list[str]) -> Attestation:
    """A realistic attestation: a distinct item with six references and a deriver."""
    digest = hashlib.sha256(b"bench %d" % i).digest()
    name = f"package-{i % 9973}-{i // 9973}.{i % 7}"
    return Attestation(
        builder=bytes(key.verify_key),
        store_path=make_store_path("output:out", digest, name).path,
        nar_hash=hashlib.sha256(digest).digest(),
        nar_size=100_000 + i,
        references=tuple({pool[(i * 7 + r * 131) % len(pool)] for r in range(6)}),
        deriver=make_store_path("text", digest, name + ".drv").basename,
        system="x86_64-linux",
        time=1_732_000_000 + i,
        chunk_root=leaf_hash(digest),
        evidence=Evidence.BUILD_LOG,
    )


def best_rate(rounds: int, count: int, run: Callable[[], None]) -> float:
    """Items per second of the fastest of `rounds` runs of `run` (which handles `count` items)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return count / best


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def disk_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="log size (default 1M)")
    parser.add_argument("--cpu", type=int, default=0, help="core to pin to (default 0)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per rate")
    parser.add_argument("--workdir", default="/var/tmp", help="where the log file goes")
    parser.add_argument("--keep", action="store_true", help="keep the log file")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})

    key = nacl.signing.SigningKey(hashlib.sha256(b"benchmark builder").digest())
    public = bytes(key.verify_key)
    workdir = Path(tempfile.mkdtemp(prefix="p2pcache-bench-attest-", dir=args.workdir))
    log_path = workdir / "builder-log.sqlite"
    pool = reference_pool()
    print(f"pinned to core {args.cpu}; log in {log_path}")

    # -- appending N attestations ---------------------------------------------------------------
    sign_seconds = append_seconds = 0.0
    sample_texts: list[bytes] = []
    text_bytes = 0
    with MerkleLog(log_path, builder_origin(public)) as log:
        for start in range(0, args.items, BATCH):
            t0 = time.perf_counter()
            batch = [
                render_attestation(sign_attestation(make_attestation(key, i, pool), key))
                for i in range(start, min(start + BATCH, args.items))
            ]
            t1 = time.perf_counter()
            log.append_many(batch)
            t2 = time.perf_counter()
            sign_seconds += t1 - t0
            append_seconds += t2 - t1
            text_bytes += sum(map(len, batch))
            if len(sample_texts) < SAMPLE:
                sample_texts.extend(batch[: SAMPLE - len(sample_texts)])
            if start // BATCH % 10 == 9:
                done = start + len(batch)
                print(f"  {done:>9,} appended ({done / append_seconds:,.0f}/s)", file=sys.stderr)
        size = log.size
        log._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        disk = disk_size(log_path)

        # One durable append at a time (its own transaction and fsync), as `p2pcache attest` does.
        single = []
        for i in range(200):
            text = render_attestation(sign_attestation(make_attestation(key, size + i, pool), key))
            t0 = time.perf_counter()
            log.append(text)
            single.append(time.perf_counter() - t0)
        size = log.size

        # -- proofs at that size ---------------------------------------------------------------
        n = size
        old = n * 3 // 4 + 1
        incl_times, cons_times = [], []
        for index in range(1, n, n // 50):
            before = log.nodes_read
            t0 = time.perf_counter()
            proof = log.inclusion_proof(index, n)
            incl_times.append(time.perf_counter() - t0)
            incl_reads = log.nodes_read - before
        for m in range(1, n, n // 50):
            before = log.nodes_read
            t0 = time.perf_counter()
            log.consistency_proof(m, n)
            cons_times.append(time.perf_counter() - t0)
            cons_reads = log.nodes_read - before
        incl_proof_len = len(proof)
        cons_proof_len = len(log.consistency_proof(old, n))
        root = log.root(n)
        checkpoint = log.checkpoint(key)
        proofs = [tuple(log.inclusion_proof(i, n)) for i in range(len(sample_texts))]

    # -- verification ---------------------------------------------------------------------------
    verify_key = nacl.signing.VerifyKey(public)
    signed_messages = [key.sign(t[: t.rindex(b"Signature:")]) for t in sample_texts]
    count = len(sample_texts)

    def raw_ed25519() -> None:
        for sm in signed_messages:
            verify_key.verify(sm)

    def attestation_with_proof() -> None:
        # As a node does for each attestation, once its checkpoint (size n, root) is verified.
        for i, text in enumerate(sample_texts):
            verify_attestation(parse_attestation(text), public)
            verify_inclusion(i, n, leaf_hash(text), proofs[i], root)

    bundles = [
        render_bundle(AttestationBundle(parse_attestation(t), i, proofs[i], checkpoint))
        for i, t in enumerate(sample_texts)
    ]
    store_paths = [parse_attestation(t).attestation.store_path for t in sample_texts]

    def whole_bundle() -> None:
        for data, path in zip(bundles, store_paths, strict=True):
            verify_bundle(parse_bundle(data), public, path)

    verify_checkpoint(checkpoint, public)
    raw = best_rate(args.rounds, count, raw_ed25519)
    with_proof = best_rate(args.rounds, count, attestation_with_proof)
    bundle_rate = best_rate(args.rounds, count, whole_bundle)

    ms, us = 1e3, 1e6
    per_item = disk / args.items
    report = [
        ("attestations in the log", f"{size:,}, {text_bytes / args.items:.0f} B each"),
        ("signing them (builder's cost)", f"{sign_seconds:.1f} s, "
         f"{args.items / sign_seconds:,.0f}/s"),
        (f"appending them ({BATCH:,} a batch)", f"{append_seconds:.1f} s, "
         f"{args.items / append_seconds:,.0f}/s"),
        ("log file on disk", f"{human_bytes(disk)}, {per_item:.0f} B per attestation "
         f"(the texts: {human_bytes(text_bytes)})"),
        ("one durable append", f"median {statistics.median(single) * ms:.2f} ms, "
         f"max {max(single) * ms:.2f} ms"),
        (f"inclusion proof at {n:,}", f"median {statistics.median(incl_times) * us:.0f} µs, "
         f"{incl_proof_len} hashes, {incl_reads} subtree reads"),
        (f"consistency proof to {n:,}", f"median {statistics.median(cons_times) * us:.0f} µs, "
         f"{cons_proof_len} hashes from {old:,}, {cons_reads} subtree reads"),
        ("raw Ed25519 verify (PyNaCl)", f"{raw:,.0f}/s"),
        ("attestation + inclusion proof", f"{with_proof:,.0f}/s = "
         f"{with_proof / raw:.2f} x raw Ed25519"),
        ("whole bundle off the wire", f"{bundle_rate:,.0f}/s = {bundle_rate / raw:.2f} x raw "
         "Ed25519 (two signatures each)"),
    ]  # fmt: skip
    print()
    for label, value in report:
        print(f"{label + ':':<36}{value}")
    if not args.keep:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
