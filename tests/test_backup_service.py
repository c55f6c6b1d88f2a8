"""Periodic backups, driven by a fake clock and a fake ``take``; and the child for real."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hepto.backup.sealing import BackupError
from hepto.backup.service import DEFAULT_INTERVAL, FIRST_DELAY, BackupService, take_in_child
from hepto.backup.store import backup_name, backups, taken_at, utc_iso
from hepto.control import RequestError

#: 2026-01-02T03:04:05Z
START = 1767323045.0


class FakeTake:
    """Each backup asked for waits for the test to say how it went."""

    def __init__(self) -> None:
        self.asked: list[tuple[Path, Deferred[dict[str, Any]]]] = []

    def __call__(self, out: Path) -> Deferred[dict[str, Any]]:
        done: Deferred[dict[str, Any]] = Deferred()
        self.asked.append((out, done))
        return done

    def succeed(self) -> Path:
        out, done = self.asked[-1]
        out.write_bytes(b"backup")
        done.callback({"path": str(out), "size": 6, "seconds": 0.1})
        return out

    def fail(self, message: str) -> None:
        self.asked[-1][1].errback(BackupError(message))


class BackupServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp()) / "backups"
        self.addCleanup(shutil.rmtree, self.directory.parent)
        self.clock = Clock()
        self.clock.advance(START)
        self.take = FakeTake()

    def service(self, **options: Any) -> BackupService:
        service = BackupService(self.directory, self.take, self.clock, **options)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def test_every_interval(self) -> None:
        service = self.service()
        self.assertEqual(self.directory.stat().st_mode & 0o777, 0o700)
        self.clock.advance(DEFAULT_INTERVAL - 1)
        self.assertEqual(self.take.asked, [])
        self.clock.advance(1)
        self.assertEqual(self.take.asked[0][0].name, "20260102T150405Z.hepto-backup")
        first = self.take.succeed()
        self.assertEqual(service.status()["last"]["path"], str(first))
        self.assertEqual(service.status()["next"], "2026-01-03T03:04:05Z")
        self.clock.advance(DEFAULT_INTERVAL)
        self.assertEqual(len(self.take.asked), 2)

    def test_keeps_the_last_ones(self) -> None:
        self.service(interval=60.0, keep=3)
        stranger = self.directory / "notes.txt"
        stranger.write_text("mine")
        for _ in range(5):
            self.clock.advance(60)
            self.take.succeed()
        kept = backups(self.directory)
        self.assertEqual([path.name for path in kept],
                         [backup_name(START + 60 * n) for n in (3, 4, 5)])  # fmt: skip
        self.assertTrue(stranger.exists())

    def test_failure_retried_with_backoff(self) -> None:
        service = self.service(interval=3600.0)
        self.clock.advance(3600)
        self.take.fail("cannot take etcd's snapshot: connection refused")
        status = service.status()
        self.assertEqual(status["failures"], 1)
        self.assertIn("connection refused", status["last_error"])
        self.assertIsNone(status["last"])
        self.clock.advance(59)
        self.assertEqual(len(self.take.asked), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.take.asked), 2)
        self.take.fail("again")
        self.clock.advance(119)
        self.assertEqual(len(self.take.asked), 2)
        self.clock.advance(1)
        self.take.succeed()
        self.assertIsNone(service.status()["last_error"])
        self.assertEqual(service.status()["failures"], 2)

    def test_restart_keeps_the_rhythm(self) -> None:
        self.directory.mkdir()
        (self.directory / backup_name(START - 3600)).write_bytes(b"an hour old")
        service = self.service()
        self.assertEqual(service.status()["last"]["created"], utc_iso(START - 3600))
        self.clock.advance(DEFAULT_INTERVAL - 3600 - 1)
        self.assertEqual(self.take.asked, [])
        self.clock.advance(1)
        self.assertEqual(len(self.take.asked), 1)

    def test_overdue_after_a_long_stop(self) -> None:
        self.directory.mkdir()
        (self.directory / backup_name(START - 5 * DEFAULT_INTERVAL)).write_bytes(b"old")
        self.service()
        self.clock.advance(FIRST_DELAY)
        self.assertEqual(len(self.take.asked), 1)

    def test_one_at_a_time(self) -> None:
        service = self.service(interval=60.0)
        self.clock.advance(60)
        self.assertIsNone(service.take_now())
        self.assertTrue(service.status()["running"])
        self.assertEqual(len(self.take.asked), 1)

    def test_backup_command(self) -> None:
        service = self.service()
        answered: list[Any] = []
        service.backup_command({"command": "backup"}).addCallback(answered.append)
        out = self.take.succeed()
        self.assertEqual(answered, [{"path": str(out), "size": 6, "seconds": 0.1}])
        # Taken now, the next periodic one is an interval later.
        self.clock.advance(DEFAULT_INTERVAL - 1)
        self.assertEqual(len(self.take.asked), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.take.asked), 2)

    def test_backup_command_while_one_is_under_way(self) -> None:
        """It waits for the one under way, then takes its own: the cluster as it is now."""
        service = self.service(interval=60.0)
        self.clock.advance(60)  # a periodic one, under way
        answered: list[Any] = []
        service.backup_command({"command": "backup"}).addCallback(answered.append)
        service.backup_command({"command": "backup"}).addCallback(answered.append)
        self.assertEqual(len(self.take.asked), 1)
        self.clock.advance(1)
        self.take.succeed()  # the periodic one answers neither command
        self.assertEqual(answered, [])
        # Each command gets a backup of its own, one after the other.
        self.assertEqual(len(self.take.asked), 2)
        self.clock.advance(1)
        first = self.take.succeed()
        self.assertEqual([entry["path"] for entry in answered], [str(first)])
        self.assertEqual(len(self.take.asked), 3)
        second = self.take.succeed()
        self.assertEqual([entry["path"] for entry in answered], [str(first), str(second)])
        self.assertNotEqual(first, second)

    def test_backup_command_failing(self) -> None:
        service = self.service()
        refused: list[Failure] = []
        service.backup_command({"command": "backup"}).addErrback(refused.append)
        self.take.fail("cannot take etcd's snapshot: connection refused")
        [failure] = refused
        self.assertIsInstance(failure.value, RequestError)
        self.assertIn("connection refused", str(failure.value))
        self.assertEqual(service.status()["failures"], 1)

    def test_no_periodic_backups(self) -> None:
        service = self.service(interval=0.0)
        self.clock.advance(365 * 86400)
        self.assertEqual(self.take.asked, [])
        self.assertIsNone(service.status()["next"])
        service.backup_command({"command": "backup"})
        self.take.succeed()
        self.assertIsNone(service.status()["next"])

    def test_stop_cancels_the_timer(self) -> None:
        service = self.service(interval=60.0)
        service.stopService()
        self.clock.advance(600)
        self.assertEqual(self.take.asked, [])

    def test_names(self) -> None:
        self.assertEqual(taken_at(Path(backup_name(START))), START)
        self.assertIsNone(taken_at(Path("2026.hepto-backup")))
        self.assertIsNone(taken_at(Path("20260102T030405Z.tar")))


class ChildTests(TestCase):
    """The child of the real reactor: its error line reaches the service."""

    def test_child_error(self) -> Deferred[None]:
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        take = take_in_child(reactor, directory / "no-master", "c", "m", [b"k" * 32])
        done = take(directory / "out.hepto-backup")

        def failed(error: BackupError) -> None:
            self.assertIn("is missing: is", str(error))
            self.assertFalse((directory / "out.hepto-backup").exists())

        refused: Deferred[Any] = self.assertFailure(done, BackupError)
        return refused.addCallback(failed)
