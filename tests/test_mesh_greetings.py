"""Greetings by datagram: what the greeter sends, for real, and what it does on refusal."""

from __future__ import annotations

import ipaddress
import socket

from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from hepto.mesh.greetings import Greeter

LOOPBACK = ipaddress.IPv6Address("::1")


class GreeterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.listener = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.addCleanup(self.listener.close)
        self.listener.bind(("::1", 0))
        self.listener.settimeout(5)
        self.greeter = Greeter(port=self.listener.getsockname()[1])
        self.addCleanup(self.greeter.close)

    def test_a_greeting_is_one_empty_datagram(self) -> None:
        self.greeter.greet(LOOPBACK)
        self.greeter.greet(LOOPBACK)
        for _ in range(2):
            self.assertEqual(self.listener.recvfrom(64)[0], b"")
        self.assertEqual((self.greeter.sent, self.greeter.failed), (2, 0))

    def test_a_refused_greeting_is_counted_and_said(self) -> None:
        refused = Greeter(port=0)  # the kernel sends no datagram to port 0
        self.addCleanup(refused.close)
        with capturedLogs() as events:
            refused.greet(LOOPBACK)
        self.assertEqual((refused.sent, refused.failed), (0, 1))
        self.assertIn("Could not greet ::1 through the mesh", formatEvent(events[0]))

    def test_closed_then_greeting_again(self) -> None:
        self.greeter.greet(LOOPBACK)
        self.greeter.close()
        self.greeter.close()
        self.greeter.greet(LOOPBACK)
        self.assertEqual(self.greeter.sent, 2)
        self.assertEqual(self.listener.recvfrom(64)[0], b"")
