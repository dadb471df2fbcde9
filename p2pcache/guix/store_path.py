"""Store paths: `/gnu/store/<32 nix32 chars>-<name>`, parsed, validated and computed.

The name rules are the daemon's `checkStoreName` (shared by Nix and Guix); the hash part is the
20-byte XOR-fold of a SHA-256 over a descriptor string (Nix's `makeStorePath`). The logical
store directory is a parameter everywhere, because tests and other installations keep a store
elsewhere while narinfos still say /gnu/store.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from p2pcache.errors import StorePathError
from p2pcache.guix import nix32

DEFAULT_STORE_DIR = "/gnu/store"
HASH_PART_LENGTH = 32
MAX_NAME_LENGTH = 211
_NAME_EXTRA_CHARS = frozenset("+-._?=")


def check_store_name(name: str) -> None:
    """Raise StorePathError unless `name` is a valid store path name (checkStoreName)."""
    if not name:
        raise StorePathError("store path name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise StorePathError(f"store path name is {len(name)} characters, more than 211")
    if name.startswith("."):
        raise StorePathError(f"store path name {name[:60]!r} starts with a dot")
    for c in name:
        if not (c.isascii() and (c.isalnum() or c in _NAME_EXTRA_CHARS)):
            raise StorePathError(f"store path name {name[:60]!r} contains forbidden {c!r}")


def check_hash_part(hash_part: str) -> None:
    """Raise StorePathError unless `hash_part` is exactly 32 nix-base32 characters."""
    if len(hash_part) != HASH_PART_LENGTH or not nix32.is_nix32(hash_part):
        raise StorePathError(f"store path hash {hash_part[:40]!r} is not 32 nix-base32 characters")


def check_store_dir(store_dir: str) -> None:
    """A store directory is absolute, has no trailing slash and no `.`/`..` components."""
    if (
        not store_dir.startswith("/")
        or store_dir != "/" + "/".join(p for p in store_dir.split("/") if p not in ("", ".", ".."))
        or store_dir == "/"
    ):
        raise StorePathError(f"store directory {store_dir!r} is not a clean absolute path")


@dataclass(frozen=True, slots=True)
class StorePath:
    """A validated store path, split into its parts."""

    store_dir: str
    hash_part: str
    name: str

    @property
    def basename(self) -> str:
        """`<hash>-<name>`, the form used in References, URLs and Deriver."""
        return f"{self.hash_part}-{self.name}"

    @property
    def path(self) -> str:
        return f"{self.store_dir}/{self.basename}"

    def __str__(self) -> str:
        return self.path


def parse_basename(basename: str, store_dir: str = DEFAULT_STORE_DIR) -> StorePath:
    """Parse `<hash>-<name>` (no directory) into a StorePath under `store_dir`."""
    hash_part, dash, name = basename.partition("-")
    if not dash:
        raise StorePathError(f"{basename[:80]!r} is not of the form <hash>-<name>")
    check_hash_part(hash_part)
    check_store_name(name)
    return StorePath(store_dir, hash_part, name)


def parse_store_path(path: str, store_dir: str = DEFAULT_STORE_DIR) -> StorePath:
    """Parse a full store path; it must lie directly under `store_dir`."""
    check_store_dir(store_dir)
    prefix = store_dir + "/"
    if not path.startswith(prefix):
        raise StorePathError(f"{path[:100]!r} is not under the store directory {store_dir}")
    basename = path[len(prefix) :]
    if "/" in basename:
        raise StorePathError(f"{path[:100]!r} is not directly under {store_dir}")
    return parse_basename(basename, store_dir)


def compress_hash(digest: bytes, size: int) -> bytes:
    """XOR-fold `digest` to `size` bytes: byte i goes into position i mod size (Nix)."""
    out = bytearray(size)
    for i, b in enumerate(digest):
        out[i % size] ^= b
    return bytes(out)


def make_store_path(
    type_: str, inner_sha256: bytes, name: str, store_dir: str = DEFAULT_STORE_DIR
) -> StorePath:
    """Nix's makeStorePath: hash of `<type>:sha256:<hex>:<store>:<name>`, folded to 20 bytes."""
    check_store_dir(store_dir)
    check_store_name(name)
    descriptor = f"{type_}:sha256:{inner_sha256.hex()}:{store_dir}:{name}"
    folded = compress_hash(hashlib.sha256(descriptor.encode()).digest(), 20)
    return StorePath(store_dir, nix32.encode(folded), name)


def source_store_path(
    nar_sha256: bytes,
    name: str,
    references: tuple[str, ...] = (),
    store_dir: str = DEFAULT_STORE_DIR,
) -> StorePath:
    """The store path of a tree added recursively by sha256 (`add-to-store`, type `source`).

    `references` are full store paths; each adds `:<path>` to the type, as the daemon does.
    """
    type_ = "source" + "".join(f":{ref}" for ref in references)
    return make_store_path(type_, nar_sha256, name, store_dir)
