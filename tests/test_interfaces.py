"""The node's public address: one rule, for gossip and the mesh alike.

First the rule on a recorded ``/proc/net/if_inet6``, then the kernel's own table in a
network namespace whose interface holds a temporary, a deprecated and a stable address.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import netlab
from hepto.config import NodeConfig, parse_node_config
from hepto.gossip.service import GossipError, gossip_endpoint
from hepto.interfaces import (
    InterfaceAddress,
    choose_public,
    parse_if_inet6,
    public_address,
    public_interface,
)
from hepto.mesh.testing import FakeRtNetlink
from hepto.mesh.underlay import find_underlay

#: Recorded in a namespace whose eth0 got a router advertisement with use_tempaddr=2
#: (the first two lines: temporary, then its stable SLAAC address), then holds a
#: deprecated address (preferred_lft 0) and a static one; the tentative and dadfailed
#: lines are the same table a moment into duplicate address detection, and after it failed.
RECORDED = """\
00000000000000000000000000000001 01 80 10 80       lo
20010db8000000053aa226fb1d764b81 02 40 00 01     eth0
20010db800000005148d4ffffeba6aa0 02 40 00 00     eth0
20010db8000100000000000000000001 02 40 00 82     eth0
20010db800000000000000000000000d 02 40 00 a2     eth0
20010db8000000000000000000000007 02 40 00 c0     eth0
20010db8000000000000000000000008 02 40 00 c8     eth0
fe80000000000000148d4ffffeba6aa0 02 40 20 80     eth0
20010db8000000000000000000000001 03 40 00 80     eth1
"""
TEMPORARY = ipaddress.IPv6Address("2001:db8:0:5:3aa2:26fb:1d76:4b81")
SLAAC = ipaddress.IPv6Address("2001:db8:0:5:148d:4fff:feba:6aa0")
STATIC = ipaddress.IPv6Address("2001:db8:1::1")
DEPRECATED = ipaddress.IPv6Address("2001:db8::d")
TENTATIVE = ipaddress.IPv6Address("2001:db8::7")
DADFAILED = ipaddress.IPv6Address("2001:db8::8")
OTHER_INTERFACE = ipaddress.IPv6Address("2001:db8::1")
KEY = "00" * 32


def node_config(data_dir: Path, **raw: str) -> NodeConfig:
    return parse_node_config(
        {"cluster": "lab", "name": "me", "key": KEY, "data-dir": str(data_dir), **raw},
        {},
        {"no-contain": True},
    )


class RuleTests(SynchronousTestCase):
    def test_the_table_parses(self) -> None:
        entries = {entry.address: entry for entry in parse_if_inet6(RECORDED)}
        self.assertEqual(entries[TEMPORARY], InterfaceAddress(TEMPORARY, "eth0", 0x00, 0x01, 64))
        self.assertEqual(entries[DEPRECATED].flags, 0xA2)
        self.assertEqual(entries[ipaddress.IPv6Address("fe80::148d:4fff:feba:6aa0")].scope, 0x20)

    def test_the_public_address_with_its_prefix(self) -> None:
        # A container's address is made in the host's prefix (hepto.container.plan).
        self.assertEqual(
            public_interface(parse_if_inet6(RECORDED), "eth0"),
            ipaddress.IPv6Interface(f"{SLAAC}/64"),
        )
        self.assertIsNone(public_interface(parse_if_inet6(RECORDED), "eth2"))

    def test_only_stable_global_addresses_are_reliable(self) -> None:
        reliable = {entry.address for entry in parse_if_inet6(RECORDED) if entry.reliable}
        self.assertEqual(reliable, {SLAAC, STATIC, OTHER_INTERFACE})

    def test_the_lowest_reliable_address_of_the_interface(self) -> None:
        # The deprecated, tentative and failed ones are lower and the temporary one is
        # listed first: each would win if the rule let it.
        self.assertEqual(choose_public(parse_if_inet6(RECORDED), "eth0"), SLAAC)
        self.assertEqual(choose_public(parse_if_inet6(RECORDED), "eth1"), OTHER_INTERFACE)

    def test_whatever_the_order(self) -> None:
        lines = RECORDED.splitlines()
        for shuffled in (lines[::-1], lines[3:] + lines[:3]):
            self.assertEqual(choose_public(parse_if_inet6("\n".join(shuffled)), "eth0"), SLAAC)

    def test_none_without_a_reliable_address(self) -> None:
        self.assertIsNone(choose_public(parse_if_inet6(RECORDED), "eth9"))
        temporary_only = [line for line in RECORDED.splitlines() if line.endswith(" 01     eth0")]
        self.assertIsNone(choose_public(parse_if_inet6("\n".join(temporary_only)), "eth0"))

    def test_none_without_ipv6(self) -> None:
        self.assertIsNone(public_address("eth0", Path(self.mktemp())))

    def test_lines_of_another_shape_are_skipped(self) -> None:
        self.assertEqual(
            parse_if_inet6("garbage\n\n" + RECORDED.splitlines()[1]),
            [InterfaceAddress(TEMPORARY, "eth0", 0, 1, 64)],
        )


class BothReadersTests(SynchronousTestCase):
    """Gossip and the mesh ask the same question and get the same answer."""

    def setUp(self) -> None:
        self.if_inet6 = Path(self.mktemp())
        self.if_inet6.write_text(RECORDED)
        self.config = node_config(Path(self.mktemp()), iface="eth0")
        self.rt = FakeRtNetlink()
        self.rt.make_link("eth0", mtu=1400)

    def test_gossip_and_mesh_agree(self) -> None:
        endpoint = gossip_endpoint(self.config, self.if_inet6)
        underlay = find_underlay(self.rt, self.config, self.if_inet6)
        assert underlay is not None
        self.assertEqual(endpoint.host, SLAAC)
        self.assertEqual(underlay.address, SLAAC)

    def test_neither_without_an_address(self) -> None:
        self.if_inet6.write_text("\n".join(RECORDED.splitlines()[:2]))  # lo, a temporary
        self.assertRaises(GossipError, gossip_endpoint, self.config, self.if_inet6)
        self.assertIsNone(find_underlay(self.rt, self.config, self.if_inet6))


class NamespaceTests(SynchronousTestCase):
    """The kernel's own flags: a real temporary, deprecated and stable address on one link.

    ``ip address add`` cannot make a temporary address (the kernel sets IFA_F_TEMPORARY
    only on addresses it derives itself), so host ``b`` sends host ``a`` a router
    advertisement with an autonomous prefix while ``a`` has ``use_tempaddr`` on: the
    kernel makes a stable SLAAC address and a temporary one beside it.  Which of the
    two is lower is chance; the reliable set says which ones the rule keeps.
    """

    PREFIX = ipaddress.IPv6Network("2001:db8:0:5::/64")  # below the lab's 2001:db8:1::/64
    DEPRECATED = ipaddress.IPv6Address("2001:db8::d")

    def setUp(self) -> None:
        why = netlab.missing_requirements()
        if why:
            raise self.skipTest(why)
        self.lab = netlab.Lab("h17a")
        self.addCleanup(self.lab.close)
        self.host = self.lab.add_host("a")
        self.router = self.lab.add_host("b")

    def addresses(self) -> dict[ipaddress.IPv6Address, list[str]]:
        """eth0's global addresses as ``ip`` shows them, with its words for their flags."""
        shown = json.loads(self.host.run(["ip", "-j", "-6", "addr", "show", "dev", "eth0"]).stdout)
        return {
            ipaddress.IPv6Address(info["local"]): [
                word
                for word in ("temporary", "deprecated", "tentative", "dadfailed", "mngtmpaddr")
                if info.get(word)
            ]
            for link in shown
            for info in link["addr_info"]
            if info["scope"] == "global"
        }

    def both_slaac_addresses(self) -> dict[ipaddress.IPv6Address, list[str]] | None:
        """:meth:`addresses` once the stable and temporary ones joined the two we added."""
        found = self.addresses()
        return found if len(found) == 4 else None

    def advertise(self, prefix: ipaddress.IPv6Network) -> None:
        """A router advertisement from ``b``: no default route, one autonomous prefix."""
        index = int(self.router.run(["cat", "/sys/class/net/eth0/ifindex"]).stdout)
        sock = netlab.netns_socket(
            self.router.netns, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6
        )
        self.addCleanup(sock.close)
        # RFC 4861 4.2 and 4.6.2; the kernel fills in the checksum of ICMPv6 raw sockets.
        # Hosts take advertisements only with a hop limit of 255 (not forwarded).
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        header = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 0, 0, 0)
        on_link_autonomous = 0xC0
        option = struct.pack(
            "!BBBBIII16s",
            3,
            4,
            64,
            on_link_autonomous,
            7200,
            3600,
            0,
            prefix.network_address.packed,
        )
        sock.sendto(header + option, ("ff02::1", 0, 0, index))

    def test_the_public_address_is_the_stable_one(self) -> None:
        self.host.run(["sysctl", "-q", "-w", "net.ipv6.conf.eth0.use_tempaddr=2"])
        self.host.run(
            [
                "ip",
                "addr",
                "add",
                f"{self.DEPRECATED}/64",
                "dev",
                "eth0",
                "nodad",
                "preferred_lft",
                "0",
            ]
        )
        self.advertise(self.PREFIX)
        kinds = netlab.wait_until(self.both_slaac_addresses, 10, what="the SLAAC addresses")
        (slaac,) = (address for address, words in kinds.items() if "mngtmpaddr" in words)
        (temporary,) = (address for address, words in kinds.items() if "temporary" in words)
        self.assertEqual(
            kinds,
            {
                slaac: ["mngtmpaddr"],
                temporary: ["temporary"],
                self.DEPRECATED: ["deprecated"],
                self.host.address: [],
            },
        )
        # The kernel's table read as the agent reads its own: through a process inside.
        process = self.host.spawn(["sleep", "60"])
        # Once it runs sleep, ``ip netns exec`` has moved it into the namespace.
        netlab.wait_until(
            lambda: os.readlink(f"/proc/{process.pid}/exe").endswith("/sleep"), 10, what="sleep"
        )
        if_inet6 = Path(f"/proc/{process.pid}/net/if_inet6")
        reliable = {
            entry.address
            for entry in parse_if_inet6(if_inet6.read_text())
            if entry.interface == "eth0" and entry.reliable
        }
        self.assertEqual(reliable, {slaac, self.host.address})
        self.assertEqual(public_address("eth0", if_inet6), slaac)  # the lower one
        config = node_config(Path(self.mktemp()), iface="eth0")
        self.assertEqual(gossip_endpoint(config, if_inet6).host, slaac)
        rt = FakeRtNetlink()
        rt.make_link("eth0", mtu=1500)
        underlay = find_underlay(rt, config, if_inet6)
        assert underlay is not None
        self.assertEqual(underlay.address, slaac)
