"""The kernel backend and the interface's IP side, by the netlink requests they make.

This kernel has no WireGuard: :class:`~hepto.mesh.testing.FakeWireGuard` stands in for
it, with pyroute2's own message encoding and decoding on both sides, and
:class:`~hepto.mesh.testing.FakeRtNetlink` for the links (``test_mesh_rtnetlink.py``
tests the real one).
"""

from __future__ import annotations

import errno
import ipaddress

import pyroute2
from pyroute2.netlink.exceptions import NetlinkError as GenericNetlinkError
from twisted.trial.unittest import SynchronousTestCase

from hepto.config import Endpoint
from hepto.mesh.backend import AddPeer, BackendUnavailable, PeerSpec, RemovePeer, UpdatePeer
from hepto.mesh.kernel import KernelBackend, parse_info, peer_request, pyroute2_wireguard
from hepto.mesh.keys import KeyPair
from hepto.mesh.links import Links, interface_with, link_mtu
from hepto.mesh.rtnetlink import NetlinkError
from hepto.mesh.testing import FakeRtNetlink, FakeWireGuard

A = KeyPair.generate()
B = KeyPair.generate()
MESH = ipaddress.IPv6Network("fd00:1:2:100::/64")
PODS = ipaddress.IPv6Network("fd00:1:2:205::/64")


def spec(keys: KeyPair, index: int, *networks: str) -> PeerSpec:
    return PeerSpec(
        f"n{index}",
        keys.public_key,
        Endpoint(ipaddress.IPv6Address(f"2001:db8::{index}"), 51820),
        frozenset(ipaddress.IPv6Network(n) for n in (f"fd00:1:2:100::{index}/128", *networks)),
        25,
    )


class KernelBackendTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ipr = FakeRtNetlink()
        self.wireguard = FakeWireGuard()
        self.backend = KernelBackend(self.ipr, lambda: self.wireguard, "hepto0")

    def start(self) -> None:
        self.successResultOf(self.backend.start(lambda: None))

    def test_start_creates_a_wireguard_link(self) -> None:
        self.start()
        self.assertEqual(self.ipr.requests, [("add_link", {"name": "hepto0", "kind": "wireguard"})])

    def test_no_kernel_support_is_unavailable(self) -> None:
        self.ipr.supports_wireguard = False
        failure = self.failureResultOf(self.backend.start(lambda: None), BackendUnavailable)
        self.assertIn("no WireGuard", failure.getErrorMessage())

    def test_missing_generic_netlink_family_is_unavailable(self) -> None:
        def refuse() -> FakeWireGuard:
            raise GenericNetlinkError(errno.ENOENT, "No such file or directory")

        self.patch(pyroute2, "WireGuard", refuse)
        backend = KernelBackend(self.ipr, pyroute2_wireguard, "hepto0")
        failure = self.failureResultOf(backend.start(lambda: None), BackendUnavailable)
        self.assertIn("no WireGuard generic netlink family", failure.getErrorMessage())

    def test_existing_wireguard_link_is_taken_over(self) -> None:
        self.ipr.make_link("hepto0", "wireguard")
        self.start()
        self.assertEqual(len(self.ipr.links), 1)

    def test_existing_link_of_another_kind_is_refused(self) -> None:
        self.ipr.make_link("hepto0", "veth")
        failure = self.failureResultOf(self.backend.start(lambda: None), BackendUnavailable)
        self.assertIn("veth", failure.getErrorMessage())

    def test_other_netlink_errors_propagate(self) -> None:
        class Unprivileged(FakeRtNetlink):
            def add_link(self, name: str, kind: str) -> None:
                raise NetlinkError(errno.EPERM, "Operation not permitted")

        backend = KernelBackend(Unprivileged(), lambda: self.wireguard, "hepto0")
        failure = self.failureResultOf(backend.start(lambda: None), NetlinkError)
        self.assertEqual(failure.value.errno, errno.EPERM)

    def test_configure_sends_base64_key_and_port(self) -> None:
        self.start()
        self.successResultOf(self.backend.configure(A.private_key, 51820))
        self.assertEqual(
            self.wireguard.requests,
            [{"interface": "hepto0", "private_key": A.private_key, "listen_port": 51820}],
        )
        device = self.successResultOf(self.backend.read())
        self.assertEqual((device.private_key, device.listen_port), (A.private_key, 51820))

    def test_peer_requests(self) -> None:
        add = AddPeer(spec(A, 1, str(PODS)))
        self.assertEqual(
            peer_request(add),
            {
                "public_key": A.public_key,
                "endpoint_addr": "2001:db8::1",
                "endpoint_port": 51820,
                "persistent_keepalive": 25,
                "replace_allowed_ips": True,
                "allowed_ips": ["fd00:1:2:100::1/128", str(PODS)],
            },
        )
        update = peer_request(UpdatePeer(spec(A, 1), endpoint=False))
        self.assertNotIn("endpoint_addr", update)
        self.assertTrue(update["update_only"])
        self.assertIn("endpoint_addr", peer_request(UpdatePeer(spec(A, 1), endpoint=True)))
        self.assertEqual(
            peer_request(RemovePeer(A.public_key)), {"public_key": A.public_key, "remove": True}
        )

    def test_apply_and_read_back_through_pyroute2_messages(self) -> None:
        self.start()
        first, second = spec(A, 1, str(PODS)), spec(B, 2)
        self.successResultOf(self.backend.apply([AddPeer(first), AddPeer(second)]))
        self.wireguard.peers[A.public_key]["rx_bytes"] = 1234
        device = self.successResultOf(self.backend.read())
        self.assertEqual(set(device.peers), {A.public_key, B.public_key})
        peer = device.peers[A.public_key]
        self.assertEqual(peer.endpoint, "[2001:db8::1]:51820")
        self.assertEqual(peer.allowed_ips, first.allowed_ips)
        self.assertEqual((peer.keepalive, peer.rx_bytes, peer.last_handshake), (25, 1234, None))
        self.successResultOf(self.backend.apply([RemovePeer(B.public_key)]))
        self.assertEqual(set(self.successResultOf(self.backend.read()).peers), {A.public_key})

    def test_update_only_never_resurrects(self) -> None:
        self.start()
        self.successResultOf(self.backend.apply([UpdatePeer(spec(A, 1), endpoint=True)]))
        self.assertEqual(self.successResultOf(self.backend.read()).peers, {})

    def test_peer_split_over_two_dump_messages_is_merged(self) -> None:
        wireguard = FakeWireGuard()
        wireguard.set("hepto0", peer=peer_request(AddPeer(spec(A, 1))))
        first = wireguard.info("hepto0")
        wireguard.peers[A.public_key]["allowed_ips"] = [str(PODS)]
        second = wireguard.info("hepto0")[1:]
        device = parse_info([*first, *second])
        self.assertEqual(
            device.peers[A.public_key].allowed_ips,
            {ipaddress.IPv6Network("fd00:1:2:100::1/128"), PODS},
        )
        self.assertEqual(device.peers[A.public_key].endpoint, "[2001:db8::1]:51820")

    def test_stop_deletes_the_link(self) -> None:
        self.start()
        self.successResultOf(self.backend.stop())
        self.assertEqual(self.ipr.links, {})
        self.assertTrue(self.wireguard.closed)


class LinksTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ipr = FakeRtNetlink()
        self.link = self.ipr.make_link("hepto0", "wireguard", mtu=1420)
        self.link.flags = 0
        self.links = Links(self.ipr, "hepto0")
        self.me = ipaddress.IPv6Address("fd00:1:2:100::9")

    def test_first_sync_sets_everything(self) -> None:
        done = self.links.sync(frozenset({self.me}), frozenset({MESH, PODS}), 1320)
        self.assertEqual(
            done,
            ["mtu 1320 up", f"address +{self.me}/128", f"route +{MESH}", f"route +{PODS}"],
        )
        self.assertEqual(self.link.mtu, 1320)
        route = self.ipr.requests[-2]
        self.assertEqual(route, ("add_route", {"destination": str(MESH), "oif": self.link.index}))
        self.assertIn((self.link.index, str(MESH.network_address), 64, 4), self.ipr.routes)

    def test_nothing_changed_means_no_request(self) -> None:
        self.links.sync(frozenset({self.me}), frozenset({MESH, PODS}), 1320)
        self.ipr.requests.clear()
        self.assertEqual(self.links.sync(frozenset({self.me}), frozenset({MESH, PODS}), 1320), [])
        self.assertEqual(self.ipr.requests, [])

    def test_stale_routes_and_addresses_go_kernel_routes_stay(self) -> None:
        apiserver = ipaddress.IPv6Address("fd00:1:2:100::a")
        self.links.sync(frozenset({self.me, apiserver}), frozenset({MESH, PODS}), 1320)
        done = self.links.sync(frozenset({self.me}), frozenset({MESH}), 1320)
        self.assertEqual(done, [f"address -{apiserver}/128", f"route -{PODS}"])
        kernel_routes = [r for r in self.ipr.routes if r[3] == 2]
        self.assertEqual(len(kernel_routes), 2, "the kernel's own routes are not ours")

    def test_missing_link(self) -> None:
        from hepto.mesh.links import LinkMissing

        self.assertRaises(LinkMissing, Links(self.ipr, "nope").sync, frozenset(), frozenset(), 1280)


class UnderlayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ipr = FakeRtNetlink()
        eth = self.ipr.make_link("eth0", mtu=1400)
        self.ipr.addresses += [
            (eth.index, "fe80::1", 64, 0x80),
            (eth.index, "2001:db8::6", 64, 0x80),
        ]

    def test_interface_and_mtu_of_an_address(self) -> None:
        self.assertEqual(interface_with(self.ipr, ipaddress.IPv6Address("2001:db8::6")), "eth0")
        self.assertIsNone(interface_with(self.ipr, ipaddress.IPv6Address("2001:db8::7")))
        self.assertEqual(link_mtu(self.ipr, "eth0"), 1400)
        self.assertIsNone(link_mtu(self.ipr, "eth9"))
