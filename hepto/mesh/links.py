"""The mesh interface's IP side over rtnetlink: MTU, state, addresses, routes.

Shared by both backends: whoever made the WireGuard device, it is an ordinary link to
the kernel's IP stack.  :meth:`Links.sync` compares the link with what it should be and
changes only what differs.  The calls are synchronous netlink requests to the local
kernel (tens of microseconds each, through :mod:`hepto.mesh.rtnetlink`), made from the
reactor thread on purpose: a thread would cost more than it saves.
"""

from __future__ import annotations

import errno
import ipaddress
from socket import AF_INET6
from typing import Final

import attrs

from hepto.mesh.reconcile import plan_set
from hepto.mesh.rtnetlink import MAIN_TABLE, RTPROT_KERNEL, Netlink, NetlinkError

IFA_F_NODAD: Final = 0x02


class LinkMissing(Exception):
    """The mesh interface does not exist (yet, or any more)."""


def _interface(address: object, length: int) -> ipaddress.IPv6Interface:
    # An address with its prefix length, host bits and all: fd00::5/64 is no network.
    return ipaddress.IPv6Interface((str(address), length))


@attrs.define
class Links:
    """The IP configuration of the interface named ``interface``, through ``rt``.

    ``rt`` is a :class:`~hepto.mesh.rtnetlink.RtNetlink` (in the agent's own network
    namespace) or a fake (:class:`hepto.mesh.testing.FakeRtNetlink`).
    """

    rt: Netlink
    interface: str

    def index(self) -> int:
        link = self.rt.link(self.interface)
        if link is None:
            raise LinkMissing(self.interface)
        return link.index

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
        link = self.rt.link(self.interface)
        if link is None:
            raise LinkMissing(self.interface)
        index = link.index
        done = []
        if link.mtu != mtu or not link.up:
            self.rt.set_link(index, mtu=mtu, up=True)
            done.append(f"mtu {mtu} up")
        actual_addresses = frozenset(
            _interface(entry.address, entry.prefixlen)
            for entry in self.rt.get_addresses(AF_INET6, index)
            if not entry.address.is_link_local
        )
        wanted_addresses = frozenset(_interface(address, 128) for address in addresses)
        new_addresses, old_addresses = plan_set(actual_addresses, wanted_addresses)
        for interface in old_addresses:
            self.rt.delete_address(index, interface.ip, interface.network.prefixlen)
            done.append(f"address -{interface}")
        for interface in new_addresses:
            # WireGuard links skip duplicate address detection anyway (NOARP); say so.
            self.rt.add_address(index, interface.ip, 128, IFA_F_NODAD)
            done.append(f"address +{interface}")
        actual_routes = frozenset(
            route.destination
            for route in self.rt.get_routes(AF_INET6)
            if route.oif == index
            and route.table == MAIN_TABLE
            and route.protocol != RTPROT_KERNEL
            and isinstance(route.destination, ipaddress.IPv6Network)
        )
        add, remove = plan_set(actual_routes, routes)
        for network in remove:
            self.rt.delete_route(network, index, MAIN_TABLE)
            done.append(f"route -{network}")
        for network in add:
            self.rt.add_route(network, index, MAIN_TABLE)
            done.append(f"route +{network}")
        return done

    def change_routes(
        self, add: frozenset[ipaddress.IPv6Network], remove: frozenset[ipaddress.IPv6Network]
    ) -> list[str]:
        """Add and remove these routes only; say what changed.

        For a pass that knows the link as the last :meth:`sync` left it: reading back every
        route (a hundred, one per member's pod prefix) to add one cost a member 3 ms of
        CPU at every join.  A route already there, or already gone, is what was wanted.
        """
        index = self.index()
        done = []
        for network in sorted(remove):
            try:
                self.rt.delete_route(network, index, MAIN_TABLE)
            except NetlinkError as error:
                if error.errno not in (errno.ESRCH, errno.ENOENT):
                    raise
            else:
                done.append(f"route -{network}")
        for network in sorted(add):
            try:
                self.rt.add_route(network, index, MAIN_TABLE)
            except NetlinkError as error:
                if error.errno != errno.EEXIST:
                    raise
            else:
                done.append(f"route +{network}")
        return done


def link_mtu(rt: Netlink, interface: str) -> int | None:
    link = rt.link(interface)
    return None if link is None or not link.mtu else link.mtu


def interface_with(rt: Netlink, address: ipaddress.IPv6Address) -> str | None:
    """The name of the link that carries ``address``, if any."""
    for entry in rt.get_addresses(AF_INET6):
        if entry.address == address:
            link = rt.link_by_index(entry.index)
            return None if link is None else link.name
    return None
