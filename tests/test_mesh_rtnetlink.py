"""hepto's own rtnetlink client: its formats without a kernel, then against a real one.

The formats are checked against what the kernel's headers say (hand-built bytes) and
against pyroute2's encoder, which the kernel backend still uses; the I/O with a scripted
socket; and the whole of it in a network namespace, where ``ip`` reads back what it did.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Iterable

from twisted.trial.unittest import SynchronousTestCase

import netlab
from hepto.mesh import rtnetlink as rtn
from hepto.mesh.backend import BackendUnavailable
from hepto.mesh.kernel import KernelBackend
from hepto.mesh.links import Links, interface_with, link_mtu
from hepto.mesh.rtnetlink import NetlinkError, RtNetlink

MESH = ipaddress.IPv6Network("fd00:1:2:100::/64")
PODS = ipaddress.IPv6Network("fd00:1:2:205::/64")
ME = ipaddress.IPv6Address("fd00:1:2:100::9")


def header(length: int, kind: int, flags: int, seq: int) -> bytes:
    return struct.pack("=IHHII", length, kind, flags, seq, 0)


def message(kind: int, seq: int, body: bytes, flags: int = 0) -> bytes:
    return rtn.request(kind, flags, seq, body) + b"\0" * (-len(body) % 4)


def ack(seq: int, code: int = 0, text: str | None = None) -> bytes:
    body = struct.pack("=i", -code) + header(16, 0, 0, seq)
    flags = rtn.NLM_F_CAPPED
    if text is not None:
        body += rtn.attribute(rtn.NLMSGERR_ATTR_MSG, text.encode() + b"\0")
        flags |= rtn.NLM_F_ACK_TLVS
    return message(rtn.NLMSG_ERROR, seq, body, flags)


class EncodingTests(SynchronousTestCase):
    def test_attribute_is_padded(self) -> None:
        self.assertEqual(rtn.attribute(3, b"eth"), struct.pack("=HH", 7, 3) + b"eth\0")
        self.assertEqual(len(rtn.attribute(4, b"\1\2\3\4")), 8)

    def test_link_up_with_mtu(self) -> None:
        body = rtn.link_request(index=7, mtu=1320, up=True)
        self.assertEqual(
            body,
            struct.pack("=BxHiII", 0, 0, 7, rtn.IFF_UP, rtn.IFF_UP)
            + struct.pack("=HHI", 8, rtn.IFLA_MTU, 1320),
        )

    def test_new_link_of_a_kind(self) -> None:
        body = rtn.link_request(name="hepto0", kind="wireguard")
        found = rtn.attributes(body[16:])
        self.assertEqual(found[rtn.IFLA_IFNAME], b"hepto0\0")
        self.assertEqual(rtn.attributes(found[rtn.IFLA_LINKINFO]), {1: b"wireguard"})

    def test_address(self) -> None:
        body = rtn.address_request(3, ME, 128, flags=0x02)
        self.assertEqual(body[:8], struct.pack("=BBBBI", socket.AF_INET6, 128, 0x02, 0, 3))
        found = rtn.attributes(body[8:])
        self.assertEqual(found[rtn.IFA_LOCAL], ME.packed)
        self.assertEqual(found[rtn.IFA_ADDRESS], ME.packed)
        self.assertNotIn(rtn.IFA_FLAGS, found, "flags fit the header")
        wide = rtn.attributes(rtn.address_request(3, ME, 128, flags=0x800)[8:])
        self.assertEqual(wide[rtn.IFA_FLAGS], struct.pack("=I", 0x800))

    def test_route(self) -> None:
        body = rtn.route_request(MESH, 3)
        self.assertEqual(
            body[:12],
            struct.pack("=BBBBBBBBI", socket.AF_INET6, 64, 0, 0, 254, 4, 0, 1, 0),
        )
        found = rtn.attributes(body[12:])
        self.assertEqual(found[rtn.RTA_DST], MESH.network_address.packed)
        self.assertEqual(found[rtn.RTA_OIF], struct.pack("=I", 3))
        self.assertEqual(found[rtn.RTA_TABLE], struct.pack("=I", 254))
        default = rtn.attributes(rtn.route_request(ipaddress.IPv6Network("::/0"), 3)[12:])
        self.assertNotIn(rtn.RTA_DST, default)

    def test_same_bytes_as_pyroute2(self) -> None:
        """pyroute2's encoder, which the kernel accepts, makes the same messages."""
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
        from pyroute2.netlink.rtnl.rtmsg import rtmsg

        theirs = ifaddrmsg()
        theirs["family"] = socket.AF_INET6
        theirs["prefixlen"] = 128
        theirs["flags"] = 0x02
        theirs["index"] = 3
        theirs["attrs"] = [("IFA_LOCAL", str(ME)), ("IFA_ADDRESS", str(ME))]
        theirs.encode()
        ours = rtn.address_request(3, ME, 128, flags=0x02)
        self.assertEqual(bytes(theirs.data[16 : theirs["header"]["length"]]), ours)
        route = rtmsg()
        route["family"] = socket.AF_INET6
        route["dst_len"] = 64
        route["table"] = 254
        route["proto"] = 4
        route["type"] = 1
        route["attrs"] = [
            ("RTA_DST", str(MESH.network_address)),
            ("RTA_OIF", 3),
            ("RTA_TABLE", 254),
        ]
        route.encode()
        self.assertEqual(
            bytes(route.data[16 : route["header"]["length"]]), rtn.route_request(MESH, 3)
        )


class DecodingTests(SynchronousTestCase):
    def test_split_messages(self) -> None:
        data = message(16, 1, b"abcd") + message(3, 1, b"\0\0\0\0", rtn.NLM_F_MULTI)
        kinds = [(m.type, m.seq, m.body) for m in rtn.split(data)]
        self.assertEqual(kinds, [(16, 1, b"abcd"), (3, 1, b"\0\0\0\0")])
        self.assertRaises(rtn.NetlinkProtocolError, list, rtn.split(header(99, 16, 0, 1)))

    def test_link(self) -> None:
        body = (
            struct.pack("=BxHiII", 0, 0, 5, rtn.IFF_UP | 0x40, 0)
            + rtn.attribute(rtn.IFLA_IFNAME, b"hepto0\0")
            + rtn.attribute(rtn.IFLA_MTU, struct.pack("=I", 1420))
            # NLA_F_NESTED set, as the kernel does.
            + rtn.attribute(0x8000 | rtn.IFLA_LINKINFO, rtn.attribute(1, b"wireguard\0"))
        )
        link = rtn.parse_link(body)
        self.assertEqual(link, rtn.Link(5, "hepto0", 1420, rtn.IFF_UP | 0x40, "wireguard"))
        self.assertTrue(link.up)

    def test_address_with_wide_flags(self) -> None:
        body = (
            struct.pack("=BBBBI", socket.AF_INET6, 64, 0x80, 0, 2)
            + rtn.attribute(rtn.IFA_ADDRESS, ME.packed)
            + rtn.attribute(rtn.IFA_FLAGS, struct.pack("=I", 0x880))
        )
        self.assertEqual(rtn.parse_address(body), rtn.Address(2, ME, 64, 0x880, 0))
        self.assertIsNone(rtn.parse_address(struct.pack("=BBBBI", 10, 64, 0, 0, 2)))

    def test_route_and_default_route(self) -> None:
        body = struct.pack("=BBBBBBBBI", socket.AF_INET6, 64, 0, 0, 254, 4, 0, 1, 0)
        route = rtn.parse_route(
            body
            + rtn.attribute(rtn.RTA_DST, MESH.network_address.packed)
            + rtn.attribute(rtn.RTA_OIF, struct.pack("=I", 3))
        )
        self.assertEqual(route, rtn.Route(MESH, 3, 254, 4, 1))
        default = rtn.parse_route(
            struct.pack("=BBBBBBBBI", socket.AF_INET6, 0, 0, 0, 0, 3, 0, 1, 0)
            + rtn.attribute(rtn.RTA_TABLE, struct.pack("=I", 1000))
        )
        self.assertEqual(default, rtn.Route(ipaddress.IPv6Network("::/0"), None, 1000, 3, 1))

    def test_routes_parsed_once(self) -> None:
        """The resync dumps the same routes every 10 s: each destination is parsed once."""
        parsed, parse = [], ipaddress.ip_network

        def counted(value: object) -> object:
            parsed.append(value)
            return parse(value)  # type: ignore[arg-type]

        self.patch(rtn.ipaddress, "ip_network", counted)
        # A prefix no other test parses, so that the cache starts without it.
        prefix = ipaddress.IPv6Network("fd00:7:7:7::/64")
        body = struct.pack("=BBBBBBBBI", socket.AF_INET6, 64, 0, 0, 254, 4, 0, 1, 0)
        body += rtn.attribute(rtn.RTA_DST, prefix.network_address.packed)
        first, second = rtn.parse_route(body), rtn.parse_route(body)
        self.assertEqual((first.destination, second.destination), (prefix, prefix))
        self.assertEqual(len(parsed), 1)

    def test_malformed_address_fails_every_time(self) -> None:
        body = struct.pack("=BBBBI", socket.AF_INET6, 64, 0, 0, 2)
        body += rtn.attribute(rtn.IFA_ADDRESS, b"\x01\x02\x03")
        self.assertRaises(ValueError, rtn.parse_address, body)
        self.assertRaises(ValueError, rtn.parse_address, body)

    def test_error_with_the_kernels_text(self) -> None:
        (error,) = rtn.split(ack(9, errno.EEXIST, "ipv6: address already assigned"))
        self.assertEqual(rtn.parse_error(error), (errno.EEXIST, "ipv6: address already assigned"))
        (plain,) = rtn.split(ack(9))
        self.assertEqual(rtn.parse_error(plain), (0, None))


class ScriptedSocket:
    """Answers each ``send`` with the datagrams the test gives, seq set to the request's."""

    def __init__(self, *answers: Iterable[bytes]) -> None:
        self.answers = [list(datagrams) for datagrams in answers]
        self.sent: list[bytes] = []
        self.queue: list[bytes] = []

    def setsockopt(self, *arguments: object) -> None:
        pass

    def settimeout(self, timeout: float) -> None:
        pass

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        (seq,) = struct.unpack_from("=I", data, 8)
        for datagram in self.answers.pop(0):
            self.queue.append(datagram.replace(b"SEQ!", struct.pack("=I", seq)))
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.queue.pop(0)

    def close(self) -> None:
        pass


def scripted(kind: int, body: bytes, flags: int = 0) -> bytes:
    """A message whose seq :class:`ScriptedSocket` fills in."""
    data = message(kind, 0, body, flags)
    return data[:8] + b"SEQ!" + data[12:]


def scripted_ack(code: int = 0, text: str | None = None) -> bytes:
    data = ack(0, code, text)
    return data[:8] + b"SEQ!" + data[12:]


class CallTests(SynchronousTestCase):
    def rt(self, *answers: Iterable[bytes]) -> tuple[RtNetlink, ScriptedSocket]:
        sock = ScriptedSocket(*answers)
        return RtNetlink(sock), sock  # type: ignore[arg-type]

    def test_request_is_acknowledged(self) -> None:
        rt, sock = self.rt([scripted_ack()])
        rt.set_link(4, mtu=1320, up=True)
        ((length, kind, flags, seq, _),) = [struct.unpack_from("=IHHII", d) for d in sock.sent]
        self.assertEqual((length, kind, seq), (len(sock.sent[0]), rtn.RTM_NEWLINK, 1))
        self.assertEqual(flags, rtn.NLM_F_REQUEST | rtn.NLM_F_ACK)

    def test_refusal_is_a_clear_error(self) -> None:
        rt, _ = self.rt([scripted_ack(errno.EEXIST, "ipv6: address already assigned")])
        error = self.assertRaises(NetlinkError, rt.add_address, 4, ME, 128)
        self.assertEqual(error.errno, errno.EEXIST)
        self.assertEqual(
            str(error),
            f"[Errno {errno.EEXIST}] RTM_NEWADDR {ME}/128: File exists "
            "(ipv6: address already assigned)",
        )

    def test_dump_over_several_datagrams_skipping_stale_answers(self) -> None:
        def route(network: ipaddress.IPv6Network, oif: int) -> bytes:
            return scripted(rtn.RTM_NEWROUTE, rtn.route_request(network, oif), rtn.NLM_F_MULTI)

        stale = message(rtn.RTM_NEWROUTE, 99, rtn.route_request(PODS, 9), rtn.NLM_F_MULTI)
        rt, sock = self.rt(
            [
                stale + route(MESH, 3),
                route(PODS, 3) + scripted(rtn.NLMSG_DONE, b"\0\0\0\0", rtn.NLM_F_MULTI),
            ]
        )
        routes = rt.get_routes()
        self.assertEqual([(r.destination, r.oif) for r in routes], [(MESH, 3), (PODS, 3)])
        (_, _, flags, _, _) = struct.unpack_from("=IHHII", sock.sent[0])
        self.assertEqual(flags, rtn.NLM_F_REQUEST | rtn.NLM_F_DUMP)

    def test_unknown_link_is_none(self) -> None:
        rt, _ = self.rt([scripted_ack(errno.ENODEV)], [scripted_ack(errno.EPERM)])
        self.assertIsNone(rt.link("nope"))
        self.assertRaises(NetlinkError, rt.link, "nope")


class NamespaceTests(SynchronousTestCase):
    """The client, Links and the underlay lookups against a real kernel, in a namespace."""

    def setUp(self) -> None:
        why = netlab.missing_requirements()
        if why:
            raise self.skipTest(why)
        self.lab = netlab.Lab("hxr")
        self.addCleanup(self.lab.close)
        self.host = self.lab.add_host("a")
        sock = netlab.netns_socket(
            self.host.netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE
        )
        self.rt = RtNetlink(sock)
        self.addCleanup(self.rt.close)

    def ip(self, *argv: str) -> str:
        return self.host.run(["ip", *argv]).stdout

    def test_underlay_lookups(self) -> None:
        self.assertEqual(interface_with(self.rt, self.host.address), "eth0")
        self.assertEqual(link_mtu(self.rt, "eth0"), 1500)
        self.assertIsNone(link_mtu(self.rt, "eth9"))

    def test_sync_a_link(self) -> None:
        # No WireGuard here, nor a dummy driver: a bridge is a link like any other.
        self.rt.add_link("hepto0", "bridge")
        links = Links(self.rt, "hepto0")
        done = links.sync(frozenset({ME}), frozenset({MESH, PODS}), 1320)
        self.assertEqual(
            done, ["mtu 1320 up", f"address +{ME}/128", f"route +{MESH}", f"route +{PODS}"]
        )
        shown = self.ip("-6", "addr", "show", "dev", "hepto0")
        self.assertIn("mtu 1320", shown)
        self.assertIn(f"inet6 {ME}/128 scope global nodad", shown)
        routes = self.ip("-6", "route", "show", "dev", "hepto0")
        self.assertIn(f"{MESH} proto static", routes)
        self.assertIn(f"{PODS} proto static", routes)
        self.assertEqual(links.sync(frozenset({ME}), frozenset({MESH, PODS}), 1320), [])
        # A hand edit is undone; what is no longer wanted goes; the kernel's routes stay.
        self.ip("-6", "route", "del", str(MESH), "dev", "hepto0")
        done = links.sync(frozenset(), frozenset({MESH}), 1320)
        self.assertEqual(done, [f"address -{ME}/128", f"route -{PODS}", f"route +{MESH}"])
        self.assertNotIn(str(ME), self.ip("-6", "addr", "show", "dev", "hepto0"))
        self.assertIn("fe80::/64 proto kernel", self.ip("-6", "route", "show", "dev", "hepto0"))

    def test_sync_undoes_an_address_with_host_bits(self) -> None:
        """A hand-added fd00::5/64 is an address on a prefix, not a prefix: it goes."""
        self.rt.add_link("hepto0", "bridge")
        links = Links(self.rt, "hepto0")
        links.sync(frozenset({ME}), frozenset({MESH}), 1320)
        self.ip("-6", "addr", "add", "fd00::5/64", "dev", "hepto0", "nodad")
        self.assertEqual(
            links.sync(frozenset({ME}), frozenset({MESH}), 1320), ["address -fd00::5/64"]
        )
        shown = self.ip("-6", "addr", "show", "dev", "hepto0")
        self.assertNotIn("fd00::5", shown)
        self.assertIn(f"inet6 {ME}/128", shown)
        self.assertEqual(links.sync(frozenset({ME}), frozenset({MESH}), 1320), [])

    def test_change_routes_alone(self) -> None:
        self.rt.add_link("hepto0", "bridge")
        links = Links(self.rt, "hepto0")
        links.sync(frozenset({ME}), frozenset({MESH}), 1320)
        self.assertEqual(links.change_routes(frozenset({PODS}), frozenset()), [f"route +{PODS}"])
        self.assertIn(f"{PODS} proto static", self.ip("-6", "route", "show", "dev", "hepto0"))
        # Already there, already gone: what was wanted, and said as nothing done.
        self.ip("-6", "route", "del", str(MESH), "dev", "hepto0")
        self.assertEqual(links.change_routes(frozenset({PODS}), frozenset({MESH})), [])
        self.assertEqual(links.change_routes(frozenset(), frozenset({PODS})), [f"route -{PODS}"])
        routes = self.ip("-6", "route", "show", "dev", "hepto0")
        self.assertNotIn(str(PODS), routes)
        self.assertIn(f"inet6 {ME}/128", self.ip("-6", "addr", "show", "dev", "hepto0"))

    def test_errors_name_the_request(self) -> None:
        self.rt.add_link("hepto0", "bridge")
        error = self.assertRaises(NetlinkError, self.rt.add_link, "hepto0", "bridge")
        self.assertEqual(error.errno, errno.EEXIST)
        self.assertIn("RTM_NEWLINK hepto0 type bridge: File exists", str(error))
        index = self.rt.link("hepto0").index  # type: ignore[union-attr]
        error = self.assertRaises(NetlinkError, self.rt.delete_route, MESH, index)
        self.assertEqual(error.errno, errno.ESRCH)
        self.rt.delete_link(index)
        self.assertIsNone(self.rt.link("hepto0"))
        self.assertIsNone(self.rt.link_by_index(index))

    def test_kernel_backend_without_kernel_wireguard(self) -> None:
        backend = KernelBackend(self.rt, object, "hepto0")
        started = backend.start(lambda: None)
        if backend.wireguard is not None:
            self.successResultOf(backend.stop())
            raise self.skipTest("this kernel has WireGuard")
        failure = self.failureResultOf(started, BackendUnavailable)
        self.assertEqual(failure.getErrorMessage(), "this kernel has no WireGuard")
        self.assertIsNone(self.rt.link("hepto0"))
