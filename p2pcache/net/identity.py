"""The node's Ed25519 identity: `identity.key` in the data directory.

The identity signs DHT records (and, later, node info, attestations and log checkpoints), and
the node's kademlia id is SHA-1 of its public key, so a node keeps the same place in the DHT
across restarts and anyone holding a record can tell which node id signed it.

File format (one line, ASCII): `p2pcache-ed25519-seed-v1 <64 lowercase hex digits>\\n`, the
32-byte Ed25519 seed (RFC 8032's secret key). Mode 0600. It is created once, atomically: a
temporary file born with mode 0600 is written and fsynced, then hard-linked to its final name
(a link, unlike a rename, never replaces a file that appeared meanwhile; if another process
won the race, its key is loaded), then the directory is fsynced.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

import nacl.signing

from p2pcache.errors import FormatError
from p2pcache.net.provider_record import node_id_of

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.key"
IDENTITY_MODE = 0o600
_HEADER = "p2pcache-ed25519-seed-v1"
_MAX_FILE_SIZE = 256  # the file is 90 bytes; anything much larger is not ours


class IdentityFormatError(FormatError):
    """identity.key does not hold a key in the format this module writes."""


@dataclass(frozen=True)
class NodeIdentity:
    """An Ed25519 key pair and the kademlia node id derived from it."""

    signing_key: nacl.signing.SigningKey = field(repr=False)
    public_key: bytes
    node_id: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeIdentity:
        """The identity whose 32-byte Ed25519 seed is `seed`."""
        signing_key = nacl.signing.SigningKey(seed)
        public_key = bytes(signing_key.verify_key)
        return cls(signing_key, public_key, node_id_of(public_key))

    @classmethod
    def generate(cls) -> NodeIdentity:
        """A fresh identity from the operating system's random source."""
        return cls.from_seed(secrets.token_bytes(32))

    @property
    def seed(self) -> bytes:
        return bytes(self.signing_key)


def render_identity(identity: NodeIdentity) -> bytes:
    """The identity.key file contents for `identity`."""
    return f"{_HEADER} {identity.seed.hex()}\n".encode("ascii")


def parse_identity(data: bytes) -> NodeIdentity:
    """Parse identity.key contents; raises IdentityFormatError if they are not ours."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise IdentityFormatError("the identity file is not ASCII text") from None
    parts = text.strip().split(" ")
    if len(parts) != 2 or parts[0] != _HEADER:
        raise IdentityFormatError(f"the identity file does not start with {_HEADER!r}")
    digits = parts[1]
    if len(digits) != 64 or digits.lower() != digits:
        raise IdentityFormatError("the identity seed is not 64 lowercase hex digits")
    try:
        seed = bytes.fromhex(digits)
    except ValueError:
        raise IdentityFormatError("the identity seed is not 64 lowercase hex digits") from None
    return NodeIdentity.from_seed(seed)


def load_or_create_identity(data_dir: str | os.PathLike[str]) -> NodeIdentity:
    """Load `<data_dir>/identity.key`, creating it (and the directory, 0700) if missing.

    Raises IdentityFormatError if the file exists but is not a valid identity: replacing it
    would silently give the node a new id and orphan everything it signed.
    """
    folder = Path(data_dir)
    path = folder / IDENTITY_FILE
    if not os.path.lexists(path):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        created = NodeIdentity.generate()
        if _create_exclusively(path, render_identity(created)):
            log.info("created a new node identity in %s (node id %s)", path, created.node_id.hex())
            return created
    return _load(path)


def _load(path: Path) -> NodeIdentity:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as error:
        raise IdentityFormatError(f"cannot open the identity file {path}: {error}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        data = f.read(_MAX_FILE_SIZE + 1)
    if not stat.S_ISREG(mode):
        raise IdentityFormatError(f"the identity file {path} is not a regular file")
    if len(data) > _MAX_FILE_SIZE:
        raise IdentityFormatError(f"the identity file {path} is too large to be one")
    if mode & 0o077:
        log.warning(
            "the identity file %s can be read by other users (mode %o); "
            "run chmod 600 on it: whoever reads it can sign as this node",
            path,
            stat.S_IMODE(mode),
        )
    try:
        return parse_identity(data)
    except IdentityFormatError as error:
        raise IdentityFormatError(f"{path}: {error}") from None


def _create_exclusively(path: Path, content: bytes) -> bool:
    """Write `content` to `path` atomically; False if `path` appeared meanwhile."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, IDENTITY_MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), IDENTITY_MODE)
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(path.parent)
    return True


def _fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
