"""The kernel's WireGuard: the link made over rtnetlink (:mod:`hepto.mesh.rtnetlink`),
the device configured through pyroute2's generic netlink ``WireGuard``.

pyroute2 costs about 8 MiB of RSS, so it is imported only once the kernel has made the
link, i.e. only on hosts that run this backend (see ``docs/memory.rst``).

Netlink keys are base64, one peer per request, and there is no "replace all peers":
the reconcile logic already sends only differences, peer by peer.  Requests are
synchronous and local; see :mod:`hepto.mesh.links` for why they run on the reactor
thread.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from hepto.mesh.backend import (
    AddPeer,
    BackendUnavailable,
    DeviceStatus,
    IPNetwork,
    PeerChange,
    PeerSpec,
    PeerStatus,
    RemovePeer,
    format_endpoint,
)
from hepto.mesh.rtnetlink import Netlink, NetlinkError


def _text(value: Any) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def peer_request(change: PeerChange) -> dict[str, Any]:
    """The ``peer`` argument of ``WireGuard.set`` for one change."""
    if isinstance(change, RemovePeer):
        return {"public_key": change.public_key, "remove": True}
    spec: PeerSpec = change.spec
    request: dict[str, Any] = {
        "public_key": spec.public_key,
        "persistent_keepalive": spec.keepalive,
        "replace_allowed_ips": True,
        "allowed_ips": sorted(str(network) for network in spec.allowed_ips),
    }
    if isinstance(change, AddPeer) or change.endpoint:
        request["endpoint_addr"] = str(spec.endpoint.host)
        request["endpoint_port"] = spec.endpoint.port
    if not isinstance(change, AddPeer):
        # Never resurrect a peer that a concurrent removal took away.
        request["update_only"] = True
    return request


def _peer_status(peer: Any) -> PeerStatus:
    endpoint = peer.get_attr("WGPEER_A_ENDPOINT")
    handshake = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
    seconds = None
    if handshake and (handshake.get("tv_sec") or handshake.get("tv_nsec")):
        seconds = handshake["tv_sec"] + handshake["tv_nsec"] / 1e9
    allowed: set[IPNetwork] = {
        ipaddress.ip_network(entry.get("addr"))
        for entry in peer.get_attr("WGPEER_A_ALLOWEDIPS") or ()
        if entry.get("addr")
    }
    return PeerStatus(
        public_key=_text(peer.get_attr("WGPEER_A_PUBLIC_KEY")),
        endpoint=(
            format_endpoint(endpoint["addr"], endpoint["port"])
            if endpoint and endpoint.get("port")
            else None
        ),
        allowed_ips=frozenset(allowed),
        keepalive=peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0,
        last_handshake=seconds,
        rx_bytes=peer.get_attr("WGPEER_A_RX_BYTES") or 0,
        tx_bytes=peer.get_attr("WGPEER_A_TX_BYTES") or 0,
    )


def parse_info(messages: Iterable[Any]) -> DeviceStatus:
    """A device from ``WireGuard.info``: a dump whose peers may span several messages."""
    private_key = None
    listen_port = 0
    peers: dict[str, PeerStatus] = {}
    for message in messages:
        key = message.get_attr("WGDEVICE_A_PRIVATE_KEY")
        if key is not None:
            private_key = _text(key)
        port = message.get_attr("WGDEVICE_A_LISTEN_PORT")
        if port is not None:
            listen_port = port
        for peer in message.get_attr("WGDEVICE_A_PEERS") or ():
            status = _peer_status(peer)
            previous = peers.get(status.public_key)
            if previous is not None:
                # A peer with many allowed IPs continues in the next message.
                status = PeerStatus(
                    status.public_key,
                    previous.endpoint,
                    previous.allowed_ips | status.allowed_ips,
                    previous.keepalive,
                    previous.last_handshake,
                    previous.rx_bytes,
                    previous.tx_bytes,
                )
            peers[status.public_key] = status
    # An all-zero private key is how the kernel says "none".
    if private_key is not None and private_key.strip("A=") == "":
        private_key = None
    return DeviceStatus(private_key, listen_port, peers)


def pyroute2_wireguard() -> Any:
    """pyroute2's ``WireGuard`` socket; :class:`BackendUnavailable` without the family."""
    # Imported here: pyroute2 costs ~8 MiB of RSS, and only this backend needs it.
    from pyroute2 import WireGuard
    from pyroute2.netlink.exceptions import NetlinkError as GenericNetlinkError

    try:
        return WireGuard()
    except GenericNetlinkError as error:
        raise BackendUnavailable(f"no WireGuard generic netlink family: {error}") from None


class KernelBackend:
    """A ``wireguard`` link made through rtnetlink, configured through genetlink.

    ``rt`` is an :class:`~hepto.mesh.rtnetlink.RtNetlink`; ``wireguard`` makes the
    generic netlink ``WireGuard`` socket (:func:`pyroute2_wireguard`: it binds the
    family, so it can only exist once the kernel has the module, loaded by the link's
    creation) and raises :class:`BackendUnavailable` if it cannot.
    """

    kind = "kernel"
    log = Logger()

    def __init__(self, rt: Netlink, wireguard: Callable[[], Any], interface: str) -> None:
        self.rt = rt
        self._make_wireguard = wireguard
        self.wireguard: Any = None
        self.interface = interface

    def start(self, recreated: Callable[[], None]) -> Deferred[None]:
        # A kernel link outlives nothing but a reboot or a deletion: no restarts to report.
        return defer.execute(self._create)

    def _create(self) -> None:
        try:
            self.rt.add_link(self.interface, "wireguard")
        except NetlinkError as error:
            if error.errno == errno.EOPNOTSUPP:
                raise BackendUnavailable("this kernel has no WireGuard") from None
            if error.errno != errno.EEXIST:
                raise
            kind = self._existing_kind()
            if kind != "wireguard":
                raise BackendUnavailable(
                    f"{self.interface} exists and is a {kind or 'link of unknown kind'}, "
                    "not WireGuard"
                ) from None
            self.log.info(
                "Taking over the existing WireGuard link {interface}", interface=self.interface
            )
        self.wireguard = self._make_wireguard()

    def _existing_kind(self) -> str | None:
        link = self.rt.link(self.interface)
        return None if link is None else link.kind

    def read(self) -> Deferred[DeviceStatus]:
        return defer.execute(lambda: parse_info(self.wireguard.info(self.interface)))

    def configure(self, private_key: str, listen_port: int) -> Deferred[None]:
        return defer.execute(
            self.wireguard.set, self.interface, private_key=private_key, listen_port=listen_port
        )

    def apply(self, changes: Sequence[PeerChange]) -> Deferred[None]:
        def send() -> None:
            for change in changes:
                self.wireguard.set(self.interface, peer=peer_request(change))

        return defer.execute(send)

    def stop(self) -> Deferred[None]:
        def remove() -> None:
            link = self.rt.link(self.interface)
            if link is not None:
                self.rt.delete_link(link.index)
            if self.wireguard is not None:
                self.wireguard.close()
                self.wireguard = None

        return defer.execute(remove)
