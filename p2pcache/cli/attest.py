"""`p2pcache attest`: a builder signs what it built itself and appends it to its log.

Named items without evidence of a local build (a build log) are refused, each with a line
saying why, and the exit status is 1; `--force` attests them anyway, marked `forced`. With
`--all`, items without a build log are the ones this machine substituted: they are skipped
(counted in the summary), never attested, and `--force` is refused (it would attest them all).
Items not yet in the cache are baked first (the chunk root comes from the cache).

With `--check`, the evidence is a rebuild here instead: each named item's derivation is rebuilt
with `guix build --check` (one at a time, each bounded by `builder.check_timeout`, guix's
output relayed on stderr), and only items whose rebuild reproduced them are attested, with
evidence `check`; the others are refused, each with the reason, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from p2pcache.cache.index import CacheIndex
from p2pcache.cli.options import add_node_options, config_from_args
from p2pcache.cli.publish import publish, select_store_items
from p2pcache.config import Config
from p2pcache.errors import P2PCacheError
from p2pcache.guix.check_build import resolve_guix
from p2pcache.guix.store_db import GuixStoreDatabase, StoreItemInfo
from p2pcache.logs import configure_logging
from p2pcache.net.identity import load_or_create_identity
from p2pcache.progress import Progress
from p2pcache.trust.attester import (
    Attester,
    AttestOutcome,
    AttestSettings,
    AttestStatus,
    Plan,
    Refusal,
)
from p2pcache.trust.builder_log import BuilderLog, hash_part_of
from p2pcache.trust.check_evidence import CheckEvidence, CheckSettings

log = logging.getLogger(__name__)

# Attestations appended per transaction with --all (each batch is durable before the next).
BATCH = 1000


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "attest",
        help="sign attestations for store items this machine built, and log them",
        description="Sign, with this node's identity key, an attestation for each item built "
        "on this machine (evidence: the build log guix-daemon kept for its derivation), "
        "append it to this node's transparency log and sign a new checkpoint. Items already "
        "attested are left as they are. With --check, the evidence is instead a rebuild "
        "here with `guix build --check` that reproduced the item. Exit status 1 if a named "
        "item was refused.",
    )
    add_node_options(p)
    p.add_argument(
        "--build-log-dir", metavar="DIR", help="guix-daemon's log directory (/var/log/guix)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="attest named items without a build log too, marked 'forced'",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="rebuild each named item with `guix build --check` and attest only those it "
        "reproduced (evidence 'check'), whether or not a build log exists",
    )
    p.add_argument(
        "--check-timeout",
        type=float,
        metavar="SECONDS",
        help="how long one rebuild may take (builder.check_timeout, default 4 hours)",
    )
    p.add_argument("--guix", metavar="COMMAND", help="the guix command (builder.guix)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--all", action="store_true", help="every item built on this machine")
    group.add_argument("paths", nargs="*", default=[], metavar="STORE-PATH")
    p.set_defaults(func=run_attest)


def run_attest(args: argparse.Namespace) -> int:
    if args.all and args.force:
        raise P2PCacheError(
            "--force applies to named store paths only: with --all it would attest every "
            "item this machine substituted"
        )
    if args.check and args.all:
        raise P2PCacheError(
            "--check applies to named store paths only: with --all it would rebuild the whole store"
        )
    if args.check and args.force:
        raise P2PCacheError(
            "--check and --force do not go together: --check attests only what its rebuild "
            "reproduced, --force what has no evidence at all"
        )
    config = config_from_args(
        args,
        **{
            "builder.build_log_dir": args.build_log_dir,
            "builder.guix": args.guix,
            "builder.check_timeout": args.check_timeout,
        },
    )
    configure_logging(config.log_level, config.log_format)
    check = None
    if args.check:
        check = CheckSettings(resolve_guix(config.guix_command), config.check_timeout)
    return asyncio.run(
        attest(config, args.paths, everything=args.all, force=args.force, check=check)
    )


def _relay(line: str) -> None:
    print(f"  guix: {line}", file=sys.stderr, flush=True)


def _announce(line: str) -> None:
    print(f"p2pcache: {line}", file=sys.stderr, flush=True)


async def _plan(
    attester: Attester,
    db: GuixStoreDatabase,
    named: list[StoreItemInfo] | None,
    check: CheckSettings | None,
) -> tuple[list[Plan], list[AttestOutcome]]:
    """Named items, or with --all every item that has evidence of a local build; with a check,
    the named items whose rebuild reproduced them, and a refusal for each of the others."""
    if check is not None:
        assert named is not None
        checker = CheckEvidence(check, db, relay=_relay, announce=_announce)
        results = await checker.plan_all(named)
        plans = [r for r in results if isinstance(r, Plan)]
        return plans, [r for r in results if isinstance(r, AttestOutcome)]
    if named is not None:
        return [await attester.plan(info) for info in named], []
    plans = []
    async for batch in db.iter_valid_paths():
        for info in batch:
            plan = await attester.plan(info)
            if plan.evidence is not None:
                plans.append(plan)
    return plans, []


async def _unbaked(config: Config, plans: list[Plan], force: bool) -> list[str]:
    async with CacheIndex(config.data_dir / "index.sqlite") as index:
        return [
            p.info.path
            for p in plans
            if (p.evidence is not None or force)
            and not ((item := index.get(hash_part_of(p.info.path))) and item.is_baked)
        ]


async def attest(
    config: Config,
    paths: list[str],
    *,
    everything: bool,
    force: bool,
    check: CheckSettings | None = None,
) -> int:
    settings = AttestSettings(config.store_dir, config.store_root, config.build_log_dir)
    db = GuixStoreDatabase(config.db, store_dir=config.store_dir)
    await db.open()
    try:
        named = None if everything else await select_store_items(db, config, paths)
        identity = load_or_create_identity(config.data_dir)
        with BuilderLog.open(config.data_dir, identity.signing_key) as builder_log:
            index = CacheIndex(config.data_dir / "index.sqlite")
            attester = Attester(settings, db, index, builder_log, identity.signing_key)
            plans, refusals = await _plan(attester, db, named, check)
            total = await db.count() if everything else len(paths)
            to_bake = await _unbaked(config, plans, force)
            if to_bake:
                log.info("baking %d items into the cache first", len(to_bake))
                await publish(config, to_bake, everything=False)
            await index.open()
            try:
                outcomes = refusals + await _attest_all(attester, plans, force)
            finally:
                await index.close()
            checkpoint = builder_log.bundles.latest_own_checkpoint()
            size = checkpoint.size if checkpoint else 0
    finally:
        await db.close()
    return _report(outcomes, total if everything else None, builder_log.origin, size)


async def _attest_all(attester: Attester, plans: list[Plan], force: bool) -> list[AttestOutcome]:
    progress = Progress("attesting", len(plans), sum(p.info.nar_size or 0 for p in plans))

    def on_item(outcome: AttestOutcome, info: StoreItemInfo) -> None:
        progress.add_bytes(info.nar_size or 0)
        progress.item_done(outcome.status is not AttestStatus.REFUSED)

    outcomes = []
    for start in range(0, len(plans), BATCH):
        batch = plans[start : start + BATCH]
        outcomes += attester.attest(batch, force=force, on_item=on_item)
    progress.finish()
    return outcomes


def _report(outcomes: list[AttestOutcome], store_items: int | None, origin: str, size: int) -> int:
    attested = [o for o in outcomes if o.status is AttestStatus.ATTESTED]
    already = [o for o in outcomes if o.status is AttestStatus.ALREADY]
    refused = [o for o in outcomes if o.status is AttestStatus.REFUSED]
    for outcome in outcomes:
        if outcome.status is AttestStatus.REFUSED:
            print(f"p2pcache: {outcome.message}", file=sys.stderr)
        elif store_items is None or outcome.status is AttestStatus.ATTESTED:
            print(outcome.message)
    summary = f"{len(attested)} attested, {len(already)} already attested"
    if refused:
        summary += f", {len(refused)} refused"
    if store_items is not None:
        built = len(outcomes)
        summary += f"; {store_items - built} of {store_items} store items were not built here"
    print(f"{summary}; log {origin} has {size} entries")
    if store_items is None:
        return 1 if refused else 0
    # With --all, an item that was built but cannot be attested (not baked, ...) is a failure.
    return 1 if any(o.refusal is not Refusal.NO_BUILD_LOG for o in refused) else 0
