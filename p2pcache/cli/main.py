"""Entry point: builds the argument parser from the command modules and turns errors into exits.

Every command module exposes `register(subparsers)`, which adds its sub-commands and sets
`func` on them. A command returns its exit status. Errors the project reports on purpose
(`P2PCacheError`) and operating-system errors become one line on stderr and exit status 1; a
traceback would be a bug.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from p2pcache import __version__
from p2pcache.cli import (
    attest,
    cache,
    challenge,
    demo,
    keys,
    nar,
    narinfo,
    publish,
    serve,
    status,
    trust,
    which,
)
from p2pcache.errors import P2PCacheError

COMMAND_MODULES = (
    serve,
    status,
    demo,
    publish,
    attest,
    trust,
    challenge,
    cache,
    which,
    keys,
    nar,
    narinfo,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2pcache",
        description="Peer-to-peer binary substitute cache for GNU Guix.",
    )
    parser.add_argument("--version", action="version", version=f"p2pcache {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def _describe_os_error(error: OSError) -> str:
    where = f" {error.filename}" if error.filename else ""
    return f"{error.strerror or error}:{where}" if where else str(error.strerror or error)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except P2PCacheError as error:
        print(f"p2pcache: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (e.g. `p2pcache nar dump … | head`): not our error to report.
        sys.stderr.close()
        return 1
    except OSError as error:
        print(f"p2pcache: {_describe_os_error(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("p2pcache: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
