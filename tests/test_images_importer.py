"""Imports on the reactor, through a fake ctr: one archive, and a node's folder of them."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import provider

from hepto.images.ctr import CtrError, Image
from hepto.images.importer import archives_in, import_archive, import_folder, runs_here
from hepto.images.layout import Platform
from images import fake_ctr, fake_ctr_calls

SOCKET = Path("/run/c.sock")
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


class Events:
    """The log events of hepto.images while a test runs."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[LogEvent] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            if event.get("log_namespace") == "hepto.images":
                self.events.append(event)

        globalLogPublisher.addObserver(observe)
        case.addCleanup(globalLogPublisher.removeObserver, observe)

    def at(self, level: str) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"].name == level]


class ImportArchiveTests(TestCase):
    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="hepto-importer-"))
        self.addCleanup(shutil.rmtree, self.directory)
        self.ctr = fake_ctr(
            self.directory,
            {
                "two.tar": {
                    "images": [
                        {"name": "localhost/a:1", "digest": A},
                        {"name": "localhost/b:1", "digest": B, "platforms": "linux/arm64"},
                    ]
                },
                "bad.tar": {"fail": "unexpected EOF"},
                "unnamed.tar": {"images": []},
                "slow.tar": {"sleep": 60},
            },
        )

    @inlineCallbacks
    def test_imported(self) -> Any:
        # ctr reads CONTAINERD_SNAPSHOTTER and the like: the agent's environment stays out.
        os.environ["CONTAINERD_SNAPSHOTTER"] = "zfs"
        self.addCleanup(os.environ.pop, "CONTAINERD_SNAPSHOTTER")
        images = yield import_archive(reactor, self.ctr, SOCKET, self.directory / "two.tar")
        self.assertEqual(
            images,
            [
                Image("localhost/a:1", A, ("linux/amd64",)),
                Image("localhost/b:1", B, ("linux/arm64",)),
            ],
        )
        for call in fake_ctr_calls(self.ctr):
            self.assertNotIn("CONTAINERD_SNAPSHOTTER", call["environ"])
        [imported, listed] = [call["argv"] for call in fake_ctr_calls(self.ctr)]
        self.assertEqual(imported[:4], ["--address", str(SOCKET), "--namespace", "k8s.io"])
        token = imported[7].split("=", 1)[1]
        self.assertEqual(listed[-1], f'labels."hepto.images.import"=={token}')

    @inlineCallbacks
    def test_refused(self) -> Any:
        failure = yield self.assertFailure(
            import_archive(reactor, self.ctr, SOCKET, self.directory / "bad.tar"), CtrError
        )
        self.assertEqual(str(failure), "ctr images import failed (exit status 1): unexpected EOF")
        self.assertEqual(len(fake_ctr_calls(self.ctr)), 1, "listed after a failed import")

    @inlineCallbacks
    def test_named_nothing(self) -> Any:
        failure = yield self.assertFailure(
            import_archive(reactor, self.ctr, SOCKET, self.directory / "unnamed.tar"), CtrError
        )
        self.assertEqual(
            str(failure), "ctr imported it but named no image: the archive gives none a full name"
        )

    @inlineCallbacks
    def test_no_ctr(self) -> Any:
        ctr = self.directory / "nope"
        failure = yield self.assertFailure(
            import_archive(reactor, ctr, SOCKET, Path("/x.tar")), CtrError
        )
        self.assertEqual(str(failure), f"cannot run {ctr}: No such file or directory")

    @inlineCallbacks
    def test_cancelling_kills_ctr(self) -> Any:
        importing = import_archive(reactor, self.ctr, SOCKET, self.directory / "slow.tar")
        while not fake_ctr_calls(self.ctr):
            yield deferLater(reactor, 0.05)
        [call] = fake_ctr_calls(self.ctr)
        importing.cancel()
        yield self.assertFailure(importing, CancelledError)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(call["pid"], 0)
            except ProcessLookupError:
                return
            yield deferLater(reactor, 0.05)
        self.fail(f"ctr (pid {call['pid']}) still runs after the import was cancelled")


class ImportFolderTests(TestCase):
    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="hepto-folder-"))
        self.addCleanup(shutil.rmtree, self.directory)
        self.folder = self.directory / "images"
        self.folder.mkdir()
        self.ctr = fake_ctr(
            self.directory,
            {
                "1-first.tar": {"images": [{"name": "localhost/a:1", "digest": A}]},
                "2-broken.tar.gz": {"fail": "unexpected EOF"},
                "3-third.tgz": {
                    "images": [{"name": "localhost/b:1", "digest": B, "platforms": "linux/arm64"}]
                },
            },
        )
        for name in ("3-third.tgz", "1-first.tar", "2-broken.tar.gz"):
            (self.folder / name).write_bytes(b"archive")

    @inlineCallbacks
    def test_every_archive_in_turn_and_the_bad_ones_logged(self) -> Any:
        events = Events(self)
        images = yield import_folder(reactor, self.ctr, SOCKET, self.folder)
        self.assertEqual([image.name for image in images], ["localhost/a:1", "localhost/b:1"])
        imported = [
            call["argv"][-1] for call in fake_ctr_calls(self.ctr) if "import" in call["argv"]
        ]
        self.assertEqual(
            [Path(path).name for path in imported],
            ["1-first.tar", "2-broken.tar.gz", "3-third.tgz"],
        )
        self.assertEqual(
            events.at("info"),
            [
                f"Importing 3 image archives from {self.folder}",
                f"Imported localhost/a:1 ({A}) from {self.folder}/1-first.tar",
                f"Imported localhost/b:1 ({B}) from {self.folder}/3-third.tgz",
            ],
        )
        self.assertEqual(
            events.at("error"),
            [
                f"Cannot import {self.folder}/2-broken.tar.gz: "
                "ctr images import failed (exit status 1): unexpected EOF"
            ],
        )
        [warning] = events.at("warn")
        self.assertIn("localhost/b:1 offers linux/arm64", warning)
        [event] = [e for e in events.events if e["log_level"].name == "error"]
        self.assertEqual(event["archive"], f"{self.folder}/2-broken.tar.gz")

    @inlineCallbacks
    def test_no_folder(self) -> Any:
        images = yield import_folder(reactor, self.ctr, SOCKET, self.directory / "none")
        self.assertEqual(images, [])
        self.assertEqual(fake_ctr_calls(self.ctr), [])


class FolderTests(SynchronousTestCase):
    def test_what_is_taken(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="hepto-folder-"))
        self.addCleanup(shutil.rmtree, folder)
        for name in ("b.tar", "a.tar.gz", "c.tgz", "d.oci", ".e.tar", "f.tar.part", "README"):
            (folder / name).write_bytes(b"")
        (folder / "layout.oci").mkdir()
        (folder / "link.tar").symlink_to("b.tar")
        self.assertEqual(
            [path.name for path in archives_in(folder)],
            ["a.tar.gz", "b.tar", "c.tgz", "d.oci", "link.tar"],
        )
        self.assertEqual(archives_in(folder / "missing"), [])

    def test_runs_here(self) -> None:
        amd64 = Platform("linux", "amd64")
        for platforms, expected in [
            ((), True),
            (("linux/amd64",), True),
            (("linux/arm64", "linux/amd64/v3"), True),
            (("linux/386",), True),
            (("linux/arm64",), False),
            (("windows/amd64",), False),
        ]:
            self.assertEqual(runs_here(Image("x", A, platforms), amd64), expected, platforms)
