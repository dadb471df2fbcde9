"""Benchmark: what checking relayed narinfos costs the event loop, inline or in a worker.

The baseline is the check itself run inline (accept_relayed_narinfo: parse, Guix's ECDSA
signature, layout and item checks). Against it, the loop's CPU per narinfo when the checks go
to one worker process (a spawned ProcessPoolExecutor, as p2pcache/trust/narinfo_check_pool
does) in batches of 1, 8 and 64: the pickling and the executor's threads are what remains on
the loop. Wall time per narinfo is printed too (one worker: no parallelism here).

    python3 loadtest/bench_narinfo_checks.py [--count 640]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pcache.guix.narinfo import (
    NarURL,
    format_nar_hash,
    render_narinfo,
    render_signature_line,
    render_signed_part,
)
from p2pcache.guix.narinfo_signature import signature_field
from p2pcache.guix.signing_key import generate_key_pair
from p2pcache.trust.narinfo_acceptance import accept_relayed_narinfo
from p2pcache.trust.narinfo_check_pool import check_batch

STORE = "/gnu/store"
HASH = "sjbf4zs2wsf2brfdyqzmdpvps50lh6mn"


def sample_narinfo(key) -> bytes:
    """A narinfo like Guix's: a store path with a dozen references, signed."""
    references = [f"{STORE}/{'a' * 31}{i % 10}-ref-{i}" for i in range(12)]
    body = render_signed_part(
        f"{STORE}/{HASH}-hello-2.12", format_nar_hash(bytes(32)), 123456, references, None
    )
    line = render_signature_line(signature_field(body, key, "bench"))
    return render_narinfo(body, line, (NarURL(f"nar/{HASH}-hello-2.12", "none", 123456),))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=640, help="narinfos per measurement")
    args = parser.parse_args()
    key = generate_key_pair()
    data, acl = sample_narinfo(key), [key.public]
    started = time.process_time()
    for _ in range(args.count):
        accept_relayed_narinfo(data, HASH, acl, STORE)
    inline = (time.process_time() - started) / args.count
    print(f"inline: {inline * 1e6:.0f} us of the loop's CPU per narinfo (baseline)")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        pool.submit(int).result()  # started and ready
        for size in (1, 8, 64):
            batches = max(1, args.count // size)
            requests = [("accept", data, HASH)] * size
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(batches):
                outcomes = pool.submit(check_batch, requests, acl, STORE).result()
                assert all(outcome[0] for outcome in outcomes)
            n = batches * size
            per_item = (time.process_time() - cpu) / n
            print(
                f"worker, batches of {size:2}: {per_item * 1e6:4.0f} us of the loop's CPU per "
                f"narinfo ({per_item / inline:.2f}x inline), "
                f"{(time.perf_counter() - wall) / n * 1e6:.0f} us wall"
            )


if __name__ == "__main__":
    main()
