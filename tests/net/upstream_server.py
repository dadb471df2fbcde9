"""A real upstream substitute server on 127.0.0.1 for the upstream tests, and items to serve.

`FakeUpstream` is an aiohttp server on a free port that answers from a table of paths and logs
every request path, so tests can check what was (and was not) fetched. Items are NARs of small
generated trees (`dump_nar`), compressed with real zstd and gzip, under narinfos signed with a
key made by p2pcache.guix.signing_key.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest
import zstandard
from aiohttp import web

from p2pcache.cache.nar_store import NarStore
from p2pcache.guix import nix32
from p2pcache.guix.nar import dump_nar
from p2pcache.guix.narinfo import NarURL, render_narinfo, render_signature_line, render_signed_part
from p2pcache.guix.narinfo_signature import signature_field
from p2pcache.guix.signing_key import GuixSecretKey, generate_key_pair
from p2pcache.net.upstream import UpstreamClient, UpstreamTimeouts

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HOST = "upstream.test"
SERVED = ("zstd", "gzip", "none")


class FakeUpstream:
    """An HTTP server answering GETs from `routes`; 404 for anything else."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.requests: list[str] = []
        self.released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def serve(
        self, path: str, body: bytes, *, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.Response(body=body, status=status, headers=headers)

        self.routes[path] = handler

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.serve(path, b"", status=status, headers={"Location": location})

    def hang_after(self, path: str, body: bytes, *, content_length: int | None = None) -> None:
        """Send headers and `body`, then neither more nor the end until the server stops."""

        async def handler(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            if content_length is not None:
                response.content_length = content_length
            await response.prepare(request)
            if body:
                await response.write(body)
            await self.released.wait()
            return response

        self.routes[path] = handler

    def drop_after(self, path: str, body: bytes, *, content_length: int) -> None:
        """Promise `content_length` bytes, send `body`, then close the connection."""

        async def handler(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            response.content_length = content_length
            await response.prepare(request)
            await response.write(body)
            assert request.transport is not None
            request.transport.close()
            return response

        self.routes[path] = handler

    def hang_before(self, path: str) -> None:
        """Accept the request and never answer (until the server stops)."""

        async def handler(request: web.Request) -> web.StreamResponse:
            await self.released.wait()
            return web.Response(status=503)

        self.routes[path] = handler

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        handler = self.routes.get(request.path)
        if handler is None:
            return web.Response(status=404, text=f"Resource not found: {request.path}")
        return await handler(request)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        self.released.set()
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass(frozen=True)
class Item:
    """A store item: its NAR and the names a narinfo gives it."""

    name: str
    nar: bytes

    @cached_property
    def hash_part(self) -> str:
        return nix32.encode(hashlib.sha256(self.name.encode()).digest()[:20])

    @property
    def basename(self) -> str:
        return f"{self.hash_part}-{self.name}"

    @property
    def store_path(self) -> str:
        return f"/gnu/store/{self.basename}"

    @cached_property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.nar).digest()

    @cached_property
    def zstd(self) -> bytes:
        # A streaming compressor, as guile-zstd writes: one frame without a content size.
        compressor = zstandard.ZstdCompressor(level=3).compressobj()
        return compressor.compress(self.nar) + compressor.flush()

    @cached_property
    def gzip(self) -> bytes:
        return gzip.compress(self.nar, compresslevel=3)

    def compressed(self, compression: str) -> bytes:
        return {"zstd": self.zstd, "gzip": self.gzip, "none": self.nar}[compression]

    def nar_url(self, compression: str) -> str:
        """The relative URL `guix publish` writes."""
        if compression == "none":
            return f"nar/{self.basename}"
        return f"nar/{compression}/{self.basename}"

    def signed_part(self, *, store_path: str | None = None, nar_size: int | None = None) -> bytes:
        return render_signed_part(
            store_path or self.store_path,
            "sha256:" + nix32.encode(self.sha256),
            len(self.nar) if nar_size is None else nar_size,
            [],
        )

    def file_size(self, compression: str) -> int:
        if compression in SERVED:
            return len(self.compressed(compression))
        return len(self.nar) // 3  # lzip and the like: never served, only listed

    def groups(self, compressions: Iterable[str]) -> list[NarURL]:
        return [NarURL(self.nar_url(c), c, self.file_size(c)) for c in compressions]

    def narinfo(
        self,
        key: GuixSecretKey,
        compressions: Iterable[str] = ("zstd",),
        *,
        groups: list[NarURL] | None = None,
        signed_part: bytes | None = None,
    ) -> bytes:
        """A narinfo in `guix publish`'s layout, signed with `key`."""
        signed = signed_part if signed_part is not None else self.signed_part()
        field = signature_field(signed, key, HOST)
        urls = groups if groups is not None else self.groups(compressions)
        return render_narinfo(signed, render_signature_line(field), urls)

    def publish(
        self, upstream: FakeUpstream, key: GuixSecretKey, compressions: Iterable[str] = ("zstd",)
    ) -> bytes:
        """Serve the narinfo and the NAR in each compression; returns the narinfo."""
        compressions = list(compressions)
        narinfo = self.narinfo(key, compressions)
        upstream.serve(f"/{self.hash_part}.narinfo", narinfo)
        for compression in compressions:
            if compression in SERVED:
                upstream.serve("/" + self.nar_url(compression), self.compressed(compression))
        return narinfo


def make_tree(root: Path, seed: int, size: int) -> None:
    """A small package-like tree: some incompressible bytes, some text, a symlink."""
    rng = random.Random(seed)
    (root / "bin").mkdir(parents=True)
    (root / "share" / "doc").mkdir(parents=True)
    binary = root / "bin" / "program"
    binary.write_bytes(rng.randbytes(size // 2))
    binary.chmod(0o555)
    words = [rng.randbytes(6).hex() for _ in range(500)]
    text = " ".join(rng.choice(words) for _ in range(size // 2 // 13)).encode()
    (root / "share" / "doc" / "README").write_bytes(text)
    (root / "bin" / "alias").symlink_to("program")


def make_item(root: Path, name: str, seed: int, size: int) -> Item:
    tree = root / name
    make_tree(tree, seed, size)
    out = io.BytesIO()
    dump_nar(tree, out)
    return Item(name, out.getvalue())


# --- fixtures (imported by the test modules) --------------------------------------------------


@pytest.fixture(scope="session", name="trusted_key")
def trusted_key_fixture() -> GuixSecretKey:
    return generate_key_pair()


@pytest.fixture(scope="session", name="item")
def item_fixture(tmp_path_factory: pytest.TempPathFactory) -> Item:
    """A NAR of about 2.6 MB: three protocol chunks."""
    return make_item(tmp_path_factory.mktemp("trees"), "hello-2.12", 1, 2_600_000)


@pytest.fixture(scope="session", name="small_item")
def small_item_fixture(tmp_path_factory: pytest.TempPathFactory) -> Item:
    return make_item(tmp_path_factory.mktemp("trees"), "tiny-1.0", 2, 20_000)


@pytest.fixture(name="upstream")
async def upstream_fixture():
    server = FakeUpstream()
    await server.start()
    yield server
    await server.stop()


TEST_TIMEOUTS = UpstreamTimeouts(connect=5.0, narinfo=5.0, read=5.0)


@pytest.fixture(name="client")
async def client_fixture():
    async with UpstreamClient(timeouts=TEST_TIMEOUTS) as upstream_client:
        yield upstream_client


@pytest.fixture(name="store")
def store_fixture(tmp_path: Path) -> NarStore:
    nar_store = NarStore(tmp_path / "nar")
    nar_store.prepare()
    return nar_store


def stored_nothing(store: NarStore) -> bool:
    """No cached NAR, and no temporary file left behind."""
    return not list(store.iter_names()) and not any(store.temps.rglob("*.part"))
