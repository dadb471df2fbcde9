"""Upstream substitute servers (ci.guix.gnu.org and the like) as the miss path's back-to-source.

Opt-in: a node talks to the servers its operator lists (`--upstream`) and to no other. What it
fetches is judged like everything else: `verify_upstream_narinfo` decides whether a narinfo may
be relayed, and the NAR is decompressed, re-cut into protocol chunks and committed only when
NarHash and NarSize match (`tee_into_cache`, `fetch_into_cache`).

It talks like `guix substitute` (spec §1.2) where that matters: `<cache-url>/<hash>.narinfo`
with a trailing slash on the cache URL handled, no redirect followed for a narinfo, redirects
followed for NARs, the next candidate URL tried when one fails. Everything is bounded: narinfo
bodies (MAX_NARINFO_SIZE, read incrementally and cut beyond), connect and read times
(`UpstreamTimeouts`), NAR redirects (5), and decompressed output (exactly NarSize, checked as
the bytes flow, see `nar_decompress`). NAR bytes are never all in memory.

Measured 2026-11-25 on the 2-core machine, a 200 MB NAR from an aiohttp server on loopback in
the same process, fetched, verified, re-cut and fsynced by `fetch_into_cache` (level 3, no
compression pool): zstd 168 MB/s, gzip 130 MB/s, none 137 MB/s of uncompressed NAR. The bake
alone (hash, cut, recompress, fsync) runs at 219 MB/s on that data; the rest is the server,
the download and the decompression sharing the two cores with it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from concurrent.futures import Executor
from dataclasses import dataclass

import aiohttp
import yarl

from p2pcache import __version__
from p2pcache.cache.baker import BakeResult
from p2pcache.cache.nar_store import NarStore
from p2pcache.guix.narinfo import MAX_NARINFO_SIZE
from p2pcache.guix.store_path import DEFAULT_STORE_DIR
from p2pcache.net.baking_tee import BakingTee
from p2pcache.net.bounded_body import BodyTooLarge, read_bounded
from p2pcache.net.nar_decompress import NarDecompressor, NarStreamError
from p2pcache.net.upstream_narinfo import (
    NarSource,
    Refusal,
    UpstreamError,
    UpstreamNarError,
    UpstreamNarinfo,
    UpstreamNarinfoError,
    UpstreamUnsupported,
    UpstreamVerdict,
    check_upstream_narinfo,
    nar_sources,
    narinfo_url,
    verify_upstream_narinfo,
)

__all__ = [
    "NarSource",
    "Refusal",
    "UpstreamClient",
    "UpstreamError",
    "UpstreamNarError",
    "UpstreamNarinfo",
    "UpstreamNarinfoError",
    "UpstreamTimeouts",
    "UpstreamUnsupported",
    "UpstreamVerdict",
    "verify_upstream_narinfo",
]

log = logging.getLogger(__name__)

# Guix follows NAR redirects (spec §1.2); five covers a mirror network's hops and ends a
# redirect loop early.
MAX_NAR_REDIRECTS = 5
# Body bytes asked for per read. aiohttp returns what it has, up to this; under load reads
# grow towards it, which keeps the per-read Python cost small.
NAR_READ_SIZE = 256 << 10
# At most this many connections to one upstream from a session we own: a relay should not
# look like a flood to ci.guix.gnu.org.
CONNECTIONS_PER_UPSTREAM = 8
# Guix sends no Accept-Encoding; asking for identity keeps a CDN from compressing a narinfo
# (which Guix could not read) or a NAR twice, and so keeps every size bound meaningful.
_HEADERS = {"User-Agent": f"p2pcache/{__version__}", "Accept-Encoding": "identity"}


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    """How long an upstream may take, in seconds (operators on slow links raise them)."""

    connect: float = 10.0
    """To get a connection: waiting for a free one in the pool, then TCP and TLS set-up."""
    narinfo: float = 20.0
    """A whole narinfo request; the miss path bounds its own wait on top of this."""
    read: float = 30.0
    """The longest silence inside a NAR download (no total: a NAR may take minutes)."""


class UpstreamClient:
    """Fetches narinfos and NARs from upstream substitute servers over one aiohttp session.

    Pass a session to share one (the caller closes it), or let `start()` create one that
    `stop()` closes; `async with UpstreamClient(...)` does both.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        store_dir: str = DEFAULT_STORE_DIR,
        timeouts: UpstreamTimeouts | None = None,
    ) -> None:
        self._session = session
        self._owns_session = session is None
        self.store_dir = store_dir
        self.timeouts = timeouts or UpstreamTimeouts()

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit_per_host=CONNECTIONS_PER_UPSTREAM),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )

    async def stop(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> UpstreamClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamClient used before start()")
        return self._session

    async def fetch_narinfo(self, upstream_url: str, hash_part: str) -> UpstreamNarinfo | None:
        """GET `<upstream>/<hash>.narinfo`: None on 404, the checked narinfo on 200.

        Any other status (redirects included: Guix does not follow them for narinfos), a
        timeout, a network error or an unusable narinfo raises UpstreamError.
        """
        url = narinfo_url(upstream_url, hash_part)
        timeout = aiohttp.ClientTimeout(total=self.timeouts.narinfo, connect=self.timeouts.connect)
        try:
            async with self._http().get(
                yarl.URL(url, encoded=True),
                allow_redirects=False,
                headers=_HEADERS,
                auto_decompress=False,
                timeout=timeout,
            ) as response:
                if response.status != 404 and (problem := _response_problem(response, "narinfo")):
                    raise UpstreamError(f"{url} {problem}", url=url)
                # A 404's body is read too (bounded), so that the connection can be reused.
                data = await _read_bounded(response, url)
                if response.status == 404:
                    return None
        except TimeoutError:
            raise UpstreamError(
                f"{url} did not answer within {self.timeouts.narinfo:g} s", url=url
            ) from None
        except aiohttp.ClientError as e:
            raise UpstreamError(f"cannot fetch {url}: {_describe(e)}", url=url) from None
        return check_upstream_narinfo(data, upstream_url, hash_part, store_dir=self.store_dir)

    async def fetch_nar(
        self, upstream_url: str, narinfo: UpstreamNarinfo
    ) -> AsyncGenerator[bytes, None]:
        """Yield the NAR of `narinfo`, uncompressed, exactly NarSize bytes, as it downloads.

        Candidates come from `nar_sources` (zstd, then gzip, then none; never lzip, xz or
        bzip2: UpstreamUnsupported). A candidate that fails before its first byte was
        yielded gives way to the next; after that, the error is raised. More bytes than
        NarSize raise UpstreamNarError at once; fewer raise it at the end. The bytes are not
        hashed here (see `tee_into_cache`).
        """
        sources = nar_sources(upstream_url, narinfo.narinfo)
        failures: list[UpstreamError] = []
        for number, source in enumerate(sources, 1):
            decompressor = NarDecompressor(source.compression, narinfo.nar_size)
            has_yielded = False
            try:
                # aclosing: a consumer that stops early closes the response now, not at GC.
                async with contextlib.aclosing(self._download(source, decompressor)) as pieces:
                    async for piece in pieces:
                        has_yielded = True
                        yield piece
                return
            except UpstreamError as e:
                if has_yielded:
                    raise
                failures.append(e)
                if number < len(sources):
                    log.warning("%s; trying the next URL", e, extra={"url": source.url})
        if len(failures) == 1:
            raise failures[0]
        raise UpstreamError(
            f"no URL of {narinfo.store_path} could be downloaded: "
            + "; ".join(str(f) for f in failures),
            url=narinfo.cache_url,
        )

    async def _download(
        self, source: NarSource, decompressor: NarDecompressor
    ) -> AsyncGenerator[bytes, None]:
        """One candidate: GET (following redirects), decompress, check the length."""
        url = source.url
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.timeouts.connect, sock_read=self.timeouts.read
        )
        try:
            async with self._http().get(
                yarl.URL(url, encoded=True),
                allow_redirects=True,
                max_redirects=MAX_NAR_REDIRECTS,
                headers=_HEADERS,
                auto_decompress=False,
                timeout=timeout,
            ) as response:
                if problem := _response_problem(response, "NAR"):
                    raise UpstreamError(f"download from {url} failed: {problem}", url=url)
                async for data in response.content.iter_chunked(NAR_READ_SIZE):
                    for piece in decompressor.feed(data):
                        yield piece
                decompressor.finish()
        except NarStreamError as e:
            raise UpstreamNarError(f"download from {url} failed: {e}", url=url) from None
        except TimeoutError:
            raise UpstreamError(
                f"download from {url} failed: no data for {self.timeouts.read:g} s "
                f"(or no connection within {self.timeouts.connect:g} s)",
                url=url,
            ) from None
        except aiohttp.TooManyRedirects:
            raise UpstreamError(
                f"download from {url} failed: more than {MAX_NAR_REDIRECTS} redirects", url=url
            ) from None
        except aiohttp.ClientError as e:
            raise UpstreamError(f"download from {url} failed: {_describe(e)}", url=url) from None

    def tee_into_cache(
        self,
        upstream_url: str,
        narinfo: UpstreamNarinfo,
        store: NarStore,
        *,
        level: int = 3,
        executor: Executor | None = None,
    ) -> BakingTee:
        """Download the NAR and bake it into `store`, passing every uncompressed chunk on.

        `async with client.tee_into_cache(...) as tee: async for chunk in tee: ...`, then
        `await tee.result()` for the BakeResult. The chunks flow before the hash is known;
        the iteration raises NarHashMismatch at its end if the bytes were wrong, and nothing
        is committed unless NarHash and NarSize match.
        """
        return BakingTee(
            self.fetch_nar(upstream_url, narinfo),
            store,
            narinfo.store_path.hash_part,
            expected_sha256=narinfo.nar_sha256,
            expected_size=narinfo.nar_size,
            what=f"{narinfo.store_path} from {upstream_url.rstrip('/')}",
            level=level,
            executor=executor,
        )

    async def fetch_into_cache(
        self,
        upstream_url: str,
        narinfo: UpstreamNarinfo,
        store: NarStore,
        *,
        level: int = 3,
        executor: Executor | None = None,
    ) -> BakeResult:
        """Download, verify and commit the NAR into `store`; the chunk table and summary."""
        async with self.tee_into_cache(
            upstream_url, narinfo, store, level=level, executor=executor
        ) as tee:
            async for _ in tee:
                pass
        return await tee.result()


def _response_problem(response: aiohttp.ClientResponse, what: str) -> str | None:
    """What is wrong with a response before its body is read, or None."""
    if response.status != 200:
        problem = f"answered {response.status} {response.reason or ''}".rstrip()
        if 300 <= response.status < 400 and what == "narinfo":
            problem += " (redirects are not followed for narinfos, as in Guix)"
        return problem
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return f"sent the {what} with Content-Encoding {encoding!r}, which Guix would not undo"
    return None


async def _read_bounded(response: aiohttp.ClientResponse, url: str) -> bytes:
    """The body, at most MAX_NARINFO_SIZE bytes; cut the moment it is longer."""
    declared = response.content_length
    if declared is not None and declared > MAX_NARINFO_SIZE:
        raise UpstreamNarinfoError(
            f"{url} announces a {declared}-byte narinfo, more than the {MAX_NARINFO_SIZE} allowed",
            url=url,
        )
    try:
        return await read_bounded(response.content, MAX_NARINFO_SIZE)
    except BodyTooLarge:
        raise UpstreamNarinfoError(
            f"{url} sent a narinfo of more than the {MAX_NARINFO_SIZE} bytes allowed",
            url=url,
        ) from None


def _describe(error: aiohttp.ClientError) -> str:
    return str(error) or type(error).__name__
