"""The admin listener (aiohttp): /metrics, health, the status page and the admin API.

The status API (/api/v1/status) is what `p2pcache status` and the status page (/) read.

Meant for this machine only (it binds to loopback by default). A Prometheus on another host
scrapes the separate metrics-only listener instead, which serves nothing but /metrics.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from p2pcache.errors import FormatError
from p2pcache.server.status_page import status_page

_NIX32_HASH = re.compile(r"[0-9a-df-np-sv-z]{32}")

StatusProvider = Callable[[], Awaitable[dict[str, Any]]]


Handler = Callable[[web.Request], Awaitable[web.Response]]


def metrics_handler(registry: CollectorRegistry) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle


def make_metrics_app(registry: CollectorRegistry) -> web.Application:
    """The metrics-only application (for `--metrics-listen`)."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    return app


def make_admin_app(
    registry: CollectorRegistry,
    status: StatusProvider,
    which: Callable[[str], Awaitable[list[dict[str, Any]]]] | None = None,
    challenge: Callable[[str], Awaitable[dict[str, Any]]] | None = None,
) -> web.Application:
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def status_json(request: web.Request) -> web.Response:
        return web.json_response(await status())

    async def which_json(request: web.Request) -> web.Response:
        drv_hash = request.match_info["hash"]
        if which is None or not _NIX32_HASH.fullmatch(drv_hash):
            return web.json_response({"error": "not a derivation hash"}, status=404)
        return web.json_response({"derivation": drv_hash, "holders": await which(drv_hash)})

    app.router.add_get("/", status_page)
    app.router.add_get("/status", status_page)

    async def challenge_json(request: web.Request) -> web.Response:
        """What trusted builders attest for the store item named by its basename."""
        if challenge is None:
            return web.json_response({"error": "this node has no peer network"}, status=404)
        try:
            return web.json_response(await challenge(request.match_info["basename"]))
        except FormatError as e:
            return web.json_response({"error": str(e)}, status=404)

    app.router.add_get("/healthz", health)
    app.router.add_get("/api/v1/challenge/{basename}", challenge_json)
    app.router.add_get("/api/v1/status", status_json)
    app.router.add_get("/api/v1/which/{hash}", which_json)
    return app


class AiohttpListener:
    """An aiohttp application on one address, with an explicit start/stop life cycle."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self._host, self._port = host, port
        self._site: web.TCPSite | None = None

    async def start(self) -> None:
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await self._site.start()

    @property
    def port(self) -> int:
        addresses = self._runner.addresses
        if not addresses:
            raise RuntimeError("listener is not started")
        return addresses[0][1]

    async def stop(self) -> None:
        await self._runner.cleanup()
