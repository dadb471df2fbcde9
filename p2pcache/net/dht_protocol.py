"""The Kademlia RPCs over UDP, hardened: nothing a peer sends can raise into a lookup.

kademlia's KademliaProtocol (on rpcudp) answers PING, STORE, FIND_NODE and FIND_VALUE (paper
§2.3) and keeps the routing table up to date with every message (§2.2). As shipped it trusts
its input: a malformed datagram raises in a task, a malformed reply raises out of `get()`, an
inbound STORE of any size and key is kept, a reply with 500 fake contacts stalls a lookup for
minutes, and there is no rate limit. This subclass keeps the wire format (a stock node talks
to it unchanged) and:

* handles each datagram synchronously in `datagram_received`, inside one try/except: a
  hostile datagram is counted and dropped, never raised, and costs no task;
* drops datagrams over 8,256 bytes (rpcudp's senders refuse more than 8,192 bytes of msgpack),
  rate-limits requests per source IP, and drops requests whose arguments are not the shapes
  the RPC takes (20-byte ids and keys); a STORE of a value that is not an acceptable
  p2pcache value (not bytes, over 8,000 bytes, no valid record) is answered False;
* accepts a reply only from the address the request went to, and sanitizes it before any
  caller sees it: a contact list is cut to k entries, each a 20-byte id, a usable IP address
  and port, or dropped; a value must be bytes; anything else counts as no answer;
* uses a short, configurable RPC timeout (default 1.5 s, rpcudp's is 5 s), and never
  leaves a cancelled call behind (rpcudp's `_timeout` raises on a cancelled future);
* removes a contact only when it is stale (paper §4.1), not at its first unanswered RPC
  (kademlia's `handle_call_response` does that): a burst of lookups whose replies the
  kernel dropped once emptied a node's whole routing table (loadtest/RESULTS.md, "A
  pipelined batch of 1000 misses"), and the node was blind until someone contacted it;
* passes STOREs to ProviderStorage.merge with the sender's address (for per-source quotas);
* fixes `welcome_if_new` (paper §2.5, handing keys to a node that joins close to them): it
  used the digest of an already-digested key (wrong distance) and scanned every stored key
  for every new contact; here it is rate-limited and looks only at the keys nearest to the
  newcomer;
* adds `store_many`, a STORE of several keys in one datagram (protocol/dht.md), which the
  grouped announcer uses; a stock node ignores it, and the caller then falls back to STORE.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from rpcudp.protocol import RPCProtocol

from p2pcache.net.dht_routing import BoundedRoutingTable, ContactLimits
from p2pcache.net.dht_stats import DHTStats
from p2pcache.net.dht_storage import ProviderStorage
from p2pcache.net.msgpack_codec import MsgpackError, pack, unpack
from p2pcache.net.provider_record import KEY_SIZE, MAX_VALUE_SIZE
from p2pcache.net.rate_limit import PerSourceLimiter, TokenBucket

log = logging.getLogger(__name__)

# rpcudp senders refuse requests over 8,192 bytes of msgpack; with the 21-byte header and
# some slack, anything larger did not come from a well-behaved node.
MAX_DATAGRAM_SIZE = 8256
MAX_REQUEST_SIZE = 8192
# Keys one store_many request may carry (each entry is also bounded by the datagram size).
MAX_BATCH_ENTRIES = 64
_REQUEST, _RESPONSE = 0x00, 0x01

REQUESTS_PER_SECOND_PER_IP = 500.0
"""Requests per second one IP address may send a node (on average).

What an honest peer sends: on a network smaller than k (20) nodes, every lookup asks every
node, so a Guix batch of 1000 narinfo misses sends each node about 1000 FIND_VALUEs within
the second or two the asking node needs for them (it is CPU-bound at about 500 misses a
second, loadtest/RESULTS.md); on a larger network a node is asked only by lookups of keys
near it, a fraction of that. The old 100/s (burst 200) refused 75 % of such a batch. 500/s
sustains an asker at its full pace; what it still stops: one source costs a node at most
500 requests' handling a second (a few % of a core), and a node used as a reflector (a
spoofed source address) sends that victim at most 500 replies of under 1 KB a second."""
REQUEST_BURST_PER_IP = 2000.0
"""Requests one IP address may send at once: a whole batch of 1000 lookups, twice (two Guix
batches back to back), before the per-second rate applies."""


@dataclass(frozen=True)
class ProtocolConfig:
    """Everything the protocol can be tuned with; defaults suit a WAN node."""

    ksize: int = 20
    # A live peer answers within a few round trips; waiting longer only delays lookups that
    # happened to ask a dead node (the stock 5 s added 5 s per dead contact per round).
    rpc_timeout: float = 1.5
    # Requests a single IP may send per second, and at once. See REQUESTS_PER_SECOND_PER_IP.
    requests_per_second_per_ip: float = REQUESTS_PER_SECOND_PER_IP
    request_burst_per_ip: float = REQUEST_BURST_PER_IP
    # Paper §4.1: a contact that failed this many RPCs in a row is stale. A stale contact is
    # removed when a replacement is waiting in its bucket, or once it has been failing for
    # `stale_seconds` (a node gone for good leaves even a bucket nobody else wants).
    stale_after_failures: int = 5
    stale_seconds: float = 60.0
    max_tracked_sources: int = 4096
    contact_limits: ContactLimits = field(default_factory=ContactLimits)
    # Paper §2.5 key handoff to newly seen nodes: scans per second, and keys looked at each
    # (the keys nearest the newcomer). Owners re-announce anyway; this only shortens the time
    # a newcomer close to a key does not hold it.
    welcome_scans_per_second: float = 1.0
    welcome_scan_burst: float = 5.0
    welcome_keys_per_scan: int = 16


@dataclass(frozen=True, slots=True)
class FindReply:
    """A sanitized FIND_NODE / FIND_VALUE answer (or the absence of one)."""

    answered: bool
    contacts: tuple[Node, ...] = ()
    value: bytes | None = None


class RoundTripEstimator:
    """Smoothed round-trip time and its variation (RFC 6298's estimator, in seconds)."""

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0

    def observe(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def patience(self, floor: float, ceiling: float) -> float:
        """How long an answer may reasonably take (2·SRTT + 4·RTTVAR), within [floor, ceiling]."""
        if self.srtt is None:
            return ceiling
        return min(ceiling, max(floor, 2 * self.srtt + 4 * self.rttvar))


class _BadArguments(Exception):
    """A request's arguments are not what its RPC takes."""


class DHTProtocol(KademliaProtocol):
    """KademliaProtocol with validated input, sanitized replies, limits and store_many."""

    def __init__(
        self,
        source_node: Node,
        storage: ProviderStorage,
        config: ProtocolConfig | None = None,
        stats: DHTStats | None = None,
    ) -> None:
        self.config = config or ProtocolConfig()
        RPCProtocol.__init__(self, wait_timeout=self.config.rpc_timeout)
        self.stats = stats or DHTStats()
        self.source_node = source_node
        self.storage = storage
        self.ksize = self.config.ksize
        self.router = BoundedRoutingTable(
            self, self.ksize, source_node, self.config.contact_limits, self.stats
        )
        self.rtt = RoundTripEstimator()
        self._loop = asyncio.get_running_loop()
        self._limiter = PerSourceLimiter(
            self.config.requests_per_second_per_ip,
            self.config.request_burst_per_ip,
            self.config.max_tracked_sources,
        )
        self._welcome_budget = TokenBucket(
            self.config.welcome_scans_per_second,
            self.config.welcome_scan_burst,
            self._loop.time(),
        )
        self._outstanding: dict[bytes, tuple[asyncio.Future, asyncio.TimerHandle, tuple]] = {}
        # Unanswered RPCs in a row per contact, and when the first of them was sent back.
        self._failures: dict[bytes, tuple[int, float]] = {}
        self._background: set[asyncio.Future] = set()
        self._handlers: dict[str, Callable[[tuple, list], Any]] = {
            "ping": self._rpc_ping,
            "stun": self._rpc_stun,
            "store": self._rpc_store,
            "store_many": self._rpc_store_many,
            "find_node": self._rpc_find_node,
            "find_value": self._rpc_find_value,
        }

    # -- receiving -----------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        """Handle one datagram now; whatever it contains, count it and never raise."""
        stats = self.stats
        stats.datagrams_received += 1
        stats.bytes_received += len(data)
        try:
            reason = self._handle_datagram(data, addr)
        except Exception:
            log.debug("dropped a DHT datagram from %s: handling it failed", addr, exc_info=True)
            reason = "error"
        if reason is not None:
            stats.datagrams_dropped[reason] += 1

    def _handle_datagram(self, data: bytes, addr: tuple) -> str | None:
        if len(data) > MAX_DATAGRAM_SIZE:
            return "oversize"
        if len(data) < 22:
            return "short"
        kind, msg_id = data[0], data[1:21]
        if kind == _RESPONSE:
            return self._accept_reply(msg_id, data[21:], addr)
        if kind != _REQUEST:
            return "unknown_type"
        if not self._limiter.allow(addr[0], self._loop.time()):
            return "rate_limited"
        try:
            request = unpack(data[21:])
        except MsgpackError:
            return "malformed"
        if (
            not isinstance(request, list)
            or len(request) != 2
            or not isinstance(request[0], str)
            or not isinstance(request[1], list)
        ):
            return "malformed"
        name, args = request
        handler = self._handlers.get(name)
        if handler is None:
            return "unknown_rpc"
        try:
            response = handler(addr, args)
        except _BadArguments:
            return "bad_arguments"
        self.stats.rpcs_received[name] += 1
        encoded = response.data if isinstance(response, Packed) else pack(response)
        self._send(b"\x01" + msg_id + encoded, addr)
        return None

    def _accept_reply(self, msg_id: bytes, payload: bytes, addr: tuple) -> str | None:
        entry = self._outstanding.get(msg_id)
        if entry is None:
            return "unsolicited"
        future, timer, (address, sent_at) = entry
        if tuple(addr[:2]) != address:
            return "wrong_source"
        del self._outstanding[msg_id]
        timer.cancel()
        try:
            data = unpack(payload)
        except MsgpackError:
            data = _MALFORMED
        if not future.done():
            self.rtt.observe(self._loop.time() - sent_at)
            future.set_result((data is not _MALFORMED, None if data is _MALFORMED else data))
        return None if data is not _MALFORMED else "malformed"

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is closed: every pending call ends now, unanswered."""
        for future, timer, _ in self._outstanding.values():
            timer.cancel()
            if not future.done():
                future.set_result((False, None))
        self._outstanding.clear()

    def error_received(self, exc: Exception) -> None:
        log.debug("the DHT socket reported an error: %s", exc)

    # -- request handlers (paper §2.3) ---------------------------------------------------------

    def _sender(self, addr: tuple, node_id: object) -> Node:
        _check_id(node_id)
        return Node(node_id, addr[0], addr[1])

    def _rpc_ping(self, addr: tuple, args: list) -> bytes:
        _check_arity(args, 1)
        self.welcome_if_new(self._sender(addr, args[0]))
        return self.source_node.id

    def _rpc_stun(self, addr: tuple, args: list) -> list:
        _check_arity(args, 0)
        return list(addr[:2])

    def _rpc_store(self, addr: tuple, args: list) -> bool:
        _check_arity(args, 3)
        sender = self._sender(addr, args[0])
        key = args[1]
        _check_id(key)
        self.welcome_if_new(sender)
        # A value that is not a p2pcache value (a stock node may store an int, a string…) is
        # answered with False rather than dropped, so its sender does not wait for a timeout.
        return self.storage.merge(key, args[2], source=addr[0]).is_accepted

    def _rpc_store_many(self, addr: tuple, args: list) -> list[bool]:
        _check_arity(args, 2)
        sender = self._sender(addr, args[0])
        entries = args[1]
        if not isinstance(entries, list) or len(entries) > MAX_BATCH_ENTRIES:
            raise _BadArguments
        for entry in entries:
            if not isinstance(entry, list) or len(entry) != 2:
                raise _BadArguments
            _check_id(entry[0])
        self.welcome_if_new(sender)
        source = addr[0]
        return [self.storage.merge(key, value, source).is_accepted for key, value in entries]

    def _rpc_find_node(self, addr: tuple, args: list) -> Packed:
        _check_arity(args, 2)
        sender = self._sender(addr, args[0])
        _check_id(args[1])
        self.welcome_if_new(sender)
        return self._neighbours(args[1], sender)

    def _rpc_find_value(self, addr: tuple, args: list) -> Packed | dict:
        _check_arity(args, 2)
        sender = self._sender(addr, args[0])
        _check_id(args[1])
        self.welcome_if_new(sender)
        value = self.storage.get(args[1])
        if value is None:
            return self._neighbours(args[1], sender)
        return {"value": value}

    def _neighbours(self, key: bytes, sender: Node) -> Packed:
        neighbours = self.router.find_neighbors(Node(key), self.ksize, exclude=sender)
        return Packed(pack_contacts(neighbours))

    # The stock names, for anything that calls them directly: same validation.
    def rpc_ping(self, sender: tuple, nodeid: bytes) -> bytes:
        return self._rpc_ping(sender, [nodeid])

    def rpc_store(self, sender: tuple, nodeid: bytes, key: bytes, value: bytes) -> bool:
        return self._rpc_store(sender, [nodeid, key, value])

    def rpc_find_node(self, sender: tuple, nodeid: bytes, key: bytes) -> list:
        return unpack(self._rpc_find_node(sender, [nodeid, key]).data)  # type: ignore[return-value]

    def rpc_find_value(self, sender: tuple, nodeid: bytes, key: bytes) -> list | dict:
        found = self._rpc_find_value(sender, [nodeid, key])
        return unpack(found.data) if isinstance(found, Packed) else found  # type: ignore[return-value]

    # -- routing table upkeep (paper §2.2, §2.5) -------------------------------------------------

    def welcome_if_new(self, node: Node) -> None:
        """Note a contact we heard from; hand a newcomer the keys it is now responsible for."""
        if node.id == self.source_node.id:
            return
        router = self.router
        is_new = not router.buckets[router.get_bucket_for(node)].knows(node)
        if not router.add_contact(node) or not is_new:
            return
        if self.storage.key_count and self._welcome_budget.allow(self._loop.time()):
            self._hand_over(node)

    def _hand_over(self, newcomer: Node) -> None:
        """Paper §2.5: store on the newcomer each nearby key for which it is among the k
        closest nodes and this node is the closest (so only one node sends it). Only a
        newcomer within this node's own neighbourhood (its k closest contacts) is looked at:
        keys this node is closest to lie around it."""
        own, newcomer_id = self.source_node.long_id, newcomer.long_id
        if own ^ newcomer_id > self.router.neighbourhood_radius():
            return  # not a neighbour: the keys this node is closest to are not its business
        others = [c.long_id for c in self.router.contacts() if c.id != newcomer.id]
        entries = []
        for key in self.storage.keys_near(newcomer.id, self.config.welcome_keys_per_scan):
            key_int = int.from_bytes(key, "big")
            distances = [other ^ key_int for other in others]
            if distances and min(distances) < own ^ key_int:
                continue  # another known node is closer: it hands the key over, not us
            newcomer_distance = newcomer_id ^ key_int
            closer = sum(1 for d in distances if d < newcomer_distance)
            if closer + ((own ^ key_int) < newcomer_distance) >= self.ksize:
                continue  # the newcomer is not among the k closest (this node included)
            value = self.storage.handoff_value(key)
            if value is not None:
                entries.append((key, value))
        for batch in pack_store_batches(entries):
            self.keep_alive(asyncio.ensure_future(self.call_store_many(newcomer, batch)))

    def handle_call_response(self, result: tuple, node: Node) -> tuple:
        """After a call: an answer refreshes the contact (paper §2.2); silence counts
        against it, and only a stale contact is removed (paper §4.1)."""
        if not result[0]:
            self.stats.rpc_timeouts += 1
            self._note_failure(node)
        else:
            self._failures.pop(node.id, None)
            self.welcome_if_new(node)
        return result

    def _note_failure(self, node: Node) -> None:
        """One more unanswered RPC for `node`; remove it from the table if that makes it
        stale and either a replacement waits in its bucket or it has been failing long."""
        router = self.router
        bucket = router.buckets[router.get_bucket_for(node)]
        if node.id not in bucket.nodes:
            self._failures.pop(node.id, None)  # not (or no longer) a contact: nothing to judge
            return
        now = self._loop.time()
        count, since = self._failures.get(node.id, (0, now))
        count += 1
        config = self.config
        if count >= config.stale_after_failures and (
            bucket.replacement_nodes or now - since >= config.stale_seconds
        ):
            self._failures.pop(node.id, None)
            router.remove_contact(node)
            self.stats.contacts_evicted += 1
            return
        if len(self._failures) >= _MAX_TRACKED_FAILURES:
            self._failures = {
                i: f for i, f in self._failures.items() if i in router.members.contacts
            }
        self._failures[node.id] = (count, since)

    def heard_from(self, node: Node) -> None:
        """`node` answered outside a call (e.g. a bootstrap ping): it is live again."""
        self._failures.pop(node.id, None)
        self.router.add_contact(node)

    def live_contacts(self) -> int:
        """Contacts in the routing table that are not stale (paper §4.1)."""
        threshold = self.config.stale_after_failures
        contacts = self.router.members.contacts
        stale = sum(
            1 for i, (count, _) in self._failures.items() if count >= threshold and i in contacts
        )
        return len(contacts) - stale

    # -- calling -------------------------------------------------------------------------------

    def _send(self, payload: bytes, address: tuple) -> None:
        self.stats.datagrams_sent += 1
        self.stats.bytes_sent += len(payload)
        try:
            self.transport.sendto(payload, address)
        except (OSError, AttributeError) as error:
            log.debug("could not send a datagram to %s: %s", address, error)

    def _request(self, address: tuple, name: str, *args: Any) -> asyncio.Future:
        """Send one request; the future resolves to (answered, raw reply)."""
        future = self._loop.create_future()
        payload = pack([name, list(args)])
        if len(payload) > MAX_REQUEST_SIZE or self.transport is None:
            future.set_result((False, None))
            return future
        msg_id = os.urandom(20)
        timer = self._loop.call_later(self._wait_timeout, self._timeout, msg_id)
        key = (address[0], address[1])
        self._outstanding[msg_id] = (future, timer, (key, self._loop.time()))
        self.stats.rpcs_sent[name] += 1
        self._send(b"\x00" + msg_id + payload, key)
        return future

    def _timeout(self, msg_id: bytes) -> None:
        entry = self._outstanding.pop(msg_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result((False, None))

    async def ping(self, address: tuple, nodeid: bytes) -> tuple[bool, Any]:
        """PING an address (as rpcudp's dynamic `ping` did): (answered, id or None)."""
        answered, reply = await self._request(address, "ping", nodeid)
        if answered and isinstance(reply, bytes) and len(reply) == KEY_SIZE:
            return True, reply
        return False, None

    async def call_ping(self, node_to_ask: Node) -> tuple[bool, Any]:
        result = await self.ping((node_to_ask.ip, node_to_ask.port), self.source_node.id)
        if result[0] and result[1] != node_to_ask.id:
            result = (False, None)  # someone else answers at that address now
        return self.handle_call_response(result, node_to_ask)

    async def call_store(self, node_to_ask: Node, key: bytes, value: bytes) -> tuple[bool, Any]:
        answered, reply = await self._request(
            (node_to_ask.ip, node_to_ask.port), "store", self.source_node.id, key, value
        )
        self.stats.store_rpcs += 1
        return self.handle_call_response((answered, reply is True), node_to_ask)

    async def call_store_many(
        self, node_to_ask: Node, entries: Sequence[tuple[bytes, bytes]]
    ) -> list[bool] | None:
        """store_many; None when there is no (valid) answer, e.g. from a stock node.

        Silence does not remove the contact: a stock node is alive but ignores the RPC.
        """
        self.stats.store_rpcs += 1
        answered, reply = await self._request(
            (node_to_ask.ip, node_to_ask.port),
            "store_many",
            self.source_node.id,
            [[key, value] for key, value in entries],
        )
        if not answered or not isinstance(reply, list) or len(reply) != len(entries):
            self.stats.rpc_timeouts += not answered
            return None
        self.welcome_if_new(node_to_ask)
        return [flag is True for flag in reply]

    async def query(self, node_to_ask: Node, key: bytes, *, want_value: bool) -> FindReply:
        """FIND_VALUE (want_value) or FIND_NODE, answered with a sanitized FindReply."""
        name = "find_value" if want_value else "find_node"
        answered, reply = await self._request(
            (node_to_ask.ip, node_to_ask.port), name, self.source_node.id, key
        )
        found = self._sanitize(reply, want_value) if answered else None
        self.handle_call_response((found is not None, None), node_to_ask)
        return found or FindReply(False)

    def _sanitize(self, reply: object, want_value: bool) -> FindReply | None:
        if isinstance(reply, dict):
            value = reply.get("value")
            if (
                not want_value
                or len(reply) != 1
                or not isinstance(value, bytes)
                or len(value) > MAX_VALUE_SIZE
            ):
                return None
            return FindReply(True, (), value)
        if not isinstance(reply, list):
            return None
        return FindReply(True, tuple(sanitize_contacts(reply, self.ksize, self.source_node.id)))

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> tuple[bool, Any]:
        """Stock-shaped FIND_NODE (for kademlia's own crawlers): (answered, [(id, ip, port)])."""
        found = await self.query(node_to_ask, node_to_find.id, want_value=False)
        return found.answered, [tuple(n) for n in found.contacts]

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> tuple[bool, Any]:
        """Stock-shaped FIND_VALUE: (answered, {"value": bytes} or [(id, ip, port)])."""
        found = await self.query(node_to_ask, node_to_find.id, want_value=True)
        if found.value is not None:
            return True, {"value": found.value}
        return found.answered, [tuple(n) for n in found.contacts]

    def keep_alive(self, task: asyncio.Future) -> None:
        """Hold a reference to a task nobody awaits until it is done (asyncio keeps only weak
        ones), e.g. a lookup's queries still outstanding when the lookup ended."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def __getattr__(self, name: str) -> Any:
        """No dynamic RPC stubs (rpcudp makes one for any unknown attribute): every RPC this
        node sends is a method above, so a typo fails here instead of on the wire."""
        raise AttributeError(name)

    def stall_timeout(self) -> float:
        """How long a lookup waits for one answer before asking another node meanwhile."""
        return self.rtt.patience(0.05, self.config.rpc_timeout / 4)


_MALFORMED = object()
# Contacts whose failures are tracked at most (more than a table holds: entries of contacts
# that left the table otherwise are pruned when this is reached).
_MAX_TRACKED_FAILURES = 10_000


class Packed:
    """A reply already encoded as msgpack (contact lists, the most frequent reply)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def pack_contacts(nodes: Sequence[Node]) -> bytes:
    """msgpack of [[id, ip, port], ...], byte for byte what umsgpack.packb writes, without
    its per-object overhead (a FIND_NODE reply is packed for every query a peer sends)."""
    parts = [_array_header(len(nodes))]
    for node in nodes:
        ip = node.ip.encode("ascii")
        port = node.port
        if port < 0x80:
            port_bytes = bytes((port,))
        elif port < 0x100:
            port_bytes = b"\xcc" + bytes((port,))
        else:
            port_bytes = b"\xcd" + port.to_bytes(2, "big")
        string_header = bytes((0xA0 | len(ip),)) if len(ip) < 32 else b"\xd9" + bytes((len(ip),))
        parts.append(b"\x93\xc4\x14" + node.id + string_header + ip + port_bytes)
    return b"".join(parts)


def _array_header(count: int) -> bytes:
    return bytes((0x90 | count,)) if count < 16 else b"\xdc" + count.to_bytes(2, "big")


def sanitize_contacts(raw: list, limit: int, own_id: bytes) -> list[Node]:
    """The usable contacts among the first `limit` entries of a FIND_* reply.

    A contact is [20-byte id, IP address literal, port 1-65535]; the address must be one a
    datagram can go to (not unspecified, multicast or reserved). Entries beyond `limit` are
    not even looked at, so a reply with hundreds of contacts costs no more than one with k.
    """
    contacts = []
    seen: set[bytes] = set()
    for entry in raw[:limit]:
        if not isinstance(entry, list | tuple) or len(entry) != 3:
            continue
        node_id, ip, port = entry
        if (
            not isinstance(node_id, bytes)
            or len(node_id) != KEY_SIZE
            or node_id == own_id
            or node_id in seen
            or type(port) is not int
            or not 0 < port < 65536
            or not isinstance(ip, str)
        ):
            continue
        address = usable_address(ip)
        if address is None:
            continue
        seen.add(node_id)
        contacts.append(Node(node_id, address, port))
    return contacts


def usable_address(ip: str) -> str | None:
    """The canonical form of `ip` if a datagram can be sent to it, else None."""
    if len(ip) > 45:
        return None
    if ":" not in ip:  # IPv4, the common case, without ipaddress' (slow) objects
        try:
            packed = socket.inet_pton(socket.AF_INET, ip)
        except OSError:
            return None
        # 0.0.0.0/8 is "this network"; 224/4 multicast; 240/4 reserved (and broadcast).
        if packed[0] == 0 or packed[0] >= 224:
            return None
        return socket.inet_ntop(socket.AF_INET, packed)
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return None
    return str(address)


def pack_store_batches(
    entries: Sequence[tuple[bytes, bytes]],
) -> list[list[tuple[bytes, bytes]]]:
    """Split (key, value) pairs into store_many batches that each fit one request."""
    batches: list[list[tuple[bytes, bytes]]] = []
    current: list[tuple[bytes, bytes]] = []
    size = 64  # the request's framing: name, sender id, array headers
    for key, value in entries:
        entry_size = len(key) + len(value) + 8
        if current and (size + entry_size > MAX_REQUEST_SIZE or len(current) == MAX_BATCH_ENTRIES):
            batches.append(current)
            current, size = [], 64
        current.append((key, value))
        size += entry_size
    if current:
        batches.append(current)
    return batches


def _check_arity(args: list, count: int) -> None:
    if len(args) != count:
        raise _BadArguments


def _check_id(value: object) -> None:
    if not isinstance(value, bytes) or len(value) != KEY_SIZE:
        raise _BadArguments
