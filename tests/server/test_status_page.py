"""The status page, rendered by a real browser (headless Chromium) from running nodes.

The test reads what the page's script filled in (the DOM after it ran), not the static HTML,
and keeps a screenshot in tests/artifacts/ (ignored by git) for a person to look at.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

from p2pcache.server.status_page import STATUS_PAGE
from tests.conftest import require_binary
from tests.integration.status_scenario import status_story

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


class TextById(HTMLParser):
    """The text inside each element that has an id (what the script writes into)."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str | None] = []
        self.text: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        if tag in ("meta", "br", "img", "input", "link"):
            return
        ident = dict(attrs).get("id")
        self.open.append(ident)
        if ident:
            self.text[ident] = ""

    def handle_endtag(self, tag):
        if self.open and tag not in ("meta", "br", "img", "input", "link"):
            self.open.pop()

    def handle_data(self, data):
        for ident in self.open:
            if ident:
                self.text[ident] += data


async def chromium(url: str, *action: str) -> str:
    """Run headless Chromium on `url` with a fresh profile; its stdout."""
    binary = require_binary("chromium", "chromium")
    with tempfile.TemporaryDirectory(prefix="p2pcache-chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            binary, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
            "--no-first-run", "--virtual-time-budget=5000", "--window-size=1200,1400",
            *action, url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


async def rendered(admin_url: str) -> dict[str, str]:
    dom = await chromium(admin_url, "--dump-dom")
    parser = TextById()
    parser.feed(dom)
    return {k: " ".join(v.split()) for k, v in parser.text.items()}


async def test_the_page_shows_what_the_node_is_doing(tmp_path, small_test_store):
    async with status_story(tmp_path, small_test_store) as story:
        node, seed = story.node, story.seed
        node_url = f"http://{node.config.admin_listen.host}:{node.admin_port}/"
        seed_url = f"http://{seed.config.admin_listen.host}:{seed.admin_port}/status"
        at_node = await rendered(node_url)
        at_seed = await rendered(seed_url)
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "status-page.png"
        screenshot.unlink(missing_ok=True)
        await chromium(node_url, f"--screenshot={screenshot}")
        status = await node.status()

    assert at_node["host"] == "test-node"
    assert at_node["node-id"] == node.network.identity.node_id.hex()
    assert at_node["hit-ratio"] == "33.3 %"
    assert (at_node["hits"], at_node["misses"]) == ("1", "2")
    assert at_node["peers-known"] == "1" and at_node["peers-banned"] == "0"
    assert seed.network.peer_url in at_node["peers"]
    assert story.fetched in at_node["transfers"]
    assert at_node["transfer-counts"] == "1 ok"
    assert at_node["failure-total"] == "0"
    assert status["endpoints"]["guix"] in at_node["endpoints"]
    assert re.fullmatch(r"\d+\.\d (KiB|MiB)", at_node["cache-size"])
    assert at_node["error"] == ""
    # The seed refused its damaged store item, and says so.
    assert story.damaged in at_seed["failures"] and "store_nar_hash" in at_seed["failures"]
    assert int(at_seed["failure-total"]) >= 1
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot of the status page: {screenshot}")


async def test_the_page_is_only_on_the_admin_listener(tmp_path, small_test_store):
    async with status_story(tmp_path, small_test_store) as story:
        node = story.node
        admin = f"http://{node.config.admin_listen.host}:{node.admin_port}/"
        guix = f"http://{node.config.listen.host}:{node.guix_port}/"
        peer = f"{node.network.peer_url}/"

        def get(url: str) -> tuple[int, bytes, dict]:
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    return r.status, r.read(), dict(r.headers)
            except urllib.error.HTTPError as e:
                return e.code, e.read(), dict(e.headers)

        answers = {url: await asyncio.to_thread(get, url) for url in (admin, guix, peer)}
    status, body, headers = answers[admin]
    assert status == 200 and body.decode() == STATUS_PAGE
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    for url in (guix, peer):
        assert b"p2pcache status" not in answers[url][1], url


def test_the_page_loads_nothing_from_elsewhere():
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", STATUS_PAGE)
    assert "@import" not in STATUS_PAGE and "url(" not in STATUS_PAGE
