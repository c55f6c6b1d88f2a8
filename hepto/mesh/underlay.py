"""The underlay: where peers reach this node, and the MTU of the link that gets them there.

The address is the one gossip advertises too (``--ip``, else ``--iface``'s public
address: :func:`hepto.interfaces.public_address`), so that members are never told two
different things; the MTU is the link's, read over rtnetlink, since the mesh's own
(:func:`hepto.mesh.reconcile.mesh_mtu`) is the underlay's less WireGuard's overhead.
Right after boot the address may not be there yet (router advertisements take a while),
and nothing announces it: :func:`wait_for_underlay` looks again until it is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Final

import attrs
from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from hepto.config import NodeConfig
from hepto.interfaces import IF_INET6, public_address
from hepto.mesh import links as netlink
from hepto.mesh.rtnetlink import Netlink

#: Assumed when the underlay's MTU cannot be read: Ethernet's.
DEFAULT_UNDERLAY_MTU: Final = 1500
#: Seconds between looks for the underlay address while it is missing (router
#: advertisements not in yet): nothing notifies us of a new address.
UNDERLAY_RETRY: Final = 5.0

_log = Logger()


@attrs.frozen
class Underlay:
    """Where peers reach this node, and the MTU of the link that gets them there."""

    address: ipaddress.IPv6Address
    mtu: int


def find_underlay(rt: Netlink, config: NodeConfig, if_inet6: Path = IF_INET6) -> Underlay | None:
    """The node's public address (``--ip``, else ``--iface``'s, as gossip's) and MTU."""
    if config.ip is not None:
        address: ipaddress.IPv6Address | None = config.ip.ip
        assert address is not None
        interface = config.iface or netlink.interface_with(rt, address)
    elif config.iface is not None:
        address = public_address(config.iface, if_inet6)
        interface = config.iface
    else:
        return None
    if address is None:
        return None
    mtu = netlink.link_mtu(rt, interface) if interface else None
    if mtu is None:
        _log.warn(
            "Cannot read the MTU of the link under {address}; assuming {mtu}",
            address=str(address),
            mtu=DEFAULT_UNDERLAY_MTU,
        )
        mtu = DEFAULT_UNDERLAY_MTU
    return Underlay(address, mtu)


async def wait_for_underlay(
    find: Callable[[], Underlay | None], reactor: IReactorTime, log: Logger
) -> Underlay:
    """What ``find`` finds, looking again every :data:`UNDERLAY_RETRY` seconds until it
    finds one; ``log`` (the mesh's) says once that it waits."""
    told = False
    while True:
        found = find()
        if found is not None:
            return found
        if not told:
            log.warn(
                "No public IPv6 address for the mesh endpoint yet; looking again every {delay} s",
                delay=UNDERLAY_RETRY,
            )
            told = True
        await task.deferLater(reactor, UNDERLAY_RETRY)
