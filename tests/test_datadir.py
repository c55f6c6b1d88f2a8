"""The node's directory: exact modes whatever the umask, and nothing a local user could swap.

Real directories under /tmp (root's, sticky, 1777: an accepted ancestor); the tests run
as root, and hand files to uid 65534 (nobody) to play the other local user.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from hepto import datadir
from hepto.datadir import UnsafePath, prepare_node_dir

SOMEBODY_ELSE = 65534


def mode(path: Path) -> int:
    return os.lstat(path).st_mode & 0o7777


class DataDirTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="hepto-datadir-"))
        self.addCleanup(shutil.rmtree, self.base)
        self.data_dir = self.base / "data"
        self.node_dir = self.data_dir / "c" / "n1"

    def assertRefused(self, node_dir: Path, *words: str) -> str:
        message = str(self.assertRaises(UnsafePath, prepare_node_dir, node_dir))
        for word in words:
            self.assertIn(word, message)
        return message

    def existing_node_dir(self) -> Path:
        """A node directory as hepto leaves it, ready to be tampered with."""
        prepare_node_dir(self.node_dir)
        return self.node_dir


class MakingTests(DataDirTestCase):
    def test_exact_modes_under_umask_0(self) -> None:
        self.addCleanup(os.umask, os.umask(0))
        prepare_node_dir(self.node_dir)
        self.assertEqual(mode(self.data_dir), 0o755)
        self.assertEqual(mode(self.data_dir / "c"), 0o755)
        self.assertEqual(mode(self.node_dir), 0o700)

    def test_exact_modes_under_umask_077(self) -> None:
        self.addCleanup(os.umask, os.umask(0o077))
        prepare_node_dir(self.node_dir)
        self.assertEqual(mode(self.data_dir), 0o755)
        self.assertEqual(mode(self.node_dir), 0o700)

    def test_existing_parents_are_not_changed(self) -> None:
        self.data_dir.mkdir(mode=0o711)
        self.data_dir.chmod(0o711)
        prepare_node_dir(self.node_dir)
        self.assertEqual(mode(self.data_dir), 0o711)

    def test_an_existing_node_directory_is_tightened(self) -> None:
        self.node_dir.mkdir(parents=True)
        self.node_dir.chmod(0o755)
        prepare_node_dir(self.node_dir)
        self.assertEqual(mode(self.node_dir), 0o700)

    def test_sticky_parents_are_accepted(self) -> None:
        # As /tmp: others may add entries, but only an entry's owner may rename it.
        self.data_dir.mkdir()
        self.data_dir.chmod(0o1777)
        prepare_node_dir(self.node_dir)
        self.assertEqual(mode(self.node_dir), 0o700)
        self.assertEqual(mode(self.data_dir), 0o1777)

    def test_a_restart_accepts_what_it_made(self) -> None:
        node_dir = self.existing_node_dir()
        (node_dir / "identity.key").write_bytes(bytes(32))
        (node_dir / "identity.key").chmod(0o600)
        (node_dir / "pki" / "ca").mkdir(mode=0o700, parents=True)
        (node_dir / "pki" / "ca.crt").write_text("")
        prepare_node_dir(node_dir)  # raises UnsafePath for anything it refuses
        self.assertEqual(mode(node_dir), 0o700)
        self.assertEqual(mode(node_dir / "identity.key"), 0o600)
        self.assertEqual((node_dir / "identity.key").read_bytes(), bytes(32))
        self.assertTrue((node_dir / "pki" / "ca.crt").exists())


class ParentTests(DataDirTestCase):
    def test_a_group_writable_parent_is_refused(self) -> None:
        self.data_dir.mkdir()
        self.data_dir.chmod(0o775)
        message = self.assertRefused(self.node_dir, str(self.data_dir), "chmod go-w")
        self.assertIn("writable by group or others without the sticky bit", message)
        # Refused before anything was made below it.
        self.assertFalse((self.data_dir / "c").exists())

    def test_a_world_writable_parent_is_refused(self) -> None:
        (self.data_dir / "c").mkdir(parents=True)
        (self.data_dir / "c").chmod(0o777)
        self.assertRefused(self.node_dir, f"{self.data_dir / 'c'} is writable")

    def test_a_parent_owned_by_somebody_else_is_refused(self) -> None:
        self.data_dir.mkdir()
        os.chown(self.data_dir, SOMEBODY_ELSE, SOMEBODY_ELSE)
        self.assertRefused(
            self.node_dir, f"{self.data_dir} belongs to uid {SOMEBODY_ELSE}", "chown root"
        )

    def test_a_link_owned_by_somebody_else_is_refused(self) -> None:
        # In a sticky directory, the owner of a link may point it elsewhere at will.
        target = self.base / "elsewhere"
        target.mkdir()
        self.data_dir.symlink_to(target)
        os.lchown(self.data_dir, SOMEBODY_ELSE, SOMEBODY_ELSE)
        self.assertRefused(self.node_dir, f"{self.data_dir} belongs to uid {SOMEBODY_ELSE}")

    def test_where_a_link_leads_is_checked(self) -> None:
        unsafe = self.base / "unsafe"
        unsafe.mkdir()
        unsafe.chmod(0o777)
        (unsafe / "data").mkdir()
        self.data_dir.symlink_to(unsafe / "data")
        self.assertRefused(self.node_dir, f"{unsafe} is writable")

    def test_a_link_to_a_safe_directory_is_followed(self) -> None:
        (self.base / "disk").mkdir()
        self.data_dir.symlink_to(self.base / "disk")
        prepare_node_dir(self.node_dir)
        self.assertEqual(mode(self.base / "disk" / "c" / "n1"), 0o700)


class NodeDirectoryTests(DataDirTestCase):
    def test_a_node_directory_owned_by_somebody_else_is_refused(self) -> None:
        node_dir = self.existing_node_dir()
        os.chown(node_dir, SOMEBODY_ELSE, SOMEBODY_ELSE)
        self.assertRefused(
            node_dir, f"{node_dir} belongs to uid {SOMEBODY_ELSE}, not to this agent's user"
        )

    def test_a_writable_node_directory_is_refused(self) -> None:
        node_dir = self.existing_node_dir()
        node_dir.chmod(0o770)
        self.assertRefused(node_dir, f"{node_dir} is writable by group or others")

    def test_a_symlinked_node_directory_is_refused(self) -> None:
        # Even to a directory that would pass: a link's maker chooses where it leads.
        real = self.base / "real"
        real.mkdir(mode=0o700)
        self.node_dir.parent.mkdir(parents=True)
        self.node_dir.symlink_to(real)
        self.assertRefused(self.node_dir, f"{self.node_dir} is a symbolic link")


class TrustedFileTests(DataDirTestCase):
    def test_an_identity_key_owned_by_somebody_else_is_refused(self) -> None:
        key = self.existing_node_dir() / "identity.key"
        key.write_bytes(bytes(32))
        key.chmod(0o600)
        os.chown(key, SOMEBODY_ELSE, SOMEBODY_ELSE)
        self.assertRefused(self.node_dir, f"{key} belongs to uid {SOMEBODY_ELSE}")

    def test_a_symlinked_identity_key_is_refused(self) -> None:
        elsewhere = self.base / "identity.key"
        elsewhere.write_bytes(bytes(32))
        elsewhere.chmod(0o600)
        (self.existing_node_dir() / "identity.key").symlink_to(elsewhere)
        self.assertRefused(self.node_dir, "identity.key is a symbolic link")

    def test_a_writable_wireguard_key_is_refused(self) -> None:
        key = self.existing_node_dir() / "wireguard.key"
        key.write_text("")
        key.chmod(0o620)
        self.assertRefused(self.node_dir, f"{key} is writable by group or others")

    def test_a_pki_key_owned_by_somebody_else_is_refused(self) -> None:
        ca = self.existing_node_dir() / "pki" / "ca"
        ca.mkdir(mode=0o700, parents=True)
        key = ca / "kubernetes.key"
        key.write_text("")
        key.chmod(0o600)
        os.chown(key, SOMEBODY_ELSE, SOMEBODY_ELSE)
        self.assertRefused(self.node_dir, f"{key} belongs to uid {SOMEBODY_ELSE}")

    def test_a_symlinked_pki_directory_is_refused(self) -> None:
        (self.base / "pki").mkdir(mode=0o700)
        (self.existing_node_dir() / "pki").symlink_to(self.base / "pki")
        self.assertRefused(self.node_dir, "pki is a symbolic link")

    def test_every_trusted_file_is_checked(self) -> None:
        for name in datadir.TRUSTED_FILES:
            path = self.existing_node_dir() / name
            path.write_text("")
            path.chmod(0o666)
            self.assertRefused(self.node_dir, f"{path} is writable")
            path.unlink()
