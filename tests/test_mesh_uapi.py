"""wireguard-go's UAPI: the text format, the transaction protocol, and a real wireguard-go."""

from __future__ import annotations

import ipaddress
import shutil
import tempfile
from pathlib import Path

from twisted.internet import defer, error
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

import netlab
from hepto.config import Endpoint
from hepto.mesh import uapi
from hepto.mesh.backend import AddPeer, PeerSpec, RemovePeer, UpdatePeer
from hepto.mesh.keys import KeyPair, base64_to_hex
from hepto.mesh.uapi import (
    UAPIClient,
    UAPIError,
    UAPIProtocolError,
    UAPITransaction,
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


class TransactionTests(SynchronousTestCase):
    def test_request_reply_hangup(self) -> None:
        transaction = UAPITransaction(b"get=1\n\n")
        transport = StringTransport()
        transaction.makeConnection(transport)
        self.assertEqual(transport.value(), b"get=1\n\n")
        transaction.dataReceived(b"listen_port=1\ner")
        self.assertNoResult(transaction.reply)
        transaction.dataReceived(b"rno=0\n\n")
        self.assertEqual(self.successResultOf(transaction.reply), b"listen_port=1\nerrno=0\n")
        self.assertTrue(transport.disconnecting)

    def test_lost_before_the_reply(self) -> None:
        transaction = UAPITransaction(b"get=1\n\n")
        transaction.makeConnection(StringTransport())
        transaction.dataReceived(b"listen_port=1\n")
        transaction.connectionLost(None)
        self.failureResultOf(transaction.reply, UAPIProtocolError)

    def test_endless_reply_is_cut(self) -> None:
        transaction = UAPITransaction(b"get=1\n\n")
        transaction.makeConnection(StringTransport())
        chunk = b"x=1\n" * 65536
        while not transaction.reply.called:
            transaction.dataReceived(chunk)
        self.failureResultOf(transaction.reply, UAPIProtocolError)

    def test_timeout(self) -> None:
        reactor = MemoryReactorClock()
        client = UAPIClient(reactor, Path("/nonexistent.sock"), timeout=5)
        reply = client.transact(b"get=1\n\n")
        (connection,) = reactor.unixClients
        self.assertEqual(connection[0], "/nonexistent.sock")
        reactor.advance(5)
        self.failureResultOf(reply, defer.TimeoutError)


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
        with self.assertRaises(UAPIError):
            await client.set(b"set=1\nlisten_port=notaport\n\n")

    def test_round_trip(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._round_trip())

    def test_socket_is_in_the_agents_directory_only(self) -> None:
        socket = self.socket_dir / "hepto0.sock"
        self.assertGreater(len(str(socket)), 107)
        self.assertTrue(socket.is_socket())
        self.assertFalse(Path("/run/wireguard/hepto0.sock").exists())

    async def _refused(self) -> None:
        client = UAPIClient(self.backend.reactor, self.socket_dir / "absent.sock")
        with self.assertRaises(error.ConnectError):
            await client.get()

    def test_no_socket(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._refused())
