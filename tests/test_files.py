"""hepto.files: whole files, written so that nobody ever sees half of one."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from hepto.files import write_atomically


class WriteAtomicallyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.path = self.directory / "key"

    def test_the_mode_whatever_the_umask(self) -> None:
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        write_atomically(self.path, b"secret", 0o600)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        write_atomically(self.path, "public\n", 0o644)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o644)
        self.assertEqual(self.path.read_text(), "public\n")

    def test_replaces_and_leaves_nothing_beside(self) -> None:
        self.path.write_text("old")
        write_atomically(self.path, "new")
        self.assertEqual(self.path.read_text(), "new")
        self.assertEqual(sorted(p.name for p in self.directory.iterdir()), ["key"])

    def test_a_link_where_it_writes_first_is_not_followed(self) -> None:
        target = self.directory / "elsewhere"
        target.write_text("untouched")
        (self.directory / ".key.tmp").symlink_to(target)
        error = self.assertRaises(OSError, write_atomically, self.path, b"secret")
        self.assertEqual(error.errno, errno.ELOOP)
        self.assertEqual(target.read_text(), "untouched")
        self.assertFalse(self.path.exists())
