"""`p2pcache status`: what the running node is doing, read from its admin listener.

The node answers GET /api/v1/status with JSON (Node.status); this command prints it as a short
report for a person, or passes the JSON on with `--json`. `render_status` is pure, so the
report's wording is tested without a node.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from p2pcache.cli.admin_client import get_json
from p2pcache.cli.options import add_node_options, config_from_args

# Recent events shown in the text report (the JSON has all the node keeps).
SHOWN_EVENTS = 5


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "status",
        help="show what the running node is doing: peers, cache, hit ratio, recent events",
        description="Ask the running node (its admin listener, 127.0.0.1:8082 by default) for "
        "its identity, endpoints, peers, cache use, narinfo hit ratio, recent transfers and "
        "recent verification failures. Exit status 1 when no node answers.",
    )
    add_node_options(p)
    p.add_argument("--admin", metavar="HOST:PORT", help="the node's admin listener")
    p.add_argument("--json", action="store_true", help="print the node's answer as JSON")
    p.set_defaults(func=run_status)


def run_status(args: argparse.Namespace) -> int:
    config = config_from_args(args, **{"admin.listen": args.admin})
    status = get_json(config.admin_listen, "/api/v1/status", timeout=10)
    if args.json:
        print(json.dumps(status, indent=1, sort_keys=True))
    else:
        print(render_status(status, now=time.time()), end="")
    return 0


def human_bytes(n: float | None) -> str:
    """1536 -> "1.5 KiB"."""
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """3725 -> "1 h 2 min"."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def _ago(then: float, now: float) -> str:
    return f"{human_duration(max(0.0, now - then))} ago"


def _percent(ratio: float | None) -> str:
    return "no requests yet" if ratio is None else f"{ratio * 100:.1f} %"


def render_status(status: dict[str, Any], now: float) -> str:
    """The status answer as a report of a few short paragraphs."""
    identity = status.get("identity", {})
    endpoints = status.get("endpoints", {})
    cache = status.get("cache", {})
    narinfo = status.get("narinfo", {})
    peers = status.get("peers") or {}
    store = status.get("store", {})
    node_id = identity.get("node_id") or "?"
    lines = [
        f"p2pcache {status.get('version', '?')} on {identity.get('host_name', '?')}, "
        f"up {human_duration(status.get('uptime_seconds', 0))} (pid {status.get('pid', '?')})",
        f"  node id      {node_id}",
        f"  signing key  {identity.get('signing_key', '?')}",
        "",
        "Endpoints",
    ]
    names = {
        "guix": "Guix substitutes",
        "peer": "peer API",
        "admin": "admin and /metrics",
        "metrics": "/metrics only",
        "dht": "DHT",
        "lan": "advertised on LAN",
    }
    for key, label in names.items():
        if endpoints.get(key):
            lines.append(f"  {label:<19} {endpoints[key]}")
    if endpoints.get("admin"):
        lines.append(f"  {'status page':<19} {endpoints['admin']}/")
    used = cache.get("used_ratio")
    lines += [
        "",
        "Cache",
        f"  {human_bytes(cache.get('size_bytes'))} of {human_bytes(cache.get('max_size_bytes'))}"
        + (f" ({used * 100:.1f} % of the quota)" if used is not None else "")
        + f", {cache.get('baked', 0)} items ready, {cache.get('items', 0)} known"
        + (f", {cache['corrupt']} corrupt" if cache.get("corrupt") else ""),
        f"  publishing the local store: {'yes' if store.get('publishing') else 'no'}"
        + (f" ({store['bake_queue']} items waiting)" if store.get("bake_queue") else ""),
        f"  narinfo hit ratio: {_percent(narinfo.get('hit_ratio'))} "
        f"({narinfo.get('hits', 0)} hits, {narinfo.get('misses', 0)} misses)",
        "",
        f"Peers: {peers.get('known', 0)} known, {peers.get('banned', 0)} banned, "
        f"{peers.get('dht_contacts', 0)} DHT contacts",
    ]
    for peer in peers.get("scored", [])[:SHOWN_EVENTS]:
        flag = "  BANNED" if peer.get("banned") else ""
        lines.append(
            f"  {peer['url']}: {peer['successes']} transfers, {peer['misbehaved']} offences{flag}"
        )
    transfers = status.get("transfers", {})
    recent = transfers.get("recent", [])
    lines += ["", f"Recent transfers ({_counts(transfers.get('counts', {}))})"]
    if not recent:
        lines.append("  none yet")
    for t in recent[:SHOWN_EVENTS]:
        what = (
            f"{human_bytes(t['nar_bytes'])} in {t['seconds']:.2f} s"
            if t["outcome"] == "ok"
            else f"FAILED: {t['detail']}"
        )
        lines.append(f"  {_ago(t['time'], now)}  {t['item']} from {t['source']}: {what}")
    failures = status.get("verification_failures", {})
    recent = failures.get("recent", [])
    total = sum(failures.get("counts", {}).values())
    lines += ["", f"Verification failures: {total}"]
    if not recent:
        lines.append("  none (every byte received so far matched what was signed)")
    for f in recent[:SHOWN_EVENTS]:
        about = f" {f['item']}" if f.get("item") else ""
        source = f" from {f['source']}" if f.get("source") else ""
        lines.append(f"  {_ago(f['time'], now)}  {f['check']}{about}{source}: {f['detail']}")
    return "\n".join(lines) + "\n"


def _counts(counts: dict[str, int]) -> str:
    if not counts:
        return "none yet"
    return ", ".join(f"{value} {key}" for key, value in sorted(counts.items()))
