"""`p2pcache narinfo sign|verify`: Guix narinfo signatures from the command line."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from p2pcache.guix.narinfo_signature import SignatureStatus, sign_narinfo, verify_narinfo
from p2pcache.guix.signing_key import parse_acl, parse_secret_key

# Key files and ACLs are a few hundred bytes; an ACL with thousands of keys is still < 1 MiB.
MAX_KEY_FILE_SIZE = 1 << 20


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("narinfo", help="sign or verify a narinfo as Guix does")
    sub = p.add_subparsers(metavar="ACTION", required=True)
    s = sub.add_parser(
        "sign",
        help="print FILE's signed fields, a Signature line and FILE's URL groups",
    )
    s.add_argument("--key", required=True, type=Path, metavar="SECRET-KEY")
    s.add_argument("--host", default=None, metavar="NAME", help="default: this host's name")
    s.add_argument("file", type=Path, metavar="FILE")
    s.set_defaults(func=run_sign)
    v = sub.add_parser(
        "verify",
        help="print the verdict (valid-signature, ...); exit 0 only for valid-signature",
    )
    keys = v.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key", type=Path, metavar="PUBLIC-KEY")
    keys.add_argument("--acl", type=Path, metavar="ACL")
    v.add_argument("file", type=Path, metavar="FILE")
    v.set_defaults(func=run_verify)


def read_small_file(path: Path, limit: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{path} is larger than {limit} bytes")
    return data


def run_sign(args: argparse.Namespace) -> int:
    from p2pcache.guix.narinfo import MAX_NARINFO_SIZE

    key = parse_secret_key(read_small_file(args.key, MAX_KEY_FILE_SIZE))
    host = args.host or socket.gethostname()
    signed = sign_narinfo(read_small_file(args.file, MAX_NARINFO_SIZE), key, host)
    sys.stdout.buffer.write(signed)
    sys.stdout.flush()
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from p2pcache.guix.narinfo import MAX_NARINFO_SIZE

    keys = parse_acl(read_small_file(args.key or args.acl, MAX_KEY_FILE_SIZE))
    status = verify_narinfo(read_small_file(args.file, MAX_NARINFO_SIZE), keys)
    print(status.value)
    return 0 if status is SignatureStatus.VALID else 1
