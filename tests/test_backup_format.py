"""The backup file: its envelope and its contents, and every bad input refused by name."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from hepto.backup import sealing
from hepto.backup.contents import MANIFEST_FORMAT, node_files, pack, unpack
from hepto.backup.restore import read_backup, version_tuple
from hepto.backup.sealing import BackupError, Header, open_sealed, read_header, seal
from hepto.gossip.crypto import derive_key
from test_images_inspect import tar, untar

KEY = bytes.fromhex("5a" * 32)
OTHER_KEY = bytes.fromhex("a5" * 32)
HEADER = Header("prod", "master", 1_700_000_000_000)


def master_files() -> dict[str, tuple[bytes, int]]:
    return {
        name: (f"content of {name}".encode(), 0o644 if name.endswith((".crt", ".pub")) else 0o600)
        for name, _required in node_files(Path("/"))
    }


def packed(snapshot: bytes = b"etcd database" + bytes(32), version: str = "0.1.0") -> bytes:
    with tempfile.NamedTemporaryFile() as db:
        db.write(snapshot)
        db.flush()
        manifest = {
            "format": MANIFEST_FORMAT,
            "hepto_version": version,
            "cluster": "prod",
            "name": "master",
            "etcd": {"size": len(snapshot), "sha256": hashlib.sha256(snapshot).hexdigest()},
        }
        return pack(manifest, master_files(), Path(db.name))


def repacked(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    """A gzipped tar of exactly ``members``, as a forger (or a bug) would make it."""
    return gzip.compress(tar(members, symlinks))


def edited(
    manifest: Callable[[dict[str, Any]], object] = lambda manifest: None,
    replaced: dict[str, bytes | None] | None = None,
) -> bytes:
    """A backup's archive with its manifest changed by ``manifest`` and some members
    replaced (None: removed)."""
    members = untar(gzip.decompress(packed()))
    document = json.loads(members["manifest.json"])
    manifest(document)
    members["manifest.json"] = json.dumps(document).encode()
    for name, content in (replaced or {}).items():
        if content is None:
            del members[name]
        else:
            members[name] = content
    return repacked(members)


class SealingTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        data = seal(KEY, HEADER, b"contents")
        self.assertEqual(open_sealed(data, [KEY]), (HEADER, b"contents"))
        self.assertTrue(data.startswith(b"HEPTOBAK\x01\x04prod\x06master"))

    def test_any_key_of_the_ring_opens(self) -> None:
        data = seal(KEY, HEADER, b"contents")
        self.assertEqual(open_sealed(data, [OTHER_KEY, KEY])[1], b"contents")

    def test_wrong_key(self) -> None:
        data = seal(KEY, HEADER, b"contents")
        with self.assertRaisesRegex(BackupError, "cannot be opened with the cluster key"):
            open_sealed(data, [OTHER_KEY])

    def test_not_gossip_key(self) -> None:
        # A key of another purpose: the gossip AEAD key of the same cluster key.
        self.assertNotEqual(sealing.backup_key(KEY), derive_key(KEY))

    def test_every_truncation_is_refused(self) -> None:
        data = seal(KEY, HEADER, b"contents" * 10)
        for length in range(len(data)):
            with self.assertRaises(BackupError, msg=f"{length} bytes"):
                open_sealed(data[:length], [KEY])

    def test_every_flipped_byte_is_refused(self) -> None:
        data = seal(KEY, HEADER, b"contents")
        for position in range(len(data)):
            damaged = bytearray(data)
            damaged[position] ^= 0x01
            try:
                header, _ = open_sealed(bytes(damaged), [KEY])
            except BackupError:
                continue
            self.fail(f"byte {position} flipped, still opened as {header}")

    def test_header_read_without_key(self) -> None:
        header, offset = read_header(seal(KEY, HEADER, b"x"))
        self.assertEqual(header, HEADER)
        self.assertEqual(offset, len(HEADER.encode()))

    def test_not_a_backup(self) -> None:
        with self.assertRaisesRegex(BackupError, "not a hepto backup"):
            open_sealed(b"PK\x03\x04 a zip file", [KEY])

    def test_newer_format(self) -> None:
        data = bytearray(seal(KEY, HEADER, b"x"))
        data[len(sealing.MAGIC)] = 2
        with self.assertRaisesRegex(BackupError, "format 2, this hepto reads format 1"):
            open_sealed(bytes(data), [KEY])


class ContentsTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        opened = unpack(packed())
        self.assertEqual(dict(opened.files), master_files())
        self.assertEqual(opened.snapshot, b"etcd database" + bytes(32))
        self.assertEqual(opened.manifest["cluster"], "prod")

    def test_ledger_is_optional(self) -> None:
        archive = edited(
            lambda manifest: manifest["files"].pop("pki/signed-keys.json"),
            replaced={"node/pki/signed-keys.json": None},
        )
        self.assertNotIn("pki/signed-keys.json", unpack(archive).files)

    def test_damaged_member(self) -> None:
        archive = edited(replaced={"node/pki/ca/kubernetes.key": b"another key"})
        with self.assertRaisesRegex(BackupError, "pki/ca/kubernetes.key does not match"):
            unpack(archive)

    def test_damaged_snapshot(self) -> None:
        with self.assertRaisesRegex(BackupError, "etcd snapshot does not match"):
            unpack(edited(replaced={"etcd.db": b"another database"}))

    def test_member_not_in_manifest(self) -> None:
        members = untar(gzip.decompress(packed()))
        members["node/../../etc/passwd"] = b"root::0:0"
        with self.assertRaisesRegex(BackupError, "not in its manifest"):
            unpack(repacked(members))

    def test_missing_file(self) -> None:
        archive = edited(
            lambda manifest: manifest["files"].pop("identity.key"),
            replaced={"node/identity.key": None},
        )
        with self.assertRaisesRegex(BackupError, "missing identity.key"):
            unpack(archive)

    def test_unsafe_mode(self) -> None:
        archive = edited(lambda manifest: manifest["files"]["identity.key"].update(mode=0o4777))
        with self.assertRaisesRegex(BackupError, "identity.key has mode"):
            unpack(archive)

    def test_newer_manifest(self) -> None:
        archive = edited(lambda manifest: manifest.update(format=MANIFEST_FORMAT + 1))
        with self.assertRaisesRegex(BackupError, "newer hepto"):
            unpack(archive)

    def test_not_an_archive(self) -> None:
        with self.assertRaisesRegex(BackupError, "archive cannot be read"):
            unpack(b"sealed but not a tar")

    def test_no_manifest(self) -> None:
        with self.assertRaisesRegex(BackupError, "no manifest"):
            unpack(repacked({"etcd.db": b"x"}))

    def test_links_refused(self) -> None:
        archive = repacked({}, {"node/identity.key": "/etc/shadow"})
        with self.assertRaisesRegex(BackupError, "is not a file"):
            unpack(archive)

    def test_versions_compare_as_numbers(self) -> None:
        self.assertGreater(version_tuple("0.10.0"), version_tuple("0.9.1"))
        self.assertLess(version_tuple("0.1.0"), version_tuple("0.1.1"))


class ReadBackupTests(SynchronousTestCase):
    """What ``hepto restore`` checks of a file before it writes anything."""

    def write(self, data: bytes) -> Path:
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        path = directory / "backup"
        path.write_bytes(data)
        return path

    def test_reads(self) -> None:
        path = self.write(seal(KEY, HEADER, packed()))
        header, opened = read_backup(path, "prod", "master", [KEY])
        self.assertEqual(header, HEADER)
        self.assertEqual(opened.manifest["name"], "master")

    def test_another_cluster_or_master(self) -> None:
        path = self.write(seal(KEY, HEADER, packed()))
        with self.assertRaisesRegex(BackupError, "of cluster 'prod', not 'test'"):
            read_backup(path, "test", "master", [KEY])
        with self.assertRaisesRegex(BackupError, "of master 'master', not 'm2'"):
            read_backup(path, "prod", "m2", [KEY])

    def test_header_and_manifest_disagree(self) -> None:
        path = self.write(seal(KEY, Header("prod", "m2", 0), packed()))
        with self.assertRaisesRegex(BackupError, "names another cluster or master"):
            read_backup(path, "prod", "m2", [KEY])

    def test_newer_hepto(self) -> None:
        path = self.write(seal(KEY, HEADER, packed(version="99.0.0")))
        with self.assertRaisesRegex(BackupError, "written by hepto 99.0.0, newer than this one"):
            read_backup(path, "prod", "master", [KEY])

    def test_unreadable(self) -> None:
        with self.assertRaisesRegex(BackupError, "cannot read /nonexistent"):
            read_backup(Path("/nonexistent"), "prod", "master", [KEY])
