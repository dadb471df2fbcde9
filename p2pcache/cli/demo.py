"""`p2pcache demo`: three nodes on this machine, one item fetched peer to peer, told in words.

The network itself is p2pcache/demo.py; this module tells the story and handles Ctrl-C. It
keeps running after the fetch so the user can open the URLs it printed, until Ctrl-C (or
SIGTERM), then stops every node and removes its temporary directory. `--once` stops right
after the fetch (what the tests and a quick look use).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from p2pcache.cli.status import human_bytes
from p2pcache.demo import NODE_NAMES, DemoFetch, DemoNetwork, node_address
from p2pcache.logs import configure_logging


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="start a small local network of three nodes and fetch an item peer to peer",
        description="Start three p2pcache nodes on loopback addresses (one seeding a generated "
        "store), fetch an item through another node's Guix endpoint, explain what happened "
        "and where to look, and keep running until Ctrl-C. Nothing is written outside a "
        "temporary directory, which is removed at the end.",
    )
    p.add_argument("--once", action="store_true", help="stop after the fetch")
    p.add_argument("--verbose", action="store_true", help="show the nodes' own log messages")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.set_defaults(func=run_demo)


def say(text: str = "") -> None:
    print(text, flush=True)


def run_demo(args: argparse.Namespace) -> int:
    configure_logging("info" if args.verbose else "error", args.log_format)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(demo(args.once))
    return uvloop.run(demo(args.once))


async def demo(once: bool) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    network = DemoNetwork()
    say(f"Starting three p2pcache nodes on loopback, files in {network.workdir}")
    try:
        starting = asyncio.ensure_future(network.start())
        await _until(starting, stopping)
        if stopping.is_set():
            return 130
        assert network.store is not None
        say(
            f"  {NODE_NAMES[0]} ({node_address(0)}) publishes a generated store of "
            f"{len(network.store.items)} items ({human_bytes(network.store.total_nar_size)})"
        )
        for index in range(1, len(network.nodes)):
            say(
                f"  {NODE_NAMES[index]} ({node_address(index)}) starts empty; it knows only the "
                "seed's DHT address and trusts the seed's signing key"
            )
        item = network.chosen_item()
        say()
        say(f"Asking {NODE_NAMES[-1]}'s Guix endpoint for {item.path}, as guix would...")
        fetching = asyncio.ensure_future(network.fetch())
        await _until(fetching, stopping)
        if stopping.is_set():
            return 130
        tell(fetching.result(), network)
        if not fetching.result().hash_verified:
            return 1
        if once:
            return 0
        say()
        say(
            "The network keeps running: open the status pages and /metrics above, or ask "
            f"{_guix_url(network)} for more items. Press Ctrl-C to stop."
        )
        await stopping.wait()
        return 0
    finally:
        say("Stopping the three nodes...")
        await network.stop()
        say(f"Stopped; {network.workdir} is removed.")
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _until(task: asyncio.Future, stopping: asyncio.Event) -> None:
    """Wait for `task`, or cancel it when a stop signal comes first."""
    stopper = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if stopping.is_set() and not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    elif task.done():
        task.result()  # raise its error, if any


def _guix_url(network: DemoNetwork) -> str:
    last = network.nodes[-1]
    return f"http://{last.config.listen.host}:{last.guix_port}"


def tell(fetch: DemoFetch, network: DemoNetwork) -> None:
    """What happened, in plain words, and where to look."""
    say(
        f"  {NODE_NAMES[-1]} did not have it: it looked the item up in the DHT and found "
        f"{len(fetch.providers)} provider(s): {', '.join(fetch.providers)} (the seed's peer API)"
    )
    say(
        f"  the narinfo, signed by the seed's key, came back in {fetch.narinfo_seconds:.2f} s: "
        f"{fetch.narinfo_url}"
    )
    rate = fetch.nar_size / max(fetch.nar_seconds, 1e-6) / 1e6
    say(
        f"  the NAR ({human_bytes(fetch.nar_size)}) was fetched from the seed chunk by chunk, "
        f"each chunk checked, and streamed on in {fetch.nar_seconds:.2f} s ({rate:.0f} MB/s)"
    )
    if fetch.hash_verified:
        say(f"  its bytes hash to the narinfo's NarHash ({fetch.nar_hash}): verified")
        say(f"  {NODE_NAMES[-1]} now holds it in its cache and announces itself as a provider too")
    else:
        say(f"  ERROR: its bytes do not hash to the narinfo's NarHash {fetch.nar_hash}")
    say()
    say("Where to look:")
    for index, node in enumerate(network.nodes):
        assert node.network is not None
        admin = f"http://{node.config.admin_listen.host}:{node.admin_port}"
        say(f"  {NODE_NAMES[index]}:")
        say(f"    Guix endpoint  http://{node.config.listen.host}:{node.guix_port}")
        say(f"    peer API       {node.network.peer_url}")
        say(f"    status page    {admin}/")
        say(f"    metrics        {admin}/metrics")
        say(f"    status         p2pcache status --admin {admin.removeprefix('http://')}")
    sys.stdout.flush()
