"""Imports into a real containerd, from the bundle, in a temporary directory of its own.

The pause and busybox images go in through both flavours of the import (on the reactor,
and blocking), through a node's folder and through ``hepto images import``; ``ctr images
ls`` must then show them with the digests reported, the digests the writer made.  A bad
archive imports nothing.  Both images also run, through ctr and Debian's runc: busybox
answers, pause runs as nobody and exits 0 on SIGTERM.

Needs root (containerd mounts overlayfs to unpack) and the bundle (tools/build-bundle, or
HEPTO_TEST_BIN_DIR with containerd, ctr and pause); skipped without them.  The CRI
plugins are disabled: they would listen on a port and look for CNI, and nothing here
needs them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hepto.images.ctr import CtrError, Image, import_archive_blocking
from hepto.images.importer import import_archive, import_folder
from hepto.images.layout import host_platform
from hepto.images.pause import PAUSE_IMAGE, ensure_pause_archive
from hepto.programs import BUNDLE_BIN_DIR
from images import BUSYBOX, BUSYBOX_IMAGE, write_busybox_archive
from test_images_cli import FakeAgent, hepto

BIN_DIR = Path(os.environ.get("HEPTO_TEST_BIN_DIR", BUNDLE_BIN_DIR))
NAMESPACE = "k8s.io"
PLATFORM = (str(host_platform()),)

_CONFIG = """\
version = 3
root = '{root}/root'
state = '{root}/state'
disabled_plugins = [
  'io.containerd.grpc.v1.cri',
  'io.containerd.cri.v1.images',
  'io.containerd.cri.v1.runtime',
  'io.containerd.podsandbox.controller.v1.podsandbox',
  'io.containerd.nri.v1.nri',
]

[grpc]
  address = '{root}/c.sock'

[ttrpc]
  address = '{root}/c.sock.ttrpc'

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = '{root}/opt'
  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = '{root}/s'
"""


class Containerd:
    """containerd from the bundle, all its files in one temporary directory."""

    def __init__(self, case: SynchronousTestCase) -> None:
        if os.geteuid() != 0:
            raise case.skipTest("needs root: containerd mounts overlayfs to unpack images")
        for program in ("containerd", "ctr", "pause", "containerd-shim-runc-v2"):
            if not os.access(BIN_DIR / program, os.X_OK):
                raise case.skipTest(f"no {program} in {BIN_DIR}: build it with tools/build-bundle")
        # Short: unix socket paths hold 107 bytes, shim socket directories 42.
        self.root = Path(tempfile.mkdtemp(prefix="hk-ctd-", dir="/tmp"))
        case.addCleanup(self._remove)
        self.socket = self.root / "c.sock"
        self.ctr = BIN_DIR / "ctr"
        config = self.root / "config.toml"
        config.write_text(_CONFIG.format(root=self.root))
        self.log = open(self.root / "containerd.log", "wb")  # noqa: SIM115 (closed at cleanup)
        environment = {"PATH": f"{BIN_DIR}:/usr/sbin:/usr/bin:/sbin:/bin"}
        self.process = subprocess.Popen(
            [str(BIN_DIR / "containerd"), "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
        case.addCleanup(self._stop)
        deadline = time.monotonic() + 60
        while self.run("version").returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                case.fail(f"containerd did not start: {self.tail()}")
            time.sleep(0.1)

    def run(self, *argv: str, **options: Any) -> subprocess.CompletedProcess[str]:
        command = [str(self.ctr), "--address", str(self.socket), "--namespace", NAMESPACE]
        return subprocess.run(
            [*command, *argv], capture_output=True, text=True, timeout=120, **options
        )

    def images(self) -> dict[str, str]:
        """Every image containerd holds, name to digest, read as plainly as can be."""
        listing = self.run("images", "ls")
        assert listing.returncode == 0, listing.stderr
        rows = [line.split() for line in listing.stdout.splitlines()[1:] if line.strip()]
        return {row[0]: row[2] for row in rows}

    def tail(self) -> str:
        self.log.flush()
        return (self.root / "containerd.log").read_text(errors="replace")[-3000:]

    def _stop(self) -> None:
        # Shims outlive containerd, and their containers with them: a test that failed
        # half-way may have left some, which go first.
        for task in self.run("tasks", "ls", "-q").stdout.split():
            self.run("tasks", "kill", "--signal", "SIGKILL", task)
            self.run("tasks", "delete", "--force", task)
        for container in self.run("containers", "ls", "-q").stdout.split():
            self.run("containers", "delete", container)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def _remove(self) -> None:
        # Unpacking mounts overlays for a moment: none should be left, but never rm through one.
        with open("/proc/self/mounts") as mounts:
            points = [line.split()[1] for line in mounts if f" {self.root}/" in line]
        for point in sorted(points, reverse=True):
            subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


class ContainerdTests(TestCase):
    def setUp(self) -> None:
        self.containerd = Containerd(self)
        self.directory = Path(tempfile.mkdtemp(prefix="hepto-images-"))
        self.addCleanup(shutil.rmtree, self.directory)

    def busybox(self, name: str = "busybox.tar") -> tuple[Path, str]:
        if not BUSYBOX.exists():
            raise self.skipTest(f"no {BUSYBOX}: tools/install-deps installs busybox-static")
        path = self.directory / name
        return path, write_busybox_archive(path).manifest_digest

    def pause(self) -> tuple[Path, str]:
        path = self.directory / "pause.tar"
        written = ensure_pause_archive(BIN_DIR / "pause", path)
        assert written is not None
        return path, written.manifest_digest

    @inlineCallbacks
    def test_the_pause_image_on_the_reactor(self) -> Any:
        archive, digest = self.pause()
        images = yield import_archive(reactor, self.containerd.ctr, self.containerd.socket, archive)
        self.assertEqual(images, [Image(PAUSE_IMAGE, digest, PLATFORM)])
        self.assertEqual(self.containerd.images(), {PAUSE_IMAGE: digest})

    def test_the_busybox_image_blocking(self) -> None:
        archive, digest = self.busybox()
        images = import_archive_blocking(self.containerd.ctr, self.containerd.socket, archive)
        self.assertEqual(images, [Image(BUSYBOX_IMAGE, digest, PLATFORM)])
        self.assertEqual(self.containerd.images(), {BUSYBOX_IMAGE: digest})

    def test_again_and_compressed(self) -> None:
        archive, digest = self.busybox()
        compressed = self.directory / "busybox.tar.gz"
        subprocess.run(["gzip", "-k", str(archive)], check=True)
        for path in (archive, compressed, archive):
            images = import_archive_blocking(self.containerd.ctr, self.containerd.socket, path)
            self.assertEqual(images, [Image(BUSYBOX_IMAGE, digest, PLATFORM)])
        self.assertEqual(self.containerd.images(), {BUSYBOX_IMAGE: digest})

    def test_a_bad_archive_imports_nothing(self) -> None:
        archive, _ = self.busybox()
        truncated = self.directory / "truncated.tar"
        truncated.write_bytes(archive.read_bytes()[:300_000])
        error = self.assertRaises(
            CtrError,
            import_archive_blocking,
            self.containerd.ctr,
            self.containerd.socket,
            truncated,
        )
        self.assertIn("ctr images import failed (exit status 1)", str(error))
        self.assertIn("unexpected EOF", str(error))
        self.assertEqual(self.containerd.images(), {})

    @inlineCallbacks
    def test_a_folder(self) -> Any:
        folder = self.directory / "images"
        folder.mkdir()
        pause, pause_digest = self.pause()
        busybox, busybox_digest = self.busybox()
        pause.rename(folder / "1-pause.tar")
        busybox.rename(folder / "3-busybox.tar")
        (folder / "2-broken.tar").write_bytes(b"no archive at all")
        images = yield import_folder(reactor, self.containerd.ctr, self.containerd.socket, folder)
        self.assertEqual(
            images,
            [
                Image(PAUSE_IMAGE, pause_digest, PLATFORM),
                Image(BUSYBOX_IMAGE, busybox_digest, PLATFORM),
            ],
        )
        self.assertEqual(
            self.containerd.images(), {PAUSE_IMAGE: pause_digest, BUSYBOX_IMAGE: busybox_digest}
        )

    def test_hepto_images_import(self) -> None:
        data_dir = self.directory / "data"
        runtime = {
            "socket": str(self.containerd.socket),
            "ctr": str(self.containerd.ctr),
            "namespace": NAMESPACE,
        }
        FakeAgent(self, data_dir / "c" / "n" / "control.sock", {"kube": {"runtime": runtime}})
        pause, pause_digest = self.pause()
        busybox, busybox_digest = self.busybox()
        done = hepto(
            "images", "import", "--cluster", "c", "--name", "n", "--data-dir", str(data_dir),
            str(pause), str(busybox),
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(
            done.stdout, f"{PAUSE_IMAGE} {pause_digest}\n{BUSYBOX_IMAGE} {busybox_digest}\n"
        )
        self.assertEqual(
            self.containerd.images(), {PAUSE_IMAGE: pause_digest, BUSYBOX_IMAGE: busybox_digest}
        )

    def test_the_images_run(self) -> None:
        if shutil.which("runc") is None:
            raise self.skipTest("no runc: tools/install-deps installs it")
        for archive, _ in (self.pause(), self.busybox()):
            import_archive_blocking(self.containerd.ctr, self.containerd.socket, archive)
        # Container state and fifos in the temporary directory, not in /run.
        (self.containerd.root / "fifo").mkdir()
        local = [
            "--fifo-dir", str(self.containerd.root / "fifo"),
            "--runc-root", str(self.containerd.root / "runc"),
            "--cgroup", "",
        ]  # fmt: skip
        answer = self.containerd.run(
            "run", "--rm", *local, BUSYBOX_IMAGE, "answer", "sh", "-c", "id -u; ls /bin/ls"
        )
        self.assertEqual((answer.returncode, answer.stdout), (0, "0\n/bin/ls\n"), answer.stderr)

        command = [str(self.containerd.ctr), "--address", str(self.containerd.socket)]
        command += ["--namespace", NAMESPACE, "run", "--rm", "--null-io", *local]
        sandbox = subprocess.Popen([*command, PAUSE_IMAGE, "sandbox"])
        self.addCleanup(sandbox.wait, 30)
        self.addCleanup(sandbox.kill)  # nothing if it has exited
        pid = None
        deadline = time.monotonic() + 30
        while pid is None and time.monotonic() < deadline:
            tasks = self.containerd.run("tasks", "ls").stdout.split()
            if "sandbox" in tasks and tasks[tasks.index("sandbox") + 2] == "RUNNING":
                pid = int(tasks[tasks.index("sandbox") + 1])
            time.sleep(0.1)
        self.assertIsNotNone(pid, f"the pause container did not start: {self.containerd.tail()}")
        status = Path(f"/proc/{pid}/status").read_text()
        uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        self.assertEqual(uid, "65535")
        self.assertEqual(self.containerd.run("tasks", "kill", "sandbox").returncode, 0)
        self.assertEqual(sandbox.wait(timeout=30), 0, "pause did not exit 0 on SIGTERM")
