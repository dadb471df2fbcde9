"""`p2pcache nar dump|restore`: the NAR format on stdout and stdin, like `nix-store --dump`."""

from __future__ import annotations

import argparse
import sys

from p2pcache.guix.nar import dump_nar
from p2pcache.guix.nar_restore import restore_nar


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("nar", help="write or restore a NAR (Nix archive)")
    sub = p.add_subparsers(metavar="ACTION", required=True)
    d = sub.add_parser("dump", help="write the NAR of PATH on standard output")
    d.add_argument("path", metavar="PATH")
    d.set_defaults(func=run_dump)
    r = sub.add_parser("restore", help="restore a NAR read from standard input into DEST")
    r.add_argument("dest", metavar="DEST", help="must not exist yet")
    r.set_defaults(func=run_restore)


def run_dump(args: argparse.Namespace) -> int:
    if sys.stdout.isatty():
        print(
            "p2pcache: refusing to write a binary NAR to a terminal; redirect it", file=sys.stderr
        )
        return 2
    out = sys.stdout.buffer
    summary = dump_nar(args.path, out)
    out.flush()
    print(f"{summary.nar_hash} {summary.size}", file=sys.stderr)
    return 0


def run_restore(args: argparse.Namespace) -> int:
    summary = restore_nar(sys.stdin.buffer, args.dest)
    print(f"restored {args.dest} ({summary.nar_hash}, {summary.size} bytes)", file=sys.stderr)
    return 0
