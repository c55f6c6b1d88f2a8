"""The mesh interface's IP side over rtnetlink: MTU, state, addresses, routes.

Shared by both backends: whoever made the WireGuard device, it is an ordinary link to
the kernel's IP stack.  :meth:`Links.sync` compares the link with what it should be and
changes only what differs.  The calls are synchronous netlink requests to the local
kernel (tens of microseconds each), made from the reactor thread on purpose: a thread
would cost more than it saves.
"""

from __future__ import annotations

import ipaddress
from socket import AF_INET6
from typing import Any, Final

import attrs

from hepto.mesh.reconcile import plan_set

#: Routes the kernel makes itself (for our own addresses); never ours to remove.
RTPROT_KERNEL: Final = 2
#: How hepto's routes show in ``ip -6 route``: ``proto static``.
RTPROT_STATIC: Final = 4
MAIN_TABLE: Final = 254
IFA_F_NODAD: Final = 0x02
IFF_UP: Final = 0x1


class LinkMissing(Exception):
    """The mesh interface does not exist (yet, or any more)."""


def _network(address: str, length: int) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network((address, length))


@attrs.define
class Links:
    """The IP configuration of the interface named ``interface``, through ``ipr``.

    ``ipr`` is a pyroute2 ``IPRoute`` (in the agent's own network namespace) or a fake
    with the same methods.
    """

    ipr: Any
    interface: str

    def index(self) -> int:
        found = self.ipr.link_lookup(ifname=self.interface)
        if not found:
            raise LinkMissing(self.interface)
        return int(found[0])

    def sync(
        self,
        addresses: frozenset[ipaddress.IPv6Address],
        routes: frozenset[ipaddress.IPv6Network],
        mtu: int,
    ) -> list[str]:
        """Make the link up with ``mtu``, ``addresses`` (as /128) and ``routes``; say what changed.

        Link-local addresses and routes the kernel made are left alone: they come and go
        with the link and the addresses.
        """
        index = self.index()
        done = []
        (link,) = self.ipr.get_links(index)
        if link.get("mtu") != mtu or not link["flags"] & IFF_UP:
            self.ipr.link("set", index=index, mtu=mtu, state="up")
            done.append(f"mtu {mtu} up")
        actual_addresses = frozenset(
            _network(message.get("address"), message["prefixlen"])
            for message in self.ipr.get_addr(family=AF_INET6, index=index)
            if not ipaddress.IPv6Address(message.get("address")).is_link_local
        )
        wanted_addresses = frozenset(_network(str(address), 128) for address in addresses)
        add, remove = plan_set(actual_addresses, wanted_addresses)
        for network in remove:
            self.ipr.addr(
                "del",
                index=index,
                address=str(network.network_address),
                prefixlen=network.prefixlen,
            )
            done.append(f"address -{network}")
        for network in add:
            self.ipr.addr(
                "add",
                index=index,
                address=str(network.network_address),
                prefixlen=128,
                # WireGuard links skip duplicate address detection anyway (NOARP); say so.
                flags=IFA_F_NODAD,
            )
            done.append(f"address +{network}")
        actual_routes = frozenset(
            _network(message.get("dst") or "::", message["dst_len"])
            for message in self.ipr.get_routes(family=AF_INET6, oif=index, table=MAIN_TABLE)
            if message["proto"] != RTPROT_KERNEL
            and message.get("oif", index) == index
            and message.get("table", MAIN_TABLE) == MAIN_TABLE
        )
        add, remove = plan_set(actual_routes, routes)
        for network in remove:
            self._route("del", index, network)
            done.append(f"route -{network}")
        for network in add:
            self._route("add", index, network)
            done.append(f"route +{network}")
        return done

    def _route(self, command: str, index: int, network: ipaddress.IPv6Network) -> None:
        self.ipr.route(
            command,
            dst=str(network),
            oif=index,
            table=MAIN_TABLE,
            proto=RTPROT_STATIC,
            family=AF_INET6,
        )


def link_mtu(ipr: Any, interface: str) -> int | None:
    found = ipr.link_lookup(ifname=interface)
    if not found:
        return None
    (link,) = ipr.get_links(found[0])
    mtu = link.get("mtu")
    return int(mtu) if mtu else None


def interface_with(ipr: Any, address: ipaddress.IPv6Address) -> str | None:
    """The name of the link that carries ``address``, if any."""
    for message in ipr.get_addr(family=AF_INET6):
        if message.get("address") == str(address):
            found = ipr.get_links(message["index"])
            return str(found[0].get("ifname")) if found else None
    return None


def global_address(ipr: Any, interface: str) -> ipaddress.IPv6Address | None:
    """The first global unicast IPv6 address of ``interface`` (scope universe, usable).

    Tentative (still in duplicate address detection) and deprecated addresses are
    skipped: peers must be able to reach the address now and later.
    """
    found = ipr.link_lookup(ifname=interface)
    if not found:
        return None
    unusable = 0x40 | 0x20 | 0x01  # IFA_F_TENTATIVE, IFA_F_DEPRECATED, IFA_F_SECONDARY (temp)
    for message in ipr.get_addr(family=AF_INET6, index=found[0]):
        flags = message["flags"]
        address = ipaddress.IPv6Address(message.get("address"))
        if message["scope"] == 0 and not flags & unusable and not address.is_link_local:
            return address
    return None
