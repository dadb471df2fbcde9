"""`p2pcache trust add|remove|list`: edit the trust file (builders and witnesses).

The trust file is the one `trust.file` of the configuration names (default
`trust/trusted-keys` in the data directory). Edits are atomic; a running node picks them up
by itself. The commented TOML configuration is never touched.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from p2pcache.cli.options import add_node_options, config_from_args
from p2pcache.trust.trust_file import KINDS, add_entry, parse_key, read_trust_file, remove_entry


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "trust",
        help="list, add or remove trusted builders and witnesses",
        description="Edit the trust file: the builders whose attestations count towards the "
        "quorum, and the witnesses whose checkpoint cosignatures count.",
    )
    commands = p.add_subparsers(title="actions", metavar="ACTION", required=True)

    add = commands.add_parser("add", help="trust a builder or a witness")
    _common(add)
    add.add_argument("kind", choices=KINDS)
    add.add_argument("name", help="a name for people (a witness: the key name it signs with)")
    add.add_argument("key", help="the Ed25519 public key, 64 hex digits")
    add.set_defaults(func=run_add)

    remove = commands.add_parser("remove", help="stop trusting a builder or a witness")
    _common(remove)
    remove.add_argument("--kind", choices=KINDS, help="only entries of this kind")
    remove.add_argument("name_or_key", metavar="NAME-OR-KEY")
    remove.set_defaults(func=run_remove)

    listing = commands.add_parser("list", help="show the trusted builders and witnesses")
    _common(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=run_list)


def _common(parser: argparse.ArgumentParser) -> None:
    add_node_options(parser)
    parser.add_argument("--trust-file", type=Path, metavar="FILE", help="the trust file to edit")


def trust_file_of(args: argparse.Namespace) -> Path:
    if args.trust_file is not None:
        return args.trust_file
    return config_from_args(args).effective_trust_file()


def run_add(args: argparse.Namespace) -> int:
    path = trust_file_of(args)
    entry = add_entry(path, args.kind, args.name, parse_key(args.key))
    print(f"now trusting {args.kind} {entry.name} ({entry.key.hex()}) in {path}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    path = trust_file_of(args)
    for kind, name in remove_entry(path, args.name_or_key, args.kind):
        print(f"no longer trusting {kind} {name} ({path})")
    return 0


def run_list(args: argparse.Namespace) -> int:
    path = trust_file_of(args)
    trust = read_trust_file(path)
    if args.json:
        print(
            json.dumps(
                {
                    "file": str(path),
                    "builders": [{"name": b.name, "key": b.key.hex()} for b in trust.builders],
                    "witnesses": [{"name": w.name, "key": w.key.hex()} for w in trust.witnesses],
                },
                indent=1,
            )
        )
        return 0
    if not trust.builders and not trust.witnesses:
        print(f"{path}: no builder or witness is trusted")
    for kind, entry in trust.entries():
        print(f"{kind:8} {entry.name:24} {entry.key.hex()}")
    return 0
