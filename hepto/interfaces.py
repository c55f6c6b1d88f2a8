"""The host's IPv6 addresses as the kernel lists them, and which one is the node's public one.

Gossip advertises the public address and the mesh's peers send to it: both ask
:func:`public_address`, so that they never tell members two different things.

The rule, for an interface holding several global addresses: skip those peers cannot
rely on, then take the lowest.

- *tentative* (duplicate address detection still running; optimistic addresses are
  tentative too) and *dadfailed*: the address is not, or not yet, the host's;
- *deprecated* (its preferred lifetime is over): it is on its way out;
- *temporary* (RFC 8981 privacy addresses, ``use_tempaddr``): a new one every day, and
  the old one goes, while a member's address is meant to last.

Among those left the lowest wins, not the first listed: ``/proc/net/if_inet6`` lists
addresses in the order of a hash table, netlink newest first, and any reader must come
to the same answer.  An operator who wants another one says so with ``--ip``.

The kernel's table is read from ``/proc/net/if_inet6`` (the network namespace of the
reading process), which needs no socket and shows every flag the rule looks at.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import attrs

#: The kernel's table of IPv6 addresses, one per line (``net/ipv6/addrconf.c``,
#: ``if6_seq_show``): address, interface index, prefix length, scope, flags, name, the
#: numbers in hexadecimal, the flags cut to their lowest byte.
IF_INET6: Final = Path("/proc/net/if_inet6")

# include/uapi/linux/if_addr.h; IFA_F_SECONDARY, bit 0, is IFA_F_TEMPORARY for IPv6.
IFA_F_TEMPORARY: Final = 0x01
IFA_F_DADFAILED: Final = 0x08
IFA_F_DEPRECATED: Final = 0x20
IFA_F_TENTATIVE: Final = 0x40
#: The addresses peers cannot rely on (see the module's docstring).
UNRELIABLE: Final = IFA_F_TENTATIVE | IFA_F_DADFAILED | IFA_F_DEPRECATED | IFA_F_TEMPORARY
#: The scope of a global address in ``if_inet6`` (``IPV6_ADDR_ANY``; link-local is 0x20).
GLOBAL_SCOPE: Final = 0x00


@attrs.frozen
class InterfaceAddress:
    """One line of ``/proc/net/if_inet6``."""

    address: ipaddress.IPv6Address
    interface: str
    scope: int
    flags: int
    #: The prefix the address was given with (a /64 from router advertisements).
    prefix_length: int = 128

    @property
    def reliable(self) -> bool:
        """Global, and none of the flags that say peers cannot count on it."""
        return self.scope == GLOBAL_SCOPE and not self.flags & UNRELIABLE


def parse_if_inet6(text: str) -> list[InterfaceAddress]:
    """The addresses in the text of ``/proc/net/if_inet6``; lines of another shape are skipped."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 6:
            continue
        address, _index, prefix, scope, flags, interface = fields
        found.append(
            InterfaceAddress(
                ipaddress.IPv6Address(int(address, 16)),
                interface,
                int(scope, 16),
                int(flags, 16),
                int(prefix, 16),
            )
        )
    return found


def choose_public(
    addresses: Iterable[InterfaceAddress], interface: str
) -> ipaddress.IPv6Address | None:
    """The rule of the module's docstring: the lowest reliable global address of ``interface``."""
    reliable = [
        entry.address for entry in addresses if entry.interface == interface and entry.reliable
    ]
    return min(reliable, default=None)


def read_addresses(if_inet6: Path = IF_INET6) -> list[InterfaceAddress]:
    """Every IPv6 address of this network namespace."""
    try:
        text = if_inet6.read_text()
    except FileNotFoundError:
        return []  # A kernel booted with ipv6.disable=1: no address, ever.
    return parse_if_inet6(text)


def public_interface(
    addresses: Sequence[InterfaceAddress], interface: str
) -> ipaddress.IPv6Interface | None:
    """The public address of ``interface`` with the prefix it was given with."""
    chosen = choose_public(addresses, interface)
    for entry in addresses:
        if entry.address == chosen and entry.interface == interface:
            return ipaddress.IPv6Interface(f"{chosen}/{entry.prefix_length}")
    return None


def public_address(interface: str, if_inet6: Path = IF_INET6) -> ipaddress.IPv6Address | None:
    """The public address of ``interface`` by the module's rule; None while it has none."""
    return choose_public(read_addresses(if_inet6), interface)
