"""Response bodies read whole and bounded, from a real server that sends them in pieces."""

import asyncio

import aiohttp
import pytest
from aiohttp import web

from p2pcache.net.bounded_body import BodyTooLarge, read_bounded
from tests.net.peer_servers import app_server


@pytest.fixture
async def pieces_server():
    """GET /<pieces>/<size>: `pieces` writes of `size` bytes each, 10 ms apart; with
    ?chunked, no Content-Length."""

    async def handler(request: web.Request) -> web.StreamResponse:
        pieces, size = int(request.match_info["pieces"]), int(request.match_info["size"])
        response = web.StreamResponse()
        if "chunked" in request.query:
            response.enable_chunked_encoding()
        else:
            response.content_length = pieces * size
        await response.prepare(request)
        for n in range(pieces):
            await response.write(bytes([65 + n % 26]) * size)
            await asyncio.sleep(0.01)
        return response

    app = web.Application()
    app.router.add_get("/{pieces}/{size}", handler)
    async with app_server(app, "127.0.24.1") as url, aiohttp.ClientSession() as session:
        yield url, session


@pytest.mark.parametrize("query", ["", "?chunked"])
async def test_a_body_in_pieces_is_read_to_its_end(pieces_server, query):
    url, session = pieces_server
    async with session.get(f"{url}/5/3000{query}") as response:
        body = await read_bounded(response.content, 15_000)
    assert body == b"".join(bytes([65 + n]) * 3000 for n in range(5))


@pytest.mark.parametrize("query", ["", "?chunked"])
async def test_reading_stops_past_the_bound(pieces_server, query):
    url, session = pieces_server
    async with session.get(f"{url}/5/3000{query}") as response:
        with pytest.raises(BodyTooLarge, match="more than 14999 bytes"):
            await read_bounded(response.content, 14_999)


async def test_an_empty_body_is_empty(pieces_server):
    url, session = pieces_server
    async with session.get(f"{url}/0/10") as response:
        assert await read_bounded(response.content, 10) == b""
