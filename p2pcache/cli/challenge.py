"""`p2pcache challenge STORE-PATH...`: what each trusted builder attests, who agrees, who differs.

Like `guix challenge`, but from signed attestations instead of substitute servers' narinfos.
The running node does the work (through its admin listener, as `p2pcache which` does): it
gathers the bundles offered for each item through the same seam the miss path uses
(`attestations_for`: the providers' peer API, the local bundle store), verifies them
against the trust file and the checkpoints it has seen, and reports per trusted builder.
That way the answer is exactly the evidence the node's own policy would judge, checked
with the same keys and the same checkpoint history, and the command needs no DHT of its own.

Exit status: 0 when no item has a conflict, 2 when at least one has (two trusted builders,
or a builder and the node's own copy, describe it differently), 1 on errors.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from p2pcache.cli.options import add_node_options, config_from_args
from p2pcache.errors import P2PCacheError
from p2pcache.guix.store_path import parse_store_path

EXIT_CONFLICT = 2
MAX_ANSWER = 4 << 20


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "challenge",
        help="compare what trusted builders attest for store items",
        description="Ask the running node what each trusted builder attests for each "
        "STORE-PATH, and show who agrees and who differs. Exit status 2 when a conflict is "
        "found, 0 otherwise.",
    )
    add_node_options(p)
    p.add_argument("--admin", metavar="HOST:PORT", help="the node's admin listener")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.add_argument("--verbose", action="store_true", help="show the references and refusals")
    p.add_argument("store_paths", metavar="STORE-PATH", nargs="+")
    p.set_defaults(func=run_challenge)


def run_challenge(args: argparse.Namespace) -> int:
    config = config_from_args(args, **{"admin.listen": args.admin})
    reports = []
    for text in args.store_paths:
        path = parse_store_path(text, config.store_dir)
        basename = urllib.parse.quote(f"{path.hash_part}-{path.name}")
        reports.append(_ask(f"http://{config.admin_listen}/api/v1/challenge/{basename}"))
    if args.json:
        print(json.dumps(reports, indent=1))
    else:
        for report in reports:
            print_report(report, verbose=args.verbose)
        print_summary(reports)
    return EXIT_CONFLICT if any(r["conflict"] for r in reports) else 0


def _ask(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return json.loads(response.read(MAX_ANSWER))
    except urllib.error.HTTPError as e:
        raise P2PCacheError(f"the node refused {url}: {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise P2PCacheError(f"cannot reach the node's admin listener at {url}: {e}") from None


def print_report(report: dict[str, Any], *, verbose: bool = False, out=sys.stdout) -> None:
    path = report["store_path"]
    verdict = report["verdict"]
    headline = {
        "conflict": "contents differ",
        "agree": f"{report['attested_by']} trusted builder(s) agree",
        "no-attestation": "no trusted builder attests it",
    }[verdict]
    print(f"{path} {headline}:", file=out)
    local = report.get("local")
    if local:
        where = f"local copy ({local['origin']})"
        print(f"  {where}: {local['nar_hash']} {local['nar_size']}", file=out)
    for builder in report["builders"]:
        who = f"{builder['name']} ({builder['key'][:16]}…)"
        if not builder["attestations"]:
            why = ", ".join(sorted({r["reason"] for r in builder["refused"]}))
            print(f"  {who}: {'refused: ' + why if why else 'no attestation'}", file=out)
        for a in builder["attestations"]:
            print(
                f"  {who}: {a['nar_hash']} {a['nar_size']} ({a['evidence']}, {a['system']})",
                file=out,
            )
            if verbose:
                print(f"    references: {' '.join(a['references']) or '(none)'}", file=out)
                print(f"    chunk root: {a['chunk_root']}", file=out)
        if verbose:
            for r in builder["refused"]:
                print(f"    refused ({r['reason']}): {r['detail']}", file=out)
    if verbose:
        for r in report.get("untrusted", []):
            print(f"  ignored ({r['reason']}): {r['detail']}", file=out)


def print_summary(reports: list[dict[str, Any]], out=sys.stdout) -> None:
    total = len(reports)
    counts = {v: sum(1 for r in reports if r["verdict"] == v) for v in ("agree", "conflict")}
    missing = total - counts["agree"] - counts["conflict"]
    print(f"\n{total} store item(s) analyzed:", file=out)
    for label, count in (
        ("trusted builders agree", counts["agree"]),
        ("contents differ", counts["conflict"]),
        ("no trusted attestation", missing),
    ):
        print(f"  - {count} ({100 * count // max(total, 1)}%) {label}", file=out)
