"""The trust file: which builders' attestations count, and which witnesses' cosignatures.

A small text file of its own (the TOML configuration points to it with `trust.file`), so that
`p2pcache trust add|remove` can edit it without ever rewriting the operator's commented TOML.
One entry a line; blank lines and `#` comments are kept as they are when the file is edited:

    # p2pcache trust file
    builder ci-berlin 6a1f…e2        (64 hex digits: the builder node's Ed25519 identity key)
    witness witness.example/w1 3b9c…07

A builder's name is for people (logs, `p2pcache challenge`); a witness's name is the key name
its cosignature lines carry (C2SP tlog-cosignature: it is part of the key ID), so it must be
exactly what the witness signs with. Names are unique per kind, and so are keys.

Edits are atomic (a temporary file in the same directory, fsync, rename, fsync of the
directory) and serialized by an advisory lock, so two `trust add` at once lose nothing and a
running node never reads half a file. The node re-reads the file when it changes
(`TrustFileWatcher`); a file that became malformed is reported and the last good one kept.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from p2pcache.errors import P2PCacheError
from p2pcache.trust.policy import TrustedKey

log = logging.getLogger(__name__)

MAX_TRUST_FILE_SIZE = 1 << 20
"""A trust file names a few dozen keys; a megabyte is a mistake, not a trust file."""

KINDS = ("builder", "witness")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@/:-]{0,127}")
HEADER = (
    "# p2pcache trust file: builders whose attestations count, witnesses whose cosignatures\n"
    "# count. One entry a line: `builder NAME KEY` or `witness NAME KEY` (KEY: 64 hex digits of\n"
    "# an Ed25519 public key). Edit with `p2pcache trust add|remove|list`, or by hand.\n"
)


class TrustFileError(P2PCacheError):
    """The trust file cannot be read, or an edit of it makes no sense."""


@dataclass(frozen=True, slots=True)
class TrustFile:
    builders: tuple[TrustedKey, ...] = ()
    witnesses: tuple[TrustedKey, ...] = ()

    def entries(self) -> Iterator[tuple[str, TrustedKey]]:
        for builder in self.builders:
            yield "builder", builder
        for witness in self.witnesses:
            yield "witness", witness


def parse_key(text: str) -> bytes:
    """An Ed25519 public key written as 64 hex digits (or 44 characters of base64)."""
    text = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise TrustFileError(
            f"{text[:70]!r} is not an Ed25519 public key (64 hex digits, as "
            "`p2pcache attest` and the node's /p2p/v1/node show it)"
        )
    return raw


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise TrustFileError(
            f"{name[:70]!r} is not a usable name: 1 to 128 characters from letters, digits and "
            "._@/:- starting with a letter or digit"
        )


def parse_trust_file(text: str, where: str = "trust file") -> TrustFile:
    """Parse the file's text; raises TrustFileError naming the line at fault."""
    builders: list[TrustedKey] = []
    witnesses: list[TrustedKey] = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) != 3 or words[0] not in KINDS:
            raise TrustFileError(
                f"{where}, line {number}: expected `builder NAME KEY` or `witness NAME KEY`"
            )
        kind, name, key_text = words
        try:
            check_name(name)
            entry = TrustedKey(name, parse_key(key_text))
        except TrustFileError as e:
            raise TrustFileError(f"{where}, line {number}: {e}") from None
        same_kind = builders if kind == "builder" else witnesses
        for other in same_kind:
            if other.name == name or other.key == entry.key:
                raise TrustFileError(
                    f"{where}, line {number}: {kind} {name} repeats the name or key of "
                    f"{other.name}; each {kind} is listed once"
                )
        same_kind.append(entry)
    return TrustFile(tuple(builders), tuple(witnesses))


def read_trust_file(path: Path) -> TrustFile:
    """The trust file at `path`; a file that does not exist trusts nobody."""
    text = _read_text(path)
    return TrustFile() if text is None else parse_trust_file(text, str(path))


def add_entry(path: Path, kind: str, name: str, key: bytes) -> TrustedKey:
    """Append `kind name key` to the file (created if missing); refuses a repeated name or key."""
    if kind not in KINDS:
        raise TrustFileError(f"{kind!r} is neither builder nor witness")
    check_name(name)
    entry = TrustedKey(name, key)
    with _locked(path):
        text = _read_text(path)
        text = HEADER if text is None else text
        current = parse_trust_file(text, str(path))
        for other_kind, other in current.entries():
            if other_kind == kind and (other.name == name or other.key == key):
                raise TrustFileError(
                    f"{kind} {other.name} ({other.key.hex()[:16]}…) is already trusted; "
                    "remove it first to change it"
                )
        if text and not text.endswith("\n"):
            text += "\n"
        _write_atomically(path, text + f"{kind} {name} {key.hex()}\n")
    return entry


def remove_entry(path: Path, name_or_key: str, kind: str | None = None) -> list[tuple[str, str]]:
    """Drop the entries whose name (or key) is `name_or_key`; returns the (kind, name) dropped.

    Every other line, comments included, stays byte for byte.
    """
    with _locked(path):
        text = _read_text(path)
        if text is None:
            raise TrustFileError(f"there is no trust file at {path}")
        parse_trust_file(text, str(path))  # never edit a file we do not understand
        try:
            wanted_key = parse_key(name_or_key)
        except TrustFileError:
            wanted_key = None
        kept, removed = [], []
        for line in text.splitlines(keepends=True):
            words = line.split()
            if (
                len(words) == 3
                and words[0] in KINDS
                and (kind is None or words[0] == kind)
                and (words[1] == name_or_key or parse_key(words[2]) == wanted_key)
            ):
                removed.append((words[0], words[1]))
            else:
                kept.append(line)
        if not removed:
            raise TrustFileError(f"no {kind or 'builder or witness'} {name_or_key!r} in {path}")
        _write_atomically(path, "".join(kept))
    return removed


class TrustFileWatcher:
    """The trust file as it is now: re-read when it changes, the last good one kept.

    Every miss asks for the policy, so in an event loop the file is looked at (one stat) once
    per loop iteration, not once per call: a Guix batch is a thousand misses in a few
    iterations. Outside a loop every call looks.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._current = TrustFile()
        self._looked_this_iteration = False
        self.current()

    def current(self) -> TrustFile:
        if self._looked_this_iteration:
            return self._current
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            self._looked_this_iteration = True
            loop.call_soon(self._next_iteration)
        return self._look()

    def _next_iteration(self) -> None:
        self._looked_this_iteration = False

    def _look(self) -> TrustFile:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        except OSError as e:
            log.error("cannot look at the trust file %s: %s", self.path, e.strerror)
            return self._current
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._current = read_trust_file(self.path)
            except TrustFileError as e:
                log.error("%s; the previous trust file stays in force", e)
            else:
                log.info(
                    "trust file %s: %d builders, %d witnesses",
                    self.path,
                    len(self._current.builders),
                    len(self._current.witnesses),
                )
        return self._current


def _read_text(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TRUST_FILE_SIZE + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise TrustFileError(f"cannot read the trust file {path}: {e.strerror}") from None
    if len(raw) > MAX_TRUST_FILE_SIZE:
        raise TrustFileError(f"the trust file {path} is larger than 1 MiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TrustFileError(f"the trust file {path} is not UTF-8 text") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialize editors with an advisory lock on a file beside the trust file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / (path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomically(path: Path, text: str) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644  # public keys only: anyone on the machine may read whom it trusts
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
