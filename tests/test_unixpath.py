"""Sockets whose paths are longer than sun_path: bound and reached all the same."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hepto import unixpath


def deep_directory(case: SynchronousTestCase) -> Path:
    base = Path(tempfile.mkdtemp(prefix="hepto-unix-"))
    case.addCleanup(shutil.rmtree, base, ignore_errors=True)
    directory = base / ("d" * 60) / ("e" * 60)
    directory.mkdir(parents=True)
    return directory


class ShortPathTests(SynchronousTestCase):
    def test_a_short_path_is_itself(self) -> None:
        short = unixpath.ShortPath(Path("/run/x.sock"))
        self.assertEqual(short.path, "/run/x.sock")
        short.close()

    def test_a_long_path_goes_through_the_directory_descriptor(self) -> None:
        path = deep_directory(self) / "s.sock"
        self.assertGreater(len(str(path)), unixpath.SUN_PATH_MAX)
        short = unixpath.ShortPath(path)
        self.assertLessEqual(len(short.path), unixpath.SUN_PATH_MAX)
        self.assertTrue(short.path.startswith("/proc/self/fd/"))
        Path(short.path).write_text("same file")
        self.assertEqual(path.read_text(), "same file")
        short.close()
        short.close()  # twice is harmless


class ConnectingTests(TestCase):
    timeout = 10

    async def _round_trip(self) -> None:
        path = deep_directory(self) / "echo.sock"
        bound = unixpath.ShortPath(path)
        self.addCleanup(bound.close)
        factory = protocol.Factory.forProtocol(protocol.Protocol)
        port = reactor.listenUNIX(bound.path, factory)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)

        def connect(short: str) -> defer.Deferred[protocol.Protocol]:
            client = protocol.Factory.forProtocol(protocol.Protocol)
            return UNIXClientEndpoint(reactor, short, timeout=5).connect(client)

        connected = await unixpath.connecting(path, connect)
        assert connected.transport is not None
        connected.transport.loseConnection()

    def test_a_long_path_is_reached(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._round_trip())

    async def _missing(self) -> None:
        path = deep_directory(self) / "absent" / "x.sock"

        def connect(short: str) -> defer.Deferred[object]:
            raise AssertionError("never asked to connect")

        with self.assertRaises(FileNotFoundError):
            await unixpath.connecting(path, connect)

    def test_a_missing_directory_fails_like_a_missing_socket(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._missing())
