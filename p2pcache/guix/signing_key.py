"""Guix signing keys and ACLs: the files `guix archive` writes and reads (spec §3.2, §3.3).

A Guix key is a libgcrypt ECDSA key on the Ed25519 curve. The public key file holds
`(public-key (ecc (curve Ed25519) (q <32 bytes>)))`, the secret key file the same with head
`private-key` and `(d <scalar>)` after `q`, both printed in libgcrypt's advanced format
(`canonical-sexp->string`) and ending with LF. `q` is the standard 32-byte point encoding of
d·G; `d` a big-endian integer that libgcrypt draws with bit 255 clear, bit 254 set and the
low three bits clear.

The ACL (/etc/guix/acl) is `(acl (entry <public-key> (tag (guix import))) ...)`. Guix decides
whether a signature's key is authorized by comparing the embedded key with each entry as a
tree (`canonical-sexp->sexp`, then `equal?`), so a key only matches an entry of exactly the
same shape. p2pcache can only ever verify keys of the shape above, so `parse_acl` keeps
those entries and ignores the others (keys of other algorithms, or Ed25519 keys written with
extra elements or a 0x40-prefixed q): such an entry authorizes nothing here, where Guix would
go on to try the signature.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nacl import bindings as sodium

from p2pcache.errors import KeyFormatError, P2PCacheError, SexpError
from p2pcache.guix import ed25519_ecdsa
from p2pcache.guix.sexp import MAX_SEXP_SIZE, Sexp, find_token, parse_sexp, to_advanced

PUBLIC_KEY_FILE = "signing-key.pub"
SECRET_KEY_FILE = "signing-key.sec"
# Guix's modes: `guix archive --generate-key` writes with umask 0266 (secret 0400) and then
# makes the public key world-readable.
PUBLIC_KEY_MODE = 0o444
SECRET_KEY_MODE = 0o400

_CURVE = b"Ed25519"
_POINT_BYTES = 32
_PREFIXED_POINT = 0x40  # libgcrypt's "compressed Edwards point" prefix (decode_point)
_ACL_TAG: Sexp = (b"tag", (b"guix", b"import"))


class SigningKeyExistsError(P2PCacheError, FileExistsError):
    """Writing a key pair would replace an existing one."""


@dataclass(frozen=True, slots=True)
class GuixPublicKey:
    """A Guix (libgcrypt ECDSA/Ed25519) public key: the 32-byte encoding of the point Q."""

    q: bytes

    def __post_init__(self) -> None:
        if len(self.q) != _POINT_BYTES:
            raise KeyFormatError(f"an Ed25519 public key is 32 bytes, not {len(self.q)}")

    def to_sexp(self) -> Sexp:
        """`(public-key (ecc (curve Ed25519) (q …)))`, the only shape Guix matches (spec §3.3)."""
        return (b"public-key", (b"ecc", (b"curve", _CURVE), (b"q", self.q)))


@dataclass(frozen=True, slots=True)
class GuixSecretKey:
    """A Guix secret key: the scalar d (32 bytes, big-endian) and its public key."""

    d: bytes = field(repr=False)
    public: GuixPublicKey = field(init=False)

    def __post_init__(self) -> None:
        if len(self.d) != 32:
            raise KeyFormatError("a Guix secret scalar is stored as 32 big-endian bytes")
        try:
            q = ed25519_ecdsa.public_point(self.d)
        except P2PCacheError as e:
            raise KeyFormatError(f"unusable secret key: {e}") from None
        object.__setattr__(self, "public", GuixPublicKey(q))

    def to_sexp(self) -> Sexp:
        """`(private-key (ecc (curve Ed25519) (q …) (d …)))` as libgcrypt builds it.

        libgcrypt writes d with `%m` (signed, minimal length: no leading zero bytes, one zero
        byte before a first byte >= 0x80).
        """
        d = self.d.lstrip(b"\0")
        if d[0] & 0x80:
            d = b"\0" + d
        return (b"private-key", (b"ecc", (b"curve", _CURVE), (b"q", self.public.q), (b"d", d)))


def generate_key_pair(
    random_bytes: Callable[[int], bytes] = secrets.token_bytes,
) -> GuixSecretKey:
    """A new key drawn as libgcrypt's `nist_generate_key` does for Ed25519 (spec §3.2).

    32 random bytes, bit 255 cleared, bit 254 set, low three bits cleared: the same
    convention keeps RFC 6979 nonces identical to what libgcrypt derives from the key.

    A draw whose key files Guix could not read is thrown away and drawn again (about one in
    two thousand): libgcrypt prints an atom of printable Latin-1 bytes raw inside quotes, and
    Guix reads key files as UTF-8 text, which such bytes are not.
    """
    while True:
        raw = bytearray(random_bytes(32))
        raw[0] = (raw[0] & 0x7F) | 0x40
        raw[31] &= 0xF8
        key = GuixSecretKey(bytes(raw))
        if key_files_are_text(key):
            return key


def key_files_are_text(key: GuixSecretKey) -> bool:
    """Whether both key files are plain ASCII, so any UTF-8 reader (Guix) reads them back."""
    return render_secret_key(key).isascii() and render_public_key(key.public).isascii()


def render_public_key(key: GuixPublicKey) -> bytes:
    """The public key file, byte for byte as Guix writes signing-key.pub."""
    return to_advanced(key.to_sexp()).encode("latin-1")


def render_secret_key(key: GuixSecretKey) -> bytes:
    """The secret key file, byte for byte as Guix writes signing-key.sec."""
    return to_advanced(key.to_sexp()).encode("latin-1")


def _parse(data: bytes | str, what: str) -> tuple[Sexp, ...]:
    try:
        return parse_sexp(data)
    except SexpError as e:
        raise KeyFormatError(f"{what} is not a valid s-expression: {e}") from None


def _point(atom: Sexp, what: str) -> bytes:
    """A 32-byte q; libgcrypt also reads a 33-byte form prefixed with 0x40."""
    if isinstance(atom, bytes) and len(atom) == _POINT_BYTES + 1 and atom[0] == _PREFIXED_POINT:
        atom = atom[1:]
    if not isinstance(atom, bytes) or len(atom) != _POINT_BYTES:
        raise KeyFormatError(f"{what}: q is not a 32-byte Ed25519 point encoding")
    if not sodium.crypto_core_ed25519_is_valid_point(atom):
        raise KeyFormatError(f"{what}: q is not a point of the Ed25519 prime-order group")
    return atom


def _ecc_params(sexp: tuple[Sexp, ...], head: bytes, what: str) -> dict[bytes, Sexp]:
    """The (name value) pairs of `(head (ecc (curve Ed25519) (name value) …))`."""
    if len(sexp) != 2 or sexp[0] != head or not isinstance(sexp[1], tuple):
        raise KeyFormatError(f"{what} is not of the form ({head.decode()} (ecc …))")
    ecc = sexp[1]
    if not ecc or ecc[0] != b"ecc":
        raise KeyFormatError(f"{what} is not an ECC key (Guix keys are ECDSA on Ed25519)")
    params: dict[bytes, Sexp] = {}
    for item in ecc[1:]:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], bytes)):
            raise KeyFormatError(f"{what}: unexpected element in the ecc list")
        if item[0] in params:
            raise KeyFormatError(f"{what}: ({item[0].decode('latin-1')} …) appears twice")
        params[item[0]] = item[1]
    if params.get(b"curve") != _CURVE:
        raise KeyFormatError(f"{what} is not on the Ed25519 curve")
    return params


def public_key_from_sexp(sexp: tuple[Sexp, ...]) -> GuixPublicKey:
    """A public key from `(public-key (ecc (curve Ed25519) (q …)))` in any libgcrypt syntax."""
    params = _ecc_params(sexp, b"public-key", "public key")
    if set(params) != {b"curve", b"q"}:
        raise KeyFormatError("public key must hold exactly (curve Ed25519) and (q …)")
    return GuixPublicKey(_point(params[b"q"], "public key"))


def parse_public_key(data: bytes | str) -> GuixPublicKey:
    """Read a public key file (signing-key.pub), canonical or advanced syntax."""
    return public_key_from_sexp(_parse(data, "public key"))


def parse_secret_key(data: bytes | str) -> GuixSecretKey:
    """Read a secret key file (signing-key.sec); q, when present, must be d·G."""
    params = _ecc_params(_parse(data, "secret key"), b"private-key", "secret key")
    if not {b"curve", b"d"} <= set(params) <= {b"curve", b"q", b"d"}:
        raise KeyFormatError("secret key must hold (curve Ed25519), (d …) and optionally (q …)")
    d = params[b"d"]
    if not isinstance(d, bytes) or not d.lstrip(b"\0") or len(d.lstrip(b"\0")) > 32:
        raise KeyFormatError("secret key: d is not a non-zero integer of at most 32 bytes")
    key = GuixSecretKey(d.lstrip(b"\0").rjust(32, b"\0"))
    if b"q" in params and _point(params[b"q"], "secret key") != key.public.q:
        raise KeyFormatError("secret key: q does not match d (the file is corrupt)")
    return key


def parse_acl(data: bytes | str) -> list[GuixPublicKey]:
    """The keys an ACL file authorizes, or the key of a single public key file.

    Accepts what Guix's `current-acl`/`acl->public-keys` accept: `(acl (entry KEY (tag (guix
    import))) …)`, anything else being an "invalid access-control list". Entries whose KEY is
    not exactly `(public-key (ecc (curve Ed25519) (q <32 bytes>)))` are skipped (see the module
    docstring); `acl_entries` returns them all. Like the oracle's `load-acl`, a lone public
    key is taken as an ACL holding that key.
    """
    sexp = _parse(data, "access-control list")
    if sexp and sexp[0] == b"public-key":
        return [public_key_from_sexp(sexp)]
    keys = []
    for entry in _acl_entries(sexp):
        key = _canonical_public_key(entry)
        if key is not None:
            keys.append(key)
    return keys


def acl_entries(data: bytes | str) -> list[Sexp]:
    """Every key of an ACL as a tree, whatever its shape (for reporting skipped entries)."""
    return _acl_entries(_parse(data, "access-control list"))


def _acl_entries(sexp: tuple[Sexp, ...]) -> list[Sexp]:
    if not sexp or sexp[0] != b"acl":
        raise KeyFormatError("invalid access-control list: it does not start with (acl …)")
    entries = []
    for entry in sexp[1:]:
        if not (
            isinstance(entry, tuple)
            and len(entry) == 3
            and entry[0] == b"entry"
            and entry[2] == _ACL_TAG
        ):
            raise KeyFormatError(
                "invalid access-control list: every element must be "
                "(entry <public-key> (tag (guix import)))"
            )
        entries.append(entry[1])
    return entries


def _canonical_public_key(sexp: Sexp) -> GuixPublicKey | None:
    """The key if `sexp` is exactly `(public-key (ecc (curve Ed25519) (q <32 bytes>)))`."""
    q = find_token(sexp, b"q")
    if q is None or len(q) != 2 or not isinstance(q[1], bytes) or len(q[1]) != _POINT_BYTES:
        return None
    key = GuixPublicKey(q[1])
    return key if key.to_sexp() == sexp else None


def render_acl(keys: list[GuixPublicKey]) -> bytes:
    """An ACL authorizing `keys`, byte for byte as Guix's `write-acl` writes /etc/guix/acl."""
    acl = (b"acl", *((b"entry", key.to_sexp(), _ACL_TAG) for key in keys))
    return to_advanced(acl).encode("latin-1")


def write_key_pair(
    directory: str | os.PathLike[str], *, force: bool = False, key: GuixSecretKey | None = None
) -> GuixSecretKey:
    """Write signing-key.sec and signing-key.pub into `directory`; return the key.

    Generates a key unless one is given. Each file is written to a temporary name created with
    its final mode (the secret file is never readable by others, not even for an instant),
    fsynced and renamed into place, secret first, then the directory is fsynced. Without
    `force`, an existing key file is never replaced (the rename itself refuses to clobber).
    """
    key = key if key is not None else generate_key_pair()
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    targets = [
        (folder / SECRET_KEY_FILE, render_secret_key(key), SECRET_KEY_MODE),
        (folder / PUBLIC_KEY_FILE, render_public_key(key.public), PUBLIC_KEY_MODE),
    ]
    if not force:
        for path, _, _ in targets:
            if os.path.lexists(path):
                raise _exists(path)
    for path, content, mode in targets:
        _write_atomically(path, content, mode, replace=force)
    _fsync_directory(folder)
    return key


def load_key_pair(directory: str | os.PathLike[str]) -> GuixSecretKey:
    """Read signing-key.sec and check that signing-key.pub beside it is its public key."""
    folder = Path(directory)
    key = parse_secret_key(_read_bounded(folder / SECRET_KEY_FILE))
    public = parse_public_key(_read_bounded(folder / PUBLIC_KEY_FILE))
    if public != key.public:
        raise KeyFormatError(
            f"{folder / PUBLIC_KEY_FILE} is not the public key of {folder / SECRET_KEY_FILE}"
        )
    return key


def _exists(path: Path) -> SigningKeyExistsError:
    return SigningKeyExistsError(
        f"{path} already exists; refusing to replace a signing key (users who authorized it "
        "would reject what the new key signs). Use --force to replace it anyway."
    )


def _write_atomically(path: Path, content: bytes, mode: int, *, replace: bool) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, mode)  # born with its final mode (minus the umask)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)  # restore bits the umask removed, before any data
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)  # unlike rename, never replaces a file that appeared
            except FileExistsError:
                raise _exists(path) from None
    finally:
        temporary.unlink(missing_ok=True)


def _read_bounded(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(MAX_SEXP_SIZE + 1)
    if len(data) > MAX_SEXP_SIZE:
        raise KeyFormatError(f"{path} is larger than any Guix key file ({MAX_SEXP_SIZE} bytes)")
    return data


def _fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
