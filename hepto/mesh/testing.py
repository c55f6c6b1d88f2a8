"""Fakes of the mesh's collaborators, for tests (as ``twisted.internet.testing`` is).

- :class:`FakeRtNetlink`: :class:`~hepto.mesh.rtnetlink.RtNetlink` over an in-memory
  model of links, addresses and routes, recording every request.
- :class:`FakeWireGuard`: pyroute2's ``WireGuard`` over an in-memory device.  Requests go
  through pyroute2's own message encoder, and ``info`` answers with genuine decoded
  ``wgmsg`` dumps, so the kernel backend is tested against pyroute2's real formats.
- :class:`RecordingBackend`: a :class:`~hepto.mesh.backend.Backend` with an in-memory
  device, recording every call.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable, Sequence
from socket import AF_INET6
from typing import Any

import attrs
from pyroute2.netlink.generic.wireguard import AsyncWireGuard, wgmsg
from twisted.internet import defer
from twisted.internet.defer import Deferred

from hepto.mesh.backend import (
    AddPeer,
    BackendUnavailable,
    DeviceStatus,
    PeerChange,
    PeerStatus,
    RemovePeer,
)
from hepto.mesh.rtnetlink import (
    IFF_UP,
    MAIN_TABLE,
    RTPROT_KERNEL,
    RTPROT_STATIC,
    Address,
    IPAddress,
    IPNetwork,
    Link,
    NetlinkError,
    Route,
)


@attrs.define
class FakeLink:
    index: int
    ifname: str
    kind: str
    mtu: int = 1420
    flags: int = 0


@attrs.define
class FakeRtNetlink:
    """Links, addresses and routes of one imaginary network namespace.

    The methods of :class:`~hepto.mesh.rtnetlink.RtNetlink`, over an in-memory model;
    :meth:`make_link` and the lists set the scene, :attr:`requests` records every change
    asked for, as ``(method, arguments)``, and :attr:`dumps` counts the address and route
    dumps (what a pass that looks at the link asks).
    """

    supports_wireguard: bool = True
    links: dict[int, FakeLink] = attrs.field(factory=dict)
    #: (index, address, prefixlen, flags)
    addresses: list[tuple[int, str, int, int]] = attrs.field(factory=list)
    #: (index, dst, dst_len, proto)
    routes: list[tuple[int, str, int, int]] = attrs.field(factory=list)
    requests: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)
    dumps: int = 0
    closed: bool = False

    def make_link(self, ifname: str, kind: str = "veth", mtu: int = 1500) -> FakeLink:
        link = FakeLink(max(self.links, default=0) + 1, ifname, kind, mtu, IFF_UP)
        self.links[link.index] = link
        return link

    def _link(self, link: FakeLink) -> Link:
        return Link(link.index, link.ifname, link.mtu, link.flags, link.kind)

    def link(self, name: str) -> Link | None:
        for link in self.links.values():
            if link.ifname == name:
                return self._link(link)
        return None

    def link_by_index(self, index: int) -> Link | None:
        link = self.links.get(index)
        return None if link is None else self._link(link)

    def set_link(self, index: int, *, mtu: int | None = None, up: bool | None = None) -> None:
        self.requests.append(("set_link", {"index": index, "mtu": mtu, "up": up}))
        link = self.links[index]
        if mtu is not None:
            link.mtu = mtu
        if up:
            link.flags |= IFF_UP

    def add_link(self, name: str, kind: str) -> None:
        self.requests.append(("add_link", {"name": name, "kind": kind}))
        if kind == "wireguard" and not self.supports_wireguard:
            raise NetlinkError(errno.EOPNOTSUPP, "Operation not supported")
        if self.link(name) is not None:
            raise NetlinkError(errno.EEXIST, "File exists")
        self.make_link(name, kind, 1420).flags = 0

    def delete_link(self, index: int) -> None:
        self.requests.append(("delete_link", {"index": index}))
        del self.links[index]
        self.addresses = [entry for entry in self.addresses if entry[0] != index]
        self.routes = [entry for entry in self.routes if entry[0] != index]

    def get_addresses(self, family: int = AF_INET6, index: int | None = None) -> list[Address]:
        self.dumps += 1
        return [
            Address(i, ipaddress.ip_address(address), length, flags, 0)
            for i, address, length, flags in self.addresses
            if index is None or i == index
        ]

    def add_address(self, index: int, address: IPAddress, prefixlen: int, flags: int = 0) -> None:
        self.requests.append(
            ("add_address", {"index": index, "address": str(address), "prefixlen": prefixlen})
        )
        self.addresses.append((index, str(address), prefixlen, flags))
        network = ipaddress.IPv6Network((address, prefixlen), strict=False)
        # The kernel's own route for the new address, which links.sync must leave be.
        self.routes.append((index, str(network.network_address), network.prefixlen, RTPROT_KERNEL))

    def delete_address(self, index: int, address: IPAddress, prefixlen: int) -> None:
        self.requests.append(
            ("delete_address", {"index": index, "address": str(address), "prefixlen": prefixlen})
        )
        entry = (index, str(address), prefixlen)
        self.addresses = [a for a in self.addresses if a[:3] != entry]

    def get_routes(self, family: int = AF_INET6) -> list[Route]:
        self.dumps += 1
        return [
            Route(ipaddress.ip_network((dst, length)), i, MAIN_TABLE, proto, 1)
            for i, dst, length, proto in self.routes
        ]

    def _route(self, destination: IPNetwork, oif: int) -> tuple[int, str, int, int]:
        return (oif, str(destination.network_address), destination.prefixlen, RTPROT_STATIC)

    def add_route(self, destination: IPNetwork, oif: int, table: int = MAIN_TABLE) -> None:
        self.requests.append(("add_route", {"destination": str(destination), "oif": oif}))
        entry = self._route(destination, oif)
        if entry in self.routes:
            raise NetlinkError(errno.EEXIST, "File exists")
        self.routes.append(entry)

    def delete_route(self, destination: IPNetwork, oif: int, table: int = MAIN_TABLE) -> None:
        self.requests.append(("delete_route", {"destination": str(destination), "oif": oif}))
        entry = self._route(destination, oif)
        if entry not in self.routes:
            raise NetlinkError(errno.ESRCH, "No such process")
        self.routes.remove(entry)

    def close(self) -> None:
        self.closed = True


@attrs.define
class FakeWireGuard:
    """An in-memory WireGuard device behind pyroute2's own message formats."""

    private_key: str | None = None
    listen_port: int = 0
    peers: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    requests: list[dict[str, Any]] = attrs.field(factory=list)
    closed: bool = False

    def set(
        self,
        interface: str,
        listen_port: int | None = None,
        fwmark: int | None = None,
        private_key: str | None = None,
        peer: dict[str, Any] | None = None,
    ) -> None:
        request = {
            key: value
            for key, value in (
                ("interface", interface),
                ("listen_port", listen_port),
                ("private_key", private_key),
                ("peer", peer),
            )
            if value is not None
        }
        self.requests.append(request)
        if private_key is not None:
            self.private_key = private_key
        if listen_port is not None:
            self.listen_port = listen_port
        if peer is None:
            return
        # pyroute2's own validation and encoding: a request it rejects fails here too.
        message = wgmsg()
        AsyncWireGuard._wg_set_peer(AsyncWireGuard.__new__(AsyncWireGuard), message, peer)
        message["cmd"] = 1
        message.encode()
        key = peer["public_key"]
        if peer.get("remove"):
            self.peers.pop(key, None)
            return
        if peer.get("update_only") and key not in self.peers:
            return
        current = self.peers.setdefault(key, {"allowed_ips": []})
        if "endpoint_addr" in peer:
            current["endpoint"] = (peer["endpoint_addr"], peer["endpoint_port"])
        if "persistent_keepalive" in peer:
            current["keepalive"] = peer["persistent_keepalive"]
        if peer.get("replace_allowed_ips"):
            current["allowed_ips"] = []
        current["allowed_ips"] = sorted({*current["allowed_ips"], *peer.get("allowed_ips", ())})

    def info(self, interface: str) -> list[Any]:
        """The device as the kernel dumps it: here one peer per message."""
        messages = [self._message(interface, [])]
        for key, peer in self.peers.items():
            attributes: list[Any] = [["WGPEER_A_PUBLIC_KEY", key]]
            if "endpoint" in peer:
                host, port = peer["endpoint"]
                attributes.append(["WGPEER_A_ENDPOINT", {"addr": host, "port": port}])
            attributes.append(["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", peer.get("keepalive", 0)])
            attributes.append(["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 0, "tv_nsec": 0}])
            attributes.append(["WGPEER_A_RX_BYTES", peer.get("rx_bytes", 0)])
            attributes.append(["WGPEER_A_TX_BYTES", peer.get("tx_bytes", 0)])
            allowed = AsyncWireGuard._wg_build_allowedips(
                AsyncWireGuard.__new__(AsyncWireGuard), peer["allowed_ips"]
            )
            attributes.append(["WGPEER_A_ALLOWEDIPS", allowed])
            messages.append(
                self._message(interface, [["WGDEVICE_A_PEERS", [{"attrs": attributes}]]])
            )
        return messages

    def _message(self, interface: str, extra: list[Any]) -> Any:
        message = wgmsg()
        message["cmd"] = 0
        message["version"] = 1
        message["header"]["type"] = 0x10
        message["attrs"].append(["WGDEVICE_A_IFNAME", interface])
        if self.private_key is not None:
            message["attrs"].append(["WGDEVICE_A_PRIVATE_KEY", self.private_key])
        message["attrs"].append(["WGDEVICE_A_LISTEN_PORT", self.listen_port])
        message["attrs"].extend(extra)
        message.encode()
        decoded = wgmsg(message.data)
        decoded.decode()
        return decoded

    def close(self) -> None:
        self.closed = True


@attrs.define
class RecordingBackend:
    """A backend over an in-memory device that records what it is asked."""

    kind: str = "recording"
    interface: str = "hepto0"
    unavailable: str | None = None
    device: DeviceStatus = attrs.field(factory=lambda: DeviceStatus(None, 0, {}))
    calls: list[tuple[str, Any]] = attrs.field(factory=list)
    recreated: Callable[[], None] | None = None
    fail_next: Exception | None = None
    started: bool = False
    stopped: bool = False

    def start(self, recreated: Callable[[], None]) -> Deferred[None]:
        self.calls.append(("start", None))
        if self.unavailable is not None:
            return defer.fail(BackendUnavailable(self.unavailable))
        self.recreated = recreated
        self.started = True
        return defer.succeed(None)

    def _maybe_fail(self) -> None:
        if self.fail_next is not None:
            failure, self.fail_next = self.fail_next, None
            raise failure

    def read(self) -> Deferred[DeviceStatus]:
        def read() -> DeviceStatus:
            self.calls.append(("read", None))
            self._maybe_fail()
            return self.device

        return defer.execute(read)

    def configure(self, private_key: str, listen_port: int) -> Deferred[None]:
        def configure() -> None:
            self.calls.append(("configure", listen_port))
            self._maybe_fail()
            self.device = attrs.evolve(
                self.device, private_key=private_key, listen_port=listen_port
            )

        return defer.execute(configure)

    def apply(self, changes: Sequence[PeerChange]) -> Deferred[None]:
        def apply() -> None:
            self.calls.append(("apply", list(changes)))
            self._maybe_fail()
            # A model of the device of its own, not reconcile.after_changes: it is what
            # the service's tests check the service (and after_changes) against.
            peers = dict(self.device.peers)
            for change in changes:
                if isinstance(change, RemovePeer):
                    peers.pop(change.public_key, None)
                    continue
                spec = change.spec
                old = peers.get(spec.public_key)
                if old is None and not isinstance(change, AddPeer):
                    continue
                endpoint = (
                    str(spec.endpoint)
                    if old is None or isinstance(change, AddPeer) or change.endpoint
                    else old.endpoint
                )
                peers[spec.public_key] = PeerStatus(
                    spec.public_key, endpoint, spec.allowed_ips, spec.keepalive
                )
            self.device = attrs.evolve(self.device, peers=peers)

        return defer.execute(apply)

    def stop(self) -> Deferred[None]:
        self.calls.append(("stop", None))
        self.stopped = True
        return defer.succeed(None)

    def recreate(self) -> None:
        """As wireguard-go coming back after a crash: an empty device, and the callback."""
        self.device = DeviceStatus(None, 0, {})
        assert self.recreated is not None
        self.recreated()

    def roam(self, public_key: str, endpoint: str) -> None:
        """As a peer's packets arriving from elsewhere: the device moves its endpoint."""
        peers = dict(self.device.peers)
        peers[public_key] = attrs.evolve(peers[public_key], endpoint=endpoint)
        self.device = attrs.evolve(self.device, peers=peers)
