"""The stream server's intake: a few served at once, the rest waiting their turn unread."""

from __future__ import annotations

from twisted.internet.address import IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from hepto.gossip.crypto import Keyring
from hepto.gossip.streams import BUSY, IDLE_TIMEOUT, StreamServer, StreamServerFactory


class Silent:
    def respond(self, request: object, peer: object) -> None:
        return None


class IntakeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        keyring = Keyring.from_cluster_keys((bytes(32),), "test", self.clock)
        self.factory = StreamServerFactory(keyring, self.clock, Silent(), limit=2, backlog=2)

    def connect(self, port: int) -> tuple[StreamServer, StringTransport]:
        stream = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv6Address("TCP", "2001:db8::1", port))
        stream.makeConnection(transport)
        return stream, transport

    def hang_up(self, stream: StreamServer) -> None:
        stream.connectionLost()

    def test_beyond_the_limit_streams_wait_unread_then_are_served_in_order(self) -> None:
        served = [self.connect(port) for port in (1, 2)]
        first_waiting, second_waiting = self.connect(3), self.connect(4)
        self.assertEqual(self.factory.open, {served[0][0], served[1][0]})
        self.assertEqual(first_waiting[1].producerState, "paused")
        self.assertEqual(second_waiting[1].producerState, "paused")
        self.hang_up(served[0][0])
        self.assertIn(first_waiting[0], self.factory.open)
        self.assertEqual(first_waiting[1].producerState, "producing")
        self.assertEqual(second_waiting[1].producerState, "paused")
        self.assertEqual(self.factory.drops.counts.get(BUSY, 0), 0)

    def test_a_full_backlog_refuses_and_counts(self) -> None:
        for port in range(1, 5):
            self.connect(port)
        refused, transport = self.connect(5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.factory.drops.counts[BUSY], 1)
        self.assertNotIn(refused, self.factory.waiting)

    def test_a_waiting_stream_that_hangs_up_leaves_the_queue(self) -> None:
        served = [self.connect(port) for port in (1, 2)]
        gone, _ = self.connect(3)
        waiting, transport = self.connect(4)
        self.hang_up(gone)
        self.assertEqual(list(self.factory.waiting), [waiting])
        self.hang_up(served[1][0])
        self.assertIn(waiting, self.factory.open)
        self.assertEqual(transport.producerState, "producing")

    def test_the_idle_clock_starts_again_when_served(self) -> None:
        served = [self.connect(port) for port in (1, 2)]
        _, transport = self.connect(3)
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.hang_up(served[0][0])
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting, "a full idle timeout from being served")
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_abort_all_leaves_nothing_behind(self) -> None:
        streams = [self.connect(port) for port in range(1, 5)]
        self.factory.abort_all()
        for stream, transport in streams:
            self.assertTrue(transport.disconnecting)
            stream.connectionLost()
        self.assertEqual((self.factory.open, list(self.factory.waiting)), (set(), []))
