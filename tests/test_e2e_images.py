"""The conformance suite's images, made here (tests/e2e_images.py).

Their names are those the suite itself lists (``e2e.test --list-images``); every program
in them runs from the image's own files alone (chroot into the unpacked layer: a library
left out fails the loader); and they import into a real containerd, where their entry
points run.  Needs the suite's programs (tools/build-e2e, or HEPTO_TEST_E2E_DIR) and
the bundle; skipped without them.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from e2e_images import (
    MissingProgram,
    Recipe,
    Sources,
    archive_name,
    ensure_archives,
    recipes,
    shared_libraries,
)
from hepto.images.ctr import import_archive_blocking
from hepto.images.layout import layer_tar
from images import BUSYBOX
from test_images_containerd import BIN_DIR, Containerd

E2E_DIR = Path(os.environ.get("HEPTO_TEST_E2E_DIR", "/var/cache/hepto/e2e/current/bin"))


def sources(case: SynchronousTestCase) -> Sources:
    programs = [
        E2E_DIR / name for name in ("agnhost", "nnp", "sample-apiserver", "etcd", "busybox")
    ]
    for program in (*programs, BIN_DIR / "coredns", BUSYBOX):
        if not os.access(program, os.X_OK):
            raise case.skipTest(f"no {program}: tools/build-e2e, tools/build-bundle build them")
    return Sources(E2E_DIR, BIN_DIR, E2E_DIR.parent / "images")


def by_name(case: SynchronousTestCase) -> dict[str, Recipe]:
    return {recipe.name: recipe for recipe in recipes(sources(case))}


class LibrariesTests(SynchronousTestCase):
    def test_a_static_program_needs_none(self) -> None:
        if not BUSYBOX.exists():
            raise self.skipTest(f"no {BUSYBOX}")
        self.assertEqual(shared_libraries(BUSYBOX), [])

    def test_a_dynamic_program_needs_libc_and_the_loader(self) -> None:
        names = {path.name for path in shared_libraries(Path("/bin/bash"))}
        self.assertIn("libc.so.6", names)
        self.assertTrue(any(name.startswith("ld-linux") for name in names), names)

    def test_a_missing_program_is_named(self) -> None:
        error = self.assertRaises(MissingProgram, shared_libraries, Path("/usr/bin/nope"))
        self.assertIn("/usr/bin/nope is missing: run tools/install-deps", str(error))


class NamesTests(SynchronousTestCase):
    def test_the_suite_asks_for_every_image_made(self) -> None:
        listed = subprocess.run(
            [str(E2E_DIR / "e2e.test"), "--list-images"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(listed.returncode, 0, listed.stderr)
        made = set(by_name(self))
        self.assertEqual(made - set(listed.stdout.split()), set())
        # The images most specs run.
        self.assertLessEqual(
            {
                "registry.k8s.io/e2e-test-images/agnhost:2.66.1",
                "registry.k8s.io/e2e-test-images/busybox:1.37.0-2",
                "registry.k8s.io/e2e-test-images/nginx:1.27.0-2",
                "registry.k8s.io/pause:3.10.2",
            },
            made,
        )

    def test_archive_names(self) -> None:
        names = {archive_name(recipe) for recipe in recipes(sources(self))}
        self.assertIn("agnhost-2.66.1.tar", names)
        self.assertIn("pause-3.10.2.tar", names)
        self.assertEqual(len(names), len(list(recipes(sources(self)))))


class UnpackedTests(SynchronousTestCase):
    """Each program, run in a chroot of its image's layer: nothing from the host."""

    def unpack(self, name: str) -> Path:
        if os.geteuid() != 0:
            raise self.skipTest("needs root: chroot")
        recipe = by_name(self)[f"registry.k8s.io/e2e-test-images/{name}"]
        root = Path(tempfile.mkdtemp(prefix="hepto-e2e-image-"))
        self.addCleanup(shutil.rmtree, root)
        with tarfile.open(fileobj=io.BytesIO(layer_tar(recipe.entries))) as layer:
            layer.extractall(root, filter="tar")
        return root

    def run_in(self, root: Path, *argv: str) -> str:
        done = subprocess.run(
            ["chroot", str(root), *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        self.assertEqual(done.returncode, 0, f"{argv}: {done.stderr}")
        return done.stdout + done.stderr

    def test_agnhost_tools(self) -> None:
        root = self.unpack("agnhost:2.66.1")
        self.assertIn("DiG 9", self.run_in(root, "dig", "-v"))
        self.assertIn("curl", self.run_in(root, "curl", "--version"))
        # Through sh, as the specs run it: not busybox's nc applet.
        self.assertIn("OpenBSD netcat", self.run_in(root, "sh", "-c", "nc -h 2>&1; true"))
        self.assertIn("bash", self.run_in(root, "bash", "-c", "echo $BASH"))
        self.assertIn("root:x:0:0", self.run_in(root, "getent", "passwd", "root"))
        self.assertIn("CoreDNS", self.run_in(root, "/coredns", "-version"))
        self.assertIn("user-defined-in-image", self.run_in(root, "id", "user-defined-in-image"))
        self.assertIn("netexec", self.run_in(root, "/agnhost", "--help"))

    def test_busybox_shell_keeps_every_variable(self) -> None:
        root = self.unpack("busybox:1.37.0-2")
        shown = self.run_in(root, "env", "data-1=value-1", "sh", "-c", "env")
        self.assertIn("data-1=value-1", shown)

    def test_busybox_shell_words_errors_as_upstream(self) -> None:
        """What "should not write to root filesystem" reads in the pod's log."""
        root = self.unpack("busybox:1.37.0-2")
        (root / "ro").mkdir()
        subprocess.run(["mount", "--bind", "-o", "ro", str(root / "ro"), str(root / "ro")])
        self.addCleanup(subprocess.run, ["umount", str(root / "ro")])
        subprocess.run(["mount", "-o", "remount,bind,ro", str(root / "ro")], check=True)
        done = subprocess.run(
            ["chroot", str(root), "/bin/sh", "-c", "echo test > /ro/file"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(done.stderr, "/bin/sh: can't create /ro/file: Read-only file system\n")

    def test_glibc_dns_testing_tools(self) -> None:
        root = self.unpack("glibc-dns-testing:2.1.1")
        self.assertIn("DiG 9", self.run_in(root, "dig", "-v"))
        self.assertIn("root:x:0:0", self.run_in(root, "getent", "passwd", "root"))


class ContainerdTests(SynchronousTestCase):
    """Every archive imports into containerd; the entry points run there."""

    def test_import_and_run(self) -> None:
        made = sources(self)
        if shutil.which("runc") is None:
            raise self.skipTest("no runc: tools/install-deps installs it")
        containerd = Containerd(self)
        directory = Path(tempfile.mkdtemp(prefix="hepto-e2e-images-"))
        self.addCleanup(shutil.rmtree, directory)
        imported = {}
        for archive in ensure_archives(made, directory):
            for image in import_archive_blocking(containerd.ctr, containerd.socket, archive):
                imported[image.name] = image.digest
        self.assertEqual(set(imported), {recipe.name for recipe in recipes(made)})
        self.assertEqual(containerd.images(), imported)

        (containerd.root / "fifo").mkdir()
        local = [
            "--fifo-dir", str(containerd.root / "fifo"),
            "--runc-root", str(containerd.root / "runc"),
            "--cgroup", "",
        ]  # fmt: skip

        def run(image: str, *argv: str) -> str:
            answer = containerd.run("run", "--rm", *local, image, "check", *argv)
            self.assertEqual(answer.returncode, 0, f"{image}: {answer.stderr}")
            return answer.stdout

        e2e = "registry.k8s.io/e2e-test-images"
        # ctr's arguments replace the whole command: agnhost's default (pause) runs forever.
        agnhost = ("/agnhost", "entrypoint-tester")
        self.assertIn("entrypoint-tester", run(f"{e2e}/agnhost:2.66.1", *agnhost))
        self.assertIn("entrypoint-tester", run(f"{e2e}/kitten:1.8", *agnhost))
        self.assertEqual(run(f"{e2e}/nonewprivs:1.4"), "Effective uid: 0\n")
        self.assertEqual(run(f"{e2e}/busybox:1.37.0-2", "sh", "-c", "echo hi"), "hi\n")
        self.assertIn("index.html", run(f"{e2e}/nginx:1.27.0-2", "ls", "/usr/share/nginx/html"))
        self.assertIn(
            "etcd Version: 3.7.0", run("registry.k8s.io/etcd:3.7.0-0", "etcd", "--version")
        )
        self.assertIn(
            "--etcd-servers", run(f"{e2e}/sample-apiserver:1.29.2", "/sample-apiserver", "--help")
        )
