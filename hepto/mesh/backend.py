"""The small interface both WireGuard backends offer, and the values that cross it.

A backend owns one WireGuard device: it brings it into existence, reads its state and
applies peer changes.  Everything else (keys, addresses, routes, which peers) is shared
logic above it.  Two implementations: :mod:`hepto.mesh.kernel` (netlink) and
:mod:`hepto.mesh.userspace` (wireguard-go and its UAPI socket).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred

from hepto.config import Endpoint

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BackendUnavailable(Exception):
    """This machine cannot run this backend (no kernel module, no program)."""


@attrs.frozen
class PeerSpec:
    """A peer as the mesh wants it: who it is, where it is, what it may send."""

    name: str
    public_key: str
    endpoint: Endpoint
    allowed_ips: frozenset[IPNetwork]
    keepalive: int


@attrs.frozen
class AddPeer:
    spec: PeerSpec


@attrs.frozen
class UpdatePeer:
    """Replace allowed IPs and keepalive; the endpoint too when ``endpoint`` is set."""

    spec: PeerSpec
    endpoint: bool


@attrs.frozen
class RemovePeer:
    public_key: str
    name: str | None = None


PeerChange = AddPeer | UpdatePeer | RemovePeer


def describe(change: PeerChange) -> str:
    """``change`` as the mesh logs it once applied."""
    if isinstance(change, RemovePeer):
        return f"removed peer {change.name or '?'} ({change.public_key})"
    spec: PeerSpec = change.spec
    verb = "added" if isinstance(change, AddPeer) else "updated"
    where = f" at {spec.endpoint}" if isinstance(change, AddPeer) or change.endpoint else ""
    allowed = ", ".join(sorted(str(network) for network in spec.allowed_ips))
    return f"{verb} peer {spec.name} ({spec.public_key}){where} allowing {allowed}"


def summarize(changes: Sequence[PeerChange]) -> str:
    """Many changes as one line: a joiner's first pass adds a peer per member."""
    groups: dict[str, list[str]] = {}
    for change in changes:
        if isinstance(change, RemovePeer):
            verb, name = "removed", change.name or "?"
        else:
            verb = "added" if isinstance(change, AddPeer) else "updated"
            name = change.spec.name
        groups.setdefault(verb, []).append(name)
    return "; ".join(
        f"{verb} {len(names)} peer{'s' if len(names) > 1 else ''}: {', '.join(sorted(names))}"
        for verb, names in groups.items()
    )


@attrs.frozen
class PeerStatus:
    """A peer as the device has it."""

    public_key: str
    endpoint: str | None
    allowed_ips: frozenset[IPNetwork]
    keepalive: int
    #: Seconds since the epoch of the last completed handshake, or None for never.
    last_handshake: float | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0


@attrs.frozen
class DeviceStatus:
    # The private key only tells whether the device is configured; it is never shown.
    private_key: str | None = attrs.field(repr=False)
    listen_port: int
    peers: Mapping[str, PeerStatus] = attrs.field(factory=dict)


def format_endpoint(host: str, port: int) -> str:
    """The canonical ``[addr]:port`` (RFC 5952 text), as :class:`Endpoint` prints it."""
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv4Address):
        return f"{address}:{port}"
    return f"[{address}]:{port}"


class Backend(Protocol):
    """One WireGuard device named :attr:`interface`."""

    #: ``kernel`` or ``userspace``, for logs and status.
    kind: str
    interface: str

    def start(self, recreated: Callable[[], None]) -> Deferred[None]:
        """Make the device exist; fires once it can be configured.

        ``recreated`` is called whenever the device later reappears empty (wireguard-go
        restarted after a crash): its keys, addresses and peers must be set again.
        """

    def read(self) -> Deferred[DeviceStatus]:
        """The device's actual configuration and counters."""

    def configure(self, private_key: str, listen_port: int) -> Deferred[None]:
        """Set the device's own key and UDP port."""

    def apply(self, changes: Sequence[PeerChange]) -> Deferred[None]:
        """Apply peer changes in order."""

    def stop(self) -> Deferred[None]:
        """Remove the device; fires when it is gone."""
