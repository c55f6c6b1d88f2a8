"""wireguard-go's UAPI: the text format, the transaction protocol, and a real wireguard-go."""

from __future__ import annotations

import ipaddress
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, error
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

import netlab
from hepto.config import Endpoint
from hepto.mesh import uapi
from hepto.mesh.backend import AddPeer, PeerSpec, RemovePeer, UpdatePeer
from hepto.mesh.keys import KeyPair, base64_to_hex
from hepto.mesh.uapi import (
    UAPIClient,
    UAPIConnection,
    UAPIError,
    UAPIProtocolError,
    parse_get,
    set_request,
)

A = KeyPair.generate()
B = KeyPair.generate()


def spec(keys: KeyPair, index: int, *networks: str) -> PeerSpec:
    return PeerSpec(
        f"n{index}",
        keys.public_key,
        Endpoint(ipaddress.IPv6Address(f"2001:db8::{index}"), 51820),
        frozenset(ipaddress.IPv6Network(n) for n in (f"fd00::{index}/128", *networks)),
        25,
    )


class FormatTests(SynchronousTestCase):
    def test_device_and_peers(self) -> None:
        request = set_request(
            A.private_key,
            51820,
            [
                RemovePeer(B.public_key),
                AddPeer(spec(A, 1, "fd00:200::/64")),
                UpdatePeer(spec(B, 2), endpoint=False),
                UpdatePeer(spec(B, 2), endpoint=True),
            ],
        )
        self.assertEqual(
            request.decode(),
            "set=1\n"
            f"private_key={base64_to_hex(A.private_key)}\n"
            "listen_port=51820\n"
            f"public_key={base64_to_hex(B.public_key)}\n"
            "remove=true\n"
            f"public_key={base64_to_hex(A.public_key)}\n"
            "endpoint=[2001:db8::1]:51820\n"
            "persistent_keepalive_interval=25\n"
            "replace_allowed_ips=true\n"
            "allowed_ip=fd00:200::/64\n"
            "allowed_ip=fd00::1/128\n"
            f"public_key={base64_to_hex(B.public_key)}\n"
            "update_only=true\n"
            "persistent_keepalive_interval=25\n"
            "replace_allowed_ips=true\n"
            "allowed_ip=fd00::2/128\n"
            f"public_key={base64_to_hex(B.public_key)}\n"
            "update_only=true\n"
            "endpoint=[2001:db8::2]:51820\n"
            "persistent_keepalive_interval=25\n"
            "replace_allowed_ips=true\n"
            "allowed_ip=fd00::2/128\n"
            "\n",
        )

    def test_parse_get(self) -> None:
        reply = (
            f"private_key={base64_to_hex(A.private_key)}\n"
            "listen_port=51820\n"
            f"public_key={base64_to_hex(B.public_key)}\n"
            "preshared_key=" + "0" * 64 + "\n"
            "protocol_version=1\n"
            "endpoint=[2001:db8::2]:51820\n"
            "last_handshake_time_sec=1700000000\n"
            "last_handshake_time_nsec=500000000\n"
            "tx_bytes=92\n"
            "rx_bytes=148\n"
            "persistent_keepalive_interval=25\n"
            "allowed_ip=fd00::2/128\n"
            "allowed_ip=fd00:200::/64\n"
            f"public_key={base64_to_hex(A.public_key)}\n"
            "last_handshake_time_sec=0\n"
            "last_handshake_time_nsec=0\n"
            "errno=0\n"
        ).encode()
        device = parse_get(reply)
        self.assertEqual((device.private_key, device.listen_port), (A.private_key, 51820))
        peer = device.peers[B.public_key]
        self.assertEqual(peer.endpoint, "[2001:db8::2]:51820")
        self.assertEqual(peer.last_handshake, 1700000000.5)
        self.assertEqual((peer.rx_bytes, peer.tx_bytes, peer.keepalive), (148, 92, 25))
        self.assertEqual(
            peer.allowed_ips,
            {ipaddress.IPv6Network("fd00::2/128"), ipaddress.IPv6Network("fd00:200::/64")},
        )
        bare = device.peers[A.public_key]
        self.assertEqual(
            (bare.endpoint, bare.last_handshake, bare.allowed_ips), (None, None, set())
        )

    def test_values_parsed_once(self) -> None:
        """The resync reads the same peers every 10 s: their values are parsed once."""
        keys = KeyPair.generate()
        # Values no other test parses, so that the caches start without them.
        suffix = int.from_bytes(bytes.fromhex(base64_to_hex(keys.public_key))[:2], "big")
        reply = (
            f"public_key={base64_to_hex(keys.public_key)}\n"
            f"endpoint=[2001:db8:7::{suffix:x}]:51820\n"
            f"allowed_ip=fd07::{suffix:x}/128\n"
            "errno=0\n"
        ).encode()
        parsed, parse = [], ipaddress.ip_network

        def counted(value: str) -> Any:
            parsed.append(value)
            return parse(value)

        self.patch(uapi.ipaddress, "ip_network", counted)
        first, second = parse_get(reply), parse_get(reply)
        self.assertEqual(first, second)
        self.assertEqual(parsed, [f"fd07::{suffix:x}/128"])
        peer = second.peers[keys.public_key]
        self.assertEqual(peer.endpoint, f"[2001:db8:7::{suffix:x}]:51820")
        self.assertEqual(peer.allowed_ips, {ipaddress.IPv6Network(f"fd07::{suffix:x}/128")})

    def test_errors_are_not_remembered(self) -> None:
        """A malformed value fails every time, and a good one after it is parsed right."""
        bad = b"public_key=" + b"00" * 32 + b"\nallowed_ip=fd00::1/129\nerrno=0\n"
        self.assertRaises(UAPIProtocolError, parse_get, bad)
        self.assertRaises(UAPIProtocolError, parse_get, bad)
        good = parse_get(b"public_key=" + b"00" * 32 + b"\nallowed_ip=fd00::1/128\nerrno=0\n")
        (peer,) = good.peers.values()
        self.assertEqual(peer.allowed_ips, {ipaddress.IPv6Network("fd00::1/128")})
        self.assertRaises(UAPIProtocolError, parse_get, b"public_key=zz\nerrno=0\n")
        self.assertRaises(UAPIProtocolError, parse_get, b"public_key=zz\nerrno=0\n")

    def test_unconfigured_device(self) -> None:
        device = parse_get(b"listen_port=44304\nerrno=0\n")
        self.assertEqual((device.private_key, device.listen_port, device.peers), (None, 44304, {}))

    def test_errors(self) -> None:
        failure = self.assertRaises(UAPIError, uapi.check_errno, b"errno=22\n", "set")
        self.assertEqual(failure.errno, 22)
        for reply in (
            b"listen_port=1\n",
            b"garbage\nerrno=0\n",
            b"errno=x\n",
            b"public_key=zz\nerrno=0\n",
            b"public_key=" + b"00" * 32 + b"\nendpoint=nowhere\nerrno=0\n",
            b"public_key=" + b"00" * 32 + b"\nallowed_ip=fd00::1/129\nerrno=0\n",
            b"public_key=" + b"00" * 32 + b"\nrx_bytes=-1\nerrno=0\n",
            "listen_port=1\u00e9\nerrno=0\n".encode(),
        ):
            with self.subTest(reply=reply):
                self.assertRaises(UAPIProtocolError, parse_get, reply)


def connected() -> tuple[UAPIConnection, StringTransport]:
    connection, transport = UAPIConnection(), StringTransport()
    connection.makeConnection(transport)
    return connection, transport


class ConnectionTests(SynchronousTestCase):
    def test_transactions_one_after_another(self) -> None:
        connection, transport = connected()
        reply = connection.transact(b"get=1\n\n")
        self.assertEqual(transport.value(), b"get=1\n\n")
        connection.dataReceived(b"listen_port=1\ner")
        self.assertNoResult(reply)
        connection.dataReceived(b"rno=0\n\n")
        self.assertEqual(self.successResultOf(reply), b"listen_port=1\nerrno=0\n")
        transport.clear()
        second = connection.transact(b"set=1\nlisten_port=2\n\n")
        self.assertEqual(transport.value(), b"set=1\nlisten_port=2\n\n")
        connection.dataReceived(b"errno=0\n\n")
        self.assertEqual(self.successResultOf(second), b"errno=0\n")
        self.assertTrue(connection.open)
        self.assertFalse(transport.disconnecting)

    def test_lost_before_the_reply(self) -> None:
        connection, _ = connected()
        reply = connection.transact(b"get=1\n\n")
        connection.dataReceived(b"listen_port=1\n")
        connection.connectionLost(None)
        self.failureResultOf(reply, UAPIProtocolError)
        self.assertFalse(connection.open)
        self.successResultOf(connection.close())

    def test_endless_reply_is_cut(self) -> None:
        connection, transport = connected()
        reply = connection.transact(b"get=1\n\n")
        chunk = b"x=1\n" * 65536
        while not reply.called:
            connection.dataReceived(chunk)
        self.failureResultOf(reply, UAPIProtocolError)
        self.assertTrue(transport.disconnected)

    def test_out_of_step(self) -> None:
        for unasked, extra in ((b"errno=0\n\n", b""), (b"", b"errno=0\n\nerrno=0\n\n")):
            with self.subTest(unasked=unasked, extra=extra):
                connection, transport = connected()
                if unasked:
                    connection.dataReceived(unasked)
                else:
                    reply = connection.transact(b"get=1\n\n")
                    connection.dataReceived(extra)
                    self.failureResultOf(reply, UAPIProtocolError)
                self.assertTrue(transport.disconnected)
                self.assertFalse(connection.open)

    def test_cancel_drops_the_connection(self) -> None:
        connection, transport = connected()
        reply = connection.transact(b"get=1\n\n")
        reply.cancel()
        self.failureResultOf(reply, defer.CancelledError)
        self.assertTrue(transport.disconnected)
        connection.connectionLost(None)  # later, from the reactor: nothing fires twice
        self.successResultOf(connection.close())


class ClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.client = UAPIClient(self.reactor, Path("/run/test.sock"), timeout=5)

    def accept(self, index: int) -> tuple[IProtocol, StringTransport]:
        """The client's ``index``-th connection attempt, accepted (its protocol wrapped)."""
        self.assertEqual(len(self.reactor.unixClients), index + 1)
        path, factory, *_ = self.reactor.unixClients[index]
        self.assertEqual(path, "/run/test.sock")
        connection = factory.buildProtocol(None)
        transport = StringTransport()
        connection.makeConnection(transport)
        return connection, transport

    def test_one_connection_serves_transactions_in_turn(self) -> None:
        first = self.client.transact(b"get=1\n\n")
        second = self.client.transact(b"set=1\nlisten_port=2\n\n")
        connection, transport = self.accept(0)
        self.assertEqual(transport.value(), b"get=1\n\n", "the second waits for the first")
        connection.dataReceived(b"errno=0\n\n")
        self.assertEqual(self.successResultOf(first), b"errno=0\n")
        self.assertEqual(transport.value(), b"get=1\n\nset=1\nlisten_port=2\n\n")
        connection.dataReceived(b"errno=0\n\n")
        self.successResultOf(second)
        third = self.client.transact(b"get=1\n\n")
        connection.dataReceived(b"errno=0\n\n")
        self.successResultOf(third)
        self.assertEqual((len(self.reactor.unixClients), self.client.connections), (1, 1))
        self.reactor.advance(10)  # no timeout left behind
        self.assertFalse(transport.disconnecting)

    def test_a_refusal_hangs_up(self) -> None:
        refused = self.client.transact(b"set=1\nlisten_port=x\n\n")
        connection, transport = self.accept(0)
        connection.dataReceived(b"errno=-22\n\n")
        self.assertEqual(self.successResultOf(refused), b"errno=-22\n")
        self.assertTrue(transport.disconnecting)
        after = self.client.transact(b"get=1\n\n")
        connection, _ = self.accept(1)
        connection.dataReceived(b"errno=0\n\n")
        self.successResultOf(after)

    def test_a_connection_closed_by_wireguard_go_is_made_again(self) -> None:
        reply = self.client.transact(b"get=1\n\n")
        connection, _ = self.accept(0)
        connection.dataReceived(b"errno=0\n\n")
        self.successResultOf(reply)
        self.assertEqual(self.client.connections, 1)
        connection.connectionLost(Failure(ConnectionDone()))  # wireguard-go restarted
        reply = self.client.transact(b"get=1\n\n")
        connection, _ = self.accept(1)
        connection.dataReceived(b"errno=0\n\n")
        self.assertEqual(self.successResultOf(reply), b"errno=0\n")
        self.assertEqual(self.client.connections, 2)

    def test_timeout(self) -> None:
        reply = self.client.transact(b"get=1\n\n")
        self.reactor.advance(5)
        self.failureResultOf(reply, defer.TimeoutError)

    def test_timeout_waiting_for_the_reply(self) -> None:
        stuck = self.client.transact(b"get=1\n\n")
        waiting = self.client.transact(b"get=1\n\n")
        connection, transport = self.accept(0)
        self.reactor.advance(5)
        self.failureResultOf(stuck, defer.TimeoutError)
        self.failureResultOf(waiting, defer.TimeoutError)
        self.assertTrue(transport.disconnected, "out of step: never reused")
        connection.connectionLost(Failure(ConnectionDone()))
        later = self.client.transact(b"get=1\n\n")
        # (The waiting one began a connection of its own in the instant before its end.)
        connection, _ = self.accept(2)
        connection.dataReceived(b"errno=0\n\n")
        self.successResultOf(later)

    def test_close(self) -> None:
        self.successResultOf(self.client.close())
        reply = self.client.transact(b"get=1\n\n")
        connection, transport = self.accept(0)
        connection.dataReceived(b"errno=0\n\n")
        self.successResultOf(reply)
        closed = self.client.close()
        self.assertNoResult(closed)
        self.assertTrue(transport.disconnecting)
        connection.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(closed)


def missing_wireguard_go() -> str | None:
    return netlab.missing_requirements("wireguard-go", "setpriv", "unshare")


class RealWireGuardGoTests(TestCase):
    """The UAPI client against wireguard-go in a network namespace."""

    timeout = 120

    def setUp(self) -> defer.Deferred[None]:  # type: ignore[override]
        from twisted.internet import reactor

        from hepto.mesh.userspace import UserspaceBackend

        why = missing_wireguard_go()
        if why:
            raise self.skipTest(why)
        lab = netlab.Lab("hm")
        self.addCleanup(lab.close)
        host = lab.add_host("uapi")
        # Deeper than sun_path allows, wherever the checkout is: the client must still reach
        # the socket (wireguard-go itself binds a short path in its own mount namespace).
        base = Path(tempfile.mkdtemp(prefix="hm-uapi-"))
        self.addCleanup(shutil.rmtree, base, ignore_errors=True)
        self.socket_dir = base / ("d" * 100)
        self.backend = UserspaceBackend(
            reactor, "hepto0", self.socket_dir, wrapper=host.command([])
        )
        self.addCleanup(self.backend.stop)
        return self.backend.start(lambda: None)

    async def _round_trip(self) -> None:
        client = self.backend.client
        await client.set(set_request(A.private_key, 51999))
        first, second = spec(B, 2, "fd00:200::/64"), spec(KeyPair.generate(), 3)
        await client.set(set_request(changes=[AddPeer(first), AddPeer(second)]))
        device = await client.get()
        self.assertEqual((device.private_key, device.listen_port), (A.private_key, 51999))
        self.assertEqual(set(device.peers), {first.public_key, second.public_key})
        peer = device.peers[first.public_key]
        self.assertEqual(peer.endpoint, "[2001:db8::2]:51820")
        self.assertEqual(peer.allowed_ips, first.allowed_ips)
        self.assertEqual(peer.keepalive, 25)
        # update_only never resurrects; remove removes.
        ghost = spec(KeyPair.generate(), 4)
        await client.set(
            set_request(changes=[RemovePeer(second.public_key), UpdatePeer(ghost, endpoint=True)])
        )
        device = await client.get()
        self.assertEqual(set(device.peers), {first.public_key})
        made = client.connections
        self.assertEqual(made, 1, "the first get's connection, kept")
        with self.assertRaises(UAPIError):
            await client.set(b"set=1\nlisten_port=notaport\npublic_key=" + b"0" * 64 + b"\n\n")
        # A refusal hangs up; the next transaction is answered on a connection of its own.
        device = await client.get()
        self.assertEqual(set(device.peers), {first.public_key})
        self.assertEqual(client.connections, made + 1)

    def test_round_trip(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._round_trip())

    def test_socket_is_in_the_agents_directory_only(self) -> None:
        socket = self.socket_dir / "hepto0.sock"
        self.assertGreater(len(str(socket)), 107)
        self.assertTrue(socket.is_socket())
        self.assertFalse(Path("/run/wireguard/hepto0.sock").exists())

    def test_no_socket(self) -> defer.Deferred[Any]:
        client = UAPIClient(self.backend.reactor, self.socket_dir / "absent.sock")
        refused: defer.Deferred[Any] = defer.Deferred.fromCoroutine(client.get())
        return self.assertFailure(refused, error.ConnectError)
