"""Finding upstream programs, and the error when one is missing."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from hepto.config import ConfigError
from hepto.programs import MissingProgram, find_program, find_programs, search_path


class FindProgramsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="hk-programs-"))
        self.addCleanup(shutil.rmtree, self.root)
        self.bin = self.root / "bundle"
        self.system = self.root / "usr-bin"
        self.bin.mkdir()
        self.system.mkdir()

    def executable(self, directory: Path, name: str) -> Path:
        path = directory / name
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
        return path

    def test_bin_dir_comes_first(self) -> None:
        self.executable(self.system, "etcd")
        ours = self.executable(self.bin, "etcd")
        self.assertEqual(find_program("etcd", self.bin, str(self.system)), ours)

    def test_then_path(self) -> None:
        theirs = self.executable(self.system, "etcd")
        self.assertEqual(find_program("etcd", self.bin, str(self.system)), theirs)
        self.assertEqual(find_program("etcd", None, f"{self.root}/nowhere:{self.system}"), theirs)

    def test_symlinks_keep_their_name(self) -> None:
        # The multi-call binary dispatches on argv[0]: resolving the link would break it.
        bundle = self.executable(self.bin, "hepto-bundle")
        (self.bin / "kube-apiserver").symlink_to(bundle.name)
        found = find_program("kube-apiserver", self.bin, "")
        self.assertEqual(found, self.bin / "kube-apiserver")

    def test_every_missing_program_in_one_sentence(self) -> None:
        self.executable(self.bin, "etcd")
        error = self.assertRaises(
            MissingProgram,
            find_programs,
            ["etcd", "kube-apiserver", "kube-scheduler"],
            self.bin,
            f"{self.system}::{self.system}",
        )
        self.assertIsInstance(error, ConfigError)
        self.assertEqual(error.missing, ("kube-apiserver", "kube-scheduler"))
        self.assertEqual(
            str(error),
            f"--bin-dir: kube-apiserver and kube-scheduler not found in {self.bin} (--bin-dir); "
            f"{self.system} (PATH). To get kube-apiserver and kube-scheduler: build them with "
            "tools/build-bundle (it prints the directory to pass as --bin-dir, usually "
            "/var/cache/hepto/bundle/current/bin), or put the official release binaries in "
            "a directory and pass that",
        )

    def test_a_file_that_cannot_run_is_named(self) -> None:
        (self.bin / "etcd").write_text("not executable")
        error = self.assertRaises(MissingProgram, find_program, "etcd", self.bin, "")
        self.assertIn(f"{self.bin}/etcd exists but is not an executable file", str(error))

    def test_a_directory_is_not_a_program(self) -> None:
        (self.bin / "etcd").mkdir()
        self.assertRaises(MissingProgram, find_program, "etcd", self.bin, "")

    def test_search_path(self) -> None:
        self.assertEqual(
            search_path(Path("/b"), "/x::/y:/x"),
            [(Path("/b"), "--bin-dir"), (Path("/x"), "PATH"), (Path("/y"), "PATH")],
        )
