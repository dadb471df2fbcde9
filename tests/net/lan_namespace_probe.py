"""Run inside a fresh network namespace (see test_lan_advertiser.py): a node advertising its Guix
endpoint over mDNS, and a browser that must find it. Prints one JSON line with what each saw.

Not a test module itself: the test starts it under `unshare` so that multicast stays on the
namespace's own loopback and never reaches a real network.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from p2pcache.config import Config, ListenAddress
from p2pcache.net.lan_advertiser import SERVICE_TYPE
from p2pcache.node import Node

BROWSE_TIMEOUT = 15.0


def loopback_with_multicast() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "link", "set", "lo", "multicast", "on"], check=True)
    # Multicast to 224.0.0.251 must go out by lo, the namespace's only interface.
    subprocess.run(["ip", "route", "add", "224.0.0.0/4", "dev", "lo"], check=True)


async def browse() -> list[dict]:
    """Browse `_guix_publish._tcp` as guix-daemon --discover does, and resolve what appears."""
    zeroconf = AsyncZeroconf(ip_version=IPVersion.V4Only)
    found: asyncio.Queue[str] = asyncio.Queue()

    def changed(zeroconf, service_type, name, state_change):
        if state_change is ServiceStateChange.Added:
            found.put_nowait(name)

    browser = AsyncServiceBrowser(zeroconf.zeroconf, [SERVICE_TYPE], handlers=[changed])
    try:
        name = await asyncio.wait_for(found.get(), BROWSE_TIMEOUT)
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(zeroconf.zeroconf, 3000):
            raise RuntimeError(f"{name} was browsed but could not be resolved")
        return [
            {
                "name": info.name,
                "addresses": info.parsed_addresses(),
                "port": info.port,
                "properties": {k.decode(): v for k, v in info.properties.items()},
            }
        ]
    finally:
        await browser.async_cancel()
        await zeroconf.async_close()


async def main() -> None:
    loopback_with_multicast()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        config = Config(
            data_dir=data / "node",
            store_root=data / "no-store",
            db=data / "no-db.sqlite",
            listen=ListenAddress("127.0.0.1", 0),
            admin_listen=ListenAddress("127.0.0.1", 0),
            peer_listen=ListenAddress("127.0.0.1", 0),
            dht_listen=None,
            guix_acl=data / "no-acl",
            host_name="lan-test",
            lan_advertise=True,
        )
        node = Node(config)
        await node.start()
        try:
            services = await browse()
            result = {"guix_port": node.guix_port, "services": services}
        finally:
            await node.stop()
        result["after_stop"] = node.lan_advertiser._zeroconf is None
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
