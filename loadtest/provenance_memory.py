"""Memory a node keeps per promised item for its NAR download, before and after 2026-11-26.

Until then the resolver kept every accepted item's whole Resolution (the IndexedItem, with
its references and signed narinfo, plus where it came from) for the last 100,000 accepted
items, with up to 64 KiB of attestation bundles each and no bound on their total. Now it
keeps a Provenance (origin, source, decision, bundles) in `Provenances`, bounded in count
and in bundle bytes, and drops it once the NAR is cached.

This builds `--items` entries shaped like real ones (a store path with `--references`
references, a signed part listing them, a signature line) both ways and prints what
tracemalloc counts per entry. Then the same for the upstream narinfos a node with upstreams
keeps for the NAR downloads that follow (up to 10,000): parsed, as before, or as their bytes,
parsed again at download time, as now. No network; the narinfo is the spec's test vector.

    python3 loadtest/provenance_memory.py [--items 100000] [--references 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pcache.cache.index import IndexedItem, Origin, State
from p2pcache.guix import nix32
from p2pcache.net.upstream_narinfo import check_upstream_narinfo
from p2pcache.network import MAX_KEPT_UPSTREAM_NARINFOS
from p2pcache.provenance import Provenance, Provenances


def hash_part() -> str:
    return os.urandom(20).hex()[:32]


def item(references: int) -> IndexedItem:
    """An accepted item as the index returns it: not fetched yet."""
    h = hash_part()
    refs = tuple(f"{hash_part()}-some-package-1.2.3" for _ in range(references))
    signed = (
        f"StorePath: /gnu/store/{h}-hello-2.12\nNarHash: sha256:{'0' * 52}\nNarSize: 123456\n"
        f"References: {' '.join(refs)}\nDeriver: {h}-hello-2.12.drv\nSystem: x86_64-linux\n"
    ).encode()
    signature = b"Signature: 1;ci.guix.gnu.org;" + os.urandom(120).hex().encode() + b"\n"
    return IndexedItem(
        h,
        f"/gnu/store/{h}-hello-2.12",
        "sha256:" + "0" * 52,
        123456,
        refs,
        f"{h}-hello-2.12.drv",
        Origin.PEER,
        State.UNBAKED,
        None,
        signed,
        signature,
        None,
        None,
        None,
        None,
        0,
    )


VECTOR = Path(__file__).resolve().parents[2] / "shared/spec/vectors/tree.narinfo"


def upstream_narinfo(references: int) -> tuple[str, bytes]:
    """The spec's test narinfo for a new hash part, with `references` references."""
    h = nix32.encode(os.urandom(20))
    refs = " ".join(f"{nix32.encode(os.urandom(20))}-some-package-1.2.3" for _ in range(references))
    data = VECTOR.read_bytes().replace(b"sjbf4zs2wsf2brfdyqzmdpvps50lh6mn", h.encode())
    return h, data.replace(b"References: \n", f"References: {refs}\n".encode())


def copy(data: bytes) -> bytes:
    return bytes(bytearray(data))


def per_entry(build, items: int) -> float:
    tracemalloc.start()
    kept = build(items)
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert kept
    return size / items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--references", type=int, default=20)
    args = parser.parse_args()

    def before(n: int) -> dict:
        kept = {}
        for i in range(n):
            found = item(args.references)
            kept[found.hash_part] = (found, Provenance(Origin.PEER, f"http://10.0.{i % 250}.1"))
        return kept

    def after(n: int) -> Provenances:
        kept = Provenances(max_items=n)
        for i in range(n):
            kept.add(hash_part(), Provenance(Origin.PEER, f"http://10.0.{i % 250}.1"))
        return kept

    old = per_entry(before, args.items)
    new = per_entry(after, args.items)
    print(f"{args.items} promised items, {args.references} references each, no bundles:")
    for label, size in (("whole resolution kept (before)", old), ("provenance kept (now)", new)):
        print(f"  {label:31} {size:7.0f} B/item, {size * args.items / 2**20:6.1f} MiB")
    print(f"  ratio: {old / new:.1f}x less")
    print("bundles: before up to 64 KiB per item and no total bound; now at most 64 MiB in all")

    kept = min(args.items, MAX_KEPT_UPSTREAM_NARINFOS)
    narinfos = [upstream_narinfo(args.references) for _ in range(kept)]
    # Each kept narinfo is a copy made inside the measurement (as a response body would be).
    parsed = per_entry(
        lambda n: {h: check_upstream_narinfo(copy(data), "http://u", h) for h, data in narinfos},
        kept,
    )
    raw = per_entry(lambda n: {h: ("http://u", copy(data)) for h, data in narinfos}, kept)
    print(f"{kept} upstream narinfos kept for their NAR downloads:")
    for label, size in (("parsed (before)", parsed), ("bytes (now)", raw)):
        print(f"  {label:31} {size:7.0f} B/item, {size * kept / 2**20:6.1f} MiB")


if __name__ == "__main__":
    main()
