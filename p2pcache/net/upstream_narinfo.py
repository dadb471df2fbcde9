"""Upstream narinfos, judged: is it the item asked for, may it be relayed, where is its NAR.

Pure functions and values (no I/O) for `upstream.UpstreamClient`, which fetches. A narinfo is
relayed only when a key in the node's Guix ACL signed it (Guix's own check, `verify_narinfo`),
in the layout whose signed part can be relayed byte for byte before the node's own URL groups
(DESIGN.md, "The trust model"), and when it offers a NAR we can decode.

NAR URLs are resolved as `guix substitute` resolves them (spec §2.2): absolute as is, relative
as `<cache-url>/<URL>`. The choice among them differs from Guix's on purpose: Guix orders by
FileSize, we order by how fast the NAR decodes into our chunks (zstd, then gzip, then none), and
we never fetch lzip (no decoder in the standard library or our dependencies), xz or bzip2
(`guix publish` writes neither). Issue 4: skip lzip-only items with a log line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import yarl

from p2pcache.errors import NarinfoFormatError, P2PCacheError, StorePathError
from p2pcache.guix.narinfo import Narinfo, NarURL, parse_nar_hash, parse_narinfo
from p2pcache.guix.narinfo_signature import SignatureStatus, verify_narinfo
from p2pcache.guix.signing_key import GuixPublicKey
from p2pcache.guix.store_path import (
    DEFAULT_STORE_DIR,
    StorePath,
    check_hash_part,
    parse_store_path,
)
from p2pcache.net.nar_decompress import SUPPORTED_COMPRESSIONS
from p2pcache.trust.narinfo_acceptance import NarinfoRejected, accept_relayed_narinfo

log = logging.getLogger(__name__)

# Guile's string->uri takes a string with a scheme as an absolute URI (RFC 3986 §3.1).
_HAS_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_UNSAFE_URL_CHARS = re.compile(r"[\x00-\x20\x7f]")


class UpstreamError(P2PCacheError):
    """An upstream substitute server failed us: unreachable, slow, or it answered wrongly."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class UpstreamNarinfoError(UpstreamError):
    """An upstream narinfo is unusable: unreadable, too big, or for another item or store."""


class UpstreamNarError(UpstreamError):
    """An upstream NAR stream is corrupt, or does not decompress to exactly NarSize bytes."""


class UpstreamUnsupported(UpstreamError):
    """An upstream offers an item only in compressions we do not decode (lzip, xz, bzip2)."""


@dataclass(frozen=True, slots=True)
class UpstreamNarinfo:
    """A narinfo as an upstream served it, with the fields a download needs checked."""

    cache_url: str
    """The upstream it came from, without a trailing slash (for logs and relative URLs)."""
    narinfo: Narinfo
    store_path: StorePath
    nar_sha256: bytes
    nar_size: int

    @property
    def raw(self) -> bytes:
        return self.narinfo.raw


@dataclass(frozen=True, slots=True)
class NarSource:
    """One place to download the NAR: an absolute URL and the compression it is in."""

    url: str
    compression: str
    file_size: int | None


class Refusal(StrEnum):
    """Why an upstream narinfo is not relayed."""

    SIGNATURE = "signature"
    OLD_LAYOUT = "old-layout"
    UNSIGNED_FIELDS = "unsigned-fields"
    """NarSize is outside the signed part (Guix does not require it there; a relay does)."""
    NO_USABLE_NAR = "no-usable-nar"
    """Only compressions we do not decode (lzip-only, say), or no URL at all."""


# accept_relayed_narinfo's reason words, as upstream refusals.
_REFUSALS = {
    "old-layout": Refusal.OLD_LAYOUT,
    "unsigned-fields": Refusal.UNSIGNED_FIELDS,
}


@dataclass(frozen=True, slots=True)
class UpstreamVerdict:
    """Whether an upstream narinfo may be relayed, and the reason as a sentence."""

    signature: SignatureStatus
    refusal: Refusal | None
    reason: str

    @property
    def is_accepted(self) -> bool:
        return self.refusal is None


def check_upstream_url(upstream_url: str) -> str:
    """The cache URL without trailing slashes; it must be an absolute http(s) URL."""
    url = upstream_url.rstrip("/")
    if not _is_fetchable(url):
        raise UpstreamError(
            f"upstream {upstream_url!r} is not an http:// or https:// URL", url=upstream_url
        )
    return url


def narinfo_url(upstream_url: str, hash_part: str) -> str:
    """`<cache-url>/<hash>.narinfo`; a trailing slash on the cache URL is handled, as in Guix."""
    check_hash_part(hash_part)
    return f"{check_upstream_url(upstream_url)}/{hash_part}.narinfo"


def resolve_nar_url(upstream_url: str, url: str) -> str:
    """A narinfo's URL as Guix resolves it: absolute as is, else `<cache-url>/<URL>`."""
    if _HAS_SCHEME.match(url):
        return url
    return f"{check_upstream_url(upstream_url)}/{url}"


def _is_fetchable(url: str) -> bool:
    if _UNSAFE_URL_CHARS.search(url):
        return False
    try:
        parsed = yarl.URL(url, encoded=True)
        # yarl reads the host (IDNA) and the port when asked: a bad one raises only here.
        host, _ = parsed.host, parsed.port
    except ValueError:  # UnicodeError (a host IDNA refuses) is one too
        return False
    return parsed.scheme in ("http", "https") and bool(host)


def check_upstream_narinfo(
    data: bytes, upstream_url: str, hash_part: str, *, store_dir: str = DEFAULT_STORE_DIR
) -> UpstreamNarinfo:
    """Parse narinfo bytes from `upstream_url` and check it describes the item asked for.

    StorePath must lie directly in `store_dir` (Guix drops any other narinfo) and carry the
    requested hash part (anything else is an upstream answering for another item); NarHash and
    NarSize must be usable, since the download is checked against them.
    """
    where = f"{upstream_url.rstrip('/')}/{hash_part}.narinfo"
    try:
        narinfo = parse_narinfo(data)
    except NarinfoFormatError as e:
        raise UpstreamNarinfoError(
            f"{where} is not a narinfo Guix could read: {e}", url=where
        ) from None
    if narinfo.store_path is None:
        raise UpstreamNarinfoError(f"{where} has no StorePath", url=where)
    try:
        store_path = parse_store_path(narinfo.store_path, store_dir)
    except StorePathError as e:
        raise UpstreamNarinfoError(f"{where} names an unusable StorePath: {e}", url=where) from None
    if store_path.hash_part != hash_part:
        raise UpstreamNarinfoError(
            f"{where} describes {store_path}, another item than the one asked for", url=where
        )
    try:
        nar_sha256 = parse_nar_hash(narinfo.nar_hash or "")
    except NarinfoFormatError as e:
        raise UpstreamNarinfoError(f"{where}: {e}", url=where) from None
    if not narinfo.nar_size:
        raise UpstreamNarinfoError(f"{where} has no usable NarSize", url=where)
    cache_url = upstream_url.rstrip("/")
    return UpstreamNarinfo(cache_url, narinfo, store_path, nar_sha256, narinfo.nar_size)


def verify_upstream_narinfo(
    narinfo: UpstreamNarinfo, acl_keys: Sequence[GuixPublicKey]
) -> UpstreamVerdict:
    """Decide whether an upstream narinfo may be relayed to Guix.

    The rules for any relayed narinfo are `accept_relayed_narinfo`'s (Guix's signature check
    against `acl_keys`, the current layout, NarSize signed, the requested item); on top of
    them an upstream narinfo must offer a compression we decode, so that a 200 for the
    narinfo is not followed by a NAR we cannot fetch.
    """
    parsed = narinfo.narinfo
    try:
        accept_relayed_narinfo(
            parsed.raw, narinfo.store_path.hash_part, list(acl_keys), narinfo.store_path.store_dir
        )
    except NarinfoRejected as e:
        status = verify_narinfo(parsed.raw, acl_keys)
        refusal = _REFUSALS.get(e.reason, Refusal.SIGNATURE)
        return UpstreamVerdict(status, refusal, str(e))
    if not parsed.urls:
        return UpstreamVerdict(SignatureStatus.VALID, Refusal.NO_USABLE_NAR, "it lists no NAR URL")
    if not preferred_groups(parsed):
        return UpstreamVerdict(
            SignatureStatus.VALID,
            Refusal.NO_USABLE_NAR,
            f"upstream offers it only as {_offers(parsed)}",
        )
    return UpstreamVerdict(
        SignatureStatus.VALID, None, "signed by a key in the Guix ACL, current layout"
    )


def preferred_groups(narinfo: Narinfo) -> list[NarURL]:
    """The URL groups we can decode, best first (zstd, gzip, none), in file order within one.

    Logs "skipping <path>: upstream offers it only as lzip" when the narinfo has URL groups
    but none we can decode.
    """
    rank = {name: i for i, name in enumerate(SUPPORTED_COMPRESSIONS)}
    groups = [g for g in narinfo.urls if g.compression in rank]
    if not groups and narinfo.urls:
        log.info(
            "skipping %s: upstream offers it only as %s",
            narinfo.store_path,
            _offers(narinfo),
            extra={"store_path": narinfo.store_path},
        )
    return sorted(groups, key=lambda g: rank[g.compression])


def _offers(narinfo: Narinfo) -> str:
    return ", ".join(dict.fromkeys(g.compression for g in narinfo.urls))


def nar_sources(upstream_url: str, narinfo: Narinfo) -> list[NarSource]:
    """Where to download the NAR, best first; raises when there is nowhere we can.

    Relative URLs resolve against `upstream_url`, the cache the narinfo came from. Absolute
    URLs other than http(s) are skipped (Guix would try them; nothing else is fetched here).
    """
    groups = preferred_groups(narinfo)
    if not groups:
        if narinfo.urls:
            raise UpstreamUnsupported(
                f"skipping {narinfo.store_path}: upstream offers it only as {_offers(narinfo)}",
                url=upstream_url,
            )
        raise UpstreamNarinfoError(
            f"the narinfo of {narinfo.store_path} from {upstream_url} has no URL", url=upstream_url
        )
    sources = []
    for group in groups:
        url = resolve_nar_url(upstream_url, group.url)
        if _is_fetchable(url):
            sources.append(NarSource(url, group.compression, group.file_size))
        else:
            log.info("ignoring NAR URL %r of %s: not http(s)", group.url[:200], narinfo.store_path)
    if not sources:
        raise UpstreamNarinfoError(
            f"no URL in the narinfo of {narinfo.store_path} from {upstream_url} is an http(s) URL",
            url=upstream_url,
        )
    return sources
