"""`p2pcache serve`: run a node."""

from __future__ import annotations

import argparse
import asyncio

from p2pcache.cli.options import add_node_options, config_from_args
from p2pcache.logs import configure_logging
from p2pcache.node import Node


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run a node: the Guix substitute endpoint over the cache and the local store",
        description="Run a p2pcache node. With no options it uses the embedded defaults: data "
        "in the user's data directory, Guix endpoint on 127.0.0.1:8080, admin and /metrics on "
        "127.0.0.1:8082, and the local Guix store if there is one.",
    )
    add_node_options(p)
    p.add_argument("--listen", metavar="HOST:PORT", help="Guix endpoint (default 127.0.0.1:8080)")
    p.add_argument("--admin-listen", metavar="HOST:PORT", help="admin (default 127.0.0.1:8082)")
    p.add_argument("--metrics-listen", metavar="HOST:PORT", help="/metrics alone (default off)")
    p.add_argument("--peer-listen", metavar="HOST:PORT", help="peer API (default 127.0.0.1:8081)")
    p.add_argument("--advertise-url", metavar="URL", help="public URL of the peer listener")
    p.add_argument(
        "--dht-listen", metavar="HOST:PORT", help='Kademlia, UDP (default 127.0.0.1:8083; "" off)'
    )
    p.add_argument(
        "--bootstrap", action="append", metavar="HOST:PORT", help="a DHT node to join through"
    )
    p.add_argument(
        "--upstream", action="append", metavar="URL", help="a substitute server to fall back to"
    )
    p.add_argument("--guix-acl", metavar="FILE", help="Guix keys to accept (default /etc/guix/acl)")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    config = config_from_args(
        args,
        **{
            "guix_endpoint.listen": args.listen,
            "admin.listen": args.admin_listen,
            "admin.metrics_listen": args.metrics_listen,
            "peer.listen": args.peer_listen,
            "peer.advertise_url": args.advertise_url,
            "dht.listen": args.dht_listen,
            "dht.bootstrap": args.bootstrap,
            "upstream.urls": args.upstream,
            "trust.guix_acl": args.guix_acl,
        },
    )
    configure_logging(config.log_level, config.log_format)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; fall back anyway
        asyncio.run(Node(config).run_until_signalled())
    else:
        uvloop.run(Node(config).run_until_signalled())
    return 0
