"""`p2pcache keygen`: the node's Guix signing key, the one users authorize."""

from __future__ import annotations

import argparse
from pathlib import Path

from p2pcache.guix.signing_key import write_key_pair
from p2pcache.paths import default_data_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "keygen",
        help="generate a Guix signing key pair",
        description=(
            "Write DIR/signing-key.pub and DIR/signing-key.sec in Guix's format. Users then "
            "authorize the node with: guix archive --authorize < DIR/signing-key.pub"
        ),
    )
    p.add_argument(
        "directory",
        nargs="?",
        type=Path,
        metavar="DIR",
        help="where to write the keys (default: the node's data directory)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    p.set_defaults(func=run_keygen)


def run_keygen(args: argparse.Namespace) -> int:
    directory: Path = args.directory or default_data_dir()
    directory.mkdir(parents=True, exist_ok=True)
    write_key_pair(directory, force=args.force)
    public = directory / "signing-key.pub"
    print(f"wrote {public} and {directory / 'signing-key.sec'}")
    print(f"authorize this node's substitutes with: guix archive --authorize < {public}")
    return 0
