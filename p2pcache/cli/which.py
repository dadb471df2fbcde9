"""`p2pcache which DRV-PATH`: which nodes hold outputs of a derivation, before anyone asks.

Asks the running node's admin listener (it does the DHT lookup), so it works wherever
`p2pcache status` does: on the node's machine, by default 127.0.0.1:8082.
"""

from __future__ import annotations

import argparse
import json

from p2pcache.cli.admin_client import get_json
from p2pcache.cli.options import add_node_options, config_from_args
from p2pcache.errors import P2PCacheError
from p2pcache.guix.store_path import parse_store_path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "which",
        help="which nodes of the network hold outputs of a derivation",
        description="Look up, through the running node, the nodes that announced holding "
        "outputs of DRV-PATH (a .drv store path). Exit status 1 when none is known.",
    )
    add_node_options(p)
    p.add_argument("--admin", metavar="HOST:PORT", help="the node's admin listener")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.add_argument("derivation", metavar="DRV-PATH")
    p.set_defaults(func=run_which)


def run_which(args: argparse.Namespace) -> int:
    config = config_from_args(args, **{"admin.listen": args.admin})
    drv = parse_store_path(args.derivation, config.store_dir)
    if not drv.name.endswith(".drv"):
        raise P2PCacheError(f"{args.derivation} is not a derivation (.drv) store path")
    answer = get_json(config.admin_listen, f"/api/v1/which/{drv.hash_part}")
    holders = answer.get("holders", [])
    if args.json:
        print(json.dumps(answer, indent=1))
    elif not holders:
        print(f"no node announced outputs of {args.derivation}")
    for holder in holders if not args.json else []:
        print(f"node {holder['node_id'][:16]} at {holder['endpoint']}:")
        for name, basename in sorted(holder["outputs"].items()):
            print(f"  {name}: {config.store_dir}/{basename}")
    return 0 if holders else 1
