"""LAN discovery: advertise the Guix endpoint over mDNS/DNS-SD as `guix publish --advertise` does.

Guix's `guix publish --advertise` registers an Avahi service of type `_guix_publish._tcp` named
`guix-publish-HOSTNAME` on the port it serves, with no TXT records (guix/scripts/publish.scm,
`publish-service-type` and `service-name`; guix/avahi.scm). `guix-daemon --discover` browses
that type and adds `http://ADDRESS:PORT` of each server found to its substitute URLs. This
node advertises its Guix endpoint the same way, under the name `p2pcache-HOSTNAME`, so a
daemon with discovery on uses it with nothing to configure (it still needs the node's key
authorized, like any substitute server).

The service type breaks RFC 6763's rule for service names (no underscore after the leading
one), so python-zeroconf registers it only with `strict=False`. Off by default
(`lan.advertise`): multicast announcements leave by every interface and say where the node
is to the whole LAN.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

import ifaddr
from zeroconf import IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

log = logging.getLogger(__name__)

# What Guix advertises and browses (guix/scripts/publish.scm: publish-service-type).
SERVICE_TYPE = "_guix_publish._tcp.local."

# How long registering may take: zeroconf probes the name three times, 250 ms apart.
REGISTER_TIMEOUT = 10.0


def service_name(host_name: str) -> str:
    """The instance name: `p2pcache-HOST` (DNS-SD labels are at most 63 bytes)."""
    label = f"p2pcache-{host_name}".replace(".", "-")[:63]
    return f"{label}.{SERVICE_TYPE}"


def advertised_addresses(listen_host: str) -> list[str]:
    """The IPv4 addresses a LAN client can reach the endpoint at.

    A wildcard listener (0.0.0.0) is reachable at every address of every interface but
    loopback; a listener on one address is reachable at that address only.
    """
    address = ipaddress.ip_address(socket.gethostbyname(listen_host))
    if not address.is_unspecified:
        return [str(address)]
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback:
                found.append(ip.ip)
    return sorted(set(found))


class LanAdvertiser:
    """Registers the Guix endpoint as a `_guix_publish._tcp` service while the node runs."""

    def __init__(self, host_name: str, listen_host: str, port: int) -> None:
        self.name = service_name(host_name)
        self.listen_host = listen_host
        self.port = port
        self._zeroconf: AsyncZeroconf | None = None
        self._info: ServiceInfo | None = None

    async def start(self) -> None:
        addresses = await asyncio.to_thread(advertised_addresses, self.listen_host)
        if not addresses:
            log.warning(
                "LAN advertising is on, but the Guix endpoint listens on %s and this machine "
                "has no other address to advertise; nothing is advertised",
                self.listen_host,
            )
            return
        if all(ipaddress.ip_address(a).is_loopback for a in addresses):
            log.warning(
                "LAN advertising is on, but the Guix endpoint listens on %s, which other "
                "machines cannot reach; set guix_endpoint.listen to a LAN address or 0.0.0.0",
                self.listen_host,
            )
        self._info = ServiceInfo(
            SERVICE_TYPE,
            self.name,
            port=self.port,
            parsed_addresses=addresses,
            properties={},
        )
        self._zeroconf = AsyncZeroconf(ip_version=IPVersion.V4Only)
        try:
            registering = await self._zeroconf.async_register_service(
                self._info, allow_name_change=True, strict=False
            )
            await asyncio.wait_for(registering, REGISTER_TIMEOUT)
        except BaseException:
            await self._zeroconf.async_close()
            self._zeroconf = None
            raise
        log.info(
            "advertising the Guix endpoint on the LAN as %s (port %d at %s), as guix publish "
            "--advertise does; guix-daemon --discover=yes finds it",
            self._info.name,
            self.port,
            ", ".join(addresses),
        )

    async def stop(self) -> None:
        """Withdraw the service (a goodbye packet) and close the mDNS sockets."""
        if self._zeroconf is None:
            return
        if self._info is not None:
            try:
                await asyncio.wait_for(
                    self._zeroconf.async_unregister_service(self._info), REGISTER_TIMEOUT
                )
            except (TimeoutError, OSError) as e:
                log.info("could not withdraw the LAN advertisement cleanly: %s", e)
        await self._zeroconf.async_close()
        self._zeroconf = None
