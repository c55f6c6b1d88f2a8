"""Writing OCI image-layout archives: what is inside, digests that check out, determinism."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from hepto.images import layout
from hepto.images.layout import (
    Directory,
    File,
    ImageConfig,
    Platform,
    Recipe,
    Symlink,
    archive_bytes,
    ensure_archive,
    write_archive,
)
from hepto.images.pause import PAUSE_IMAGE, ensure_pause_archive, pause_recipe
from images import BUSYBOX, BUSYBOX_IMAGE, busybox_recipe

AMD64 = Platform("linux", "amd64")


def recipe(**changes: Any) -> Recipe:
    fields: dict[str, Any] = {
        "name": "localhost/test/tool:2",
        "entries": [
            File("/bin/tool", b"\x7fELF tool", 0o755),
            Symlink("/bin/alias", "tool"),
            Directory("/tmp", 0o1777),
            File("/etc/motd", b"hello\n"),
        ],
        "config": ImageConfig(
            entrypoint=("/bin/tool",),
            cmd=("--serve",),
            env=("PATH=/bin",),
            user="1000:1000",
            working_dir="/tmp",
        ),
        "platform": AMD64,
    }
    return Recipe(**(fields | changes))


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {info.name: info for info in tar}


def files(data: bytes) -> dict[str, bytes]:
    found = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar:
            stream = tar.extractfile(info)
            if stream is not None:
                found[info.name] = stream.read()
    return found


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Opened:
    """An archive's documents, each found through the digest that names it."""

    def __init__(self, data: bytes) -> None:
        self.files = files(data)
        self.index = json.loads(self.files["index.json"])
        [self.entry] = self.index["manifests"]
        self.manifest = json.loads(self.blob(self.entry["digest"]))
        self.config = json.loads(self.blob(self.manifest["config"]["digest"]))
        [layer] = self.manifest["layers"]
        self.layer = gzip.decompress(self.blob(layer["digest"]))

    def blob(self, digest: str) -> bytes:
        algorithm, _, hexadecimal = digest.partition(":")
        return self.files[f"blobs/{algorithm}/{hexadecimal}"]


class ArchiveTests(SynchronousTestCase):
    def test_layout(self) -> None:
        _, data = archive_bytes(recipe())
        blobs = sorted(name for name in files(data) if name.startswith("blobs/"))
        self.assertEqual(len(blobs), 3)
        self.assertEqual(
            list(members(data)), ["oci-layout", "index.json", "blobs", "blobs/sha256", *blobs]
        )
        self.assertEqual(json.loads(files(data)["oci-layout"]), {"imageLayoutVersion": "1.0.0"})
        for info in members(data).values():
            self.assertEqual((info.uid, info.gid, info.mtime), (0, 0, 0), info.name)

    def test_every_digest_checks_out(self) -> None:
        written, data = archive_bytes(recipe())
        opened = Opened(data)
        for name, content in opened.files.items():
            if name.startswith("blobs/sha256/"):
                self.assertEqual(sha256(content), "sha256:" + name.rsplit("/", 1)[1])
        self.assertEqual(written.manifest_digest, opened.entry["digest"])
        self.assertEqual(opened.entry["size"], len(opened.blob(opened.entry["digest"])))
        for descriptor in (opened.manifest["config"], *opened.manifest["layers"]):
            self.assertEqual(descriptor["size"], len(opened.blob(descriptor["digest"])))
        self.assertEqual(written.config_digest, opened.manifest["config"]["digest"])
        self.assertEqual(written.layer_digest, opened.manifest["layers"][0]["digest"])
        self.assertEqual(opened.config["rootfs"]["diff_ids"], [sha256(opened.layer)])
        self.assertEqual(written.size, len(data))

    def test_media_types(self) -> None:
        opened = Opened(archive_bytes(recipe())[1])
        self.assertEqual(opened.index["mediaType"], "application/vnd.oci.image.index.v1+json")
        self.assertEqual(opened.index["schemaVersion"], 2)
        self.assertEqual(opened.entry["mediaType"], "application/vnd.oci.image.manifest.v1+json")
        self.assertEqual(opened.manifest["mediaType"], opened.entry["mediaType"])
        self.assertEqual(
            opened.manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json"
        )
        self.assertEqual(
            opened.manifest["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )

    def test_names_for_ctr(self) -> None:
        # ctr names the image after io.containerd.image.name; the OCI ref name is the tag.
        opened = Opened(archive_bytes(recipe())[1])
        self.assertEqual(
            opened.entry["annotations"],
            {
                "io.containerd.image.name": "localhost/test/tool:2",
                "org.opencontainers.image.ref.name": "2",
            },
        )

    def test_platform_in_config_and_index(self) -> None:
        opened = Opened(archive_bytes(recipe(platform=Platform("linux", "arm", "v7")))[1])
        self.assertEqual(
            opened.entry["platform"], {"os": "linux", "architecture": "arm", "variant": "v7"}
        )
        self.assertEqual(
            (opened.config["os"], opened.config["architecture"], opened.config["variant"]),
            ("linux", "arm", "v7"),
        )

    def test_config(self) -> None:
        opened = Opened(archive_bytes(recipe())[1])
        self.assertEqual(
            opened.config["config"],
            {
                "Entrypoint": ["/bin/tool"],
                "Cmd": ["--serve"],
                "Env": ["PATH=/bin"],
                "User": "1000:1000",
                "WorkingDir": "/tmp",
            },
        )
        bare = Opened(archive_bytes(recipe(config=ImageConfig(cmd=("sh",))))[1])
        self.assertEqual(bare.config["config"], {"Cmd": ["sh"]})

    def test_layer(self) -> None:
        layer = Opened(archive_bytes(recipe())[1]).layer
        entries = members(layer)
        # Sorted, each parent before what it holds, the missing parents added.
        self.assertEqual(list(entries), ["bin", "bin/alias", "bin/tool", "etc", "etc/motd", "tmp"])
        self.assertTrue(entries["bin"].isdir())
        self.assertEqual(entries["bin"].mode, 0o755)
        self.assertTrue(entries["bin/alias"].issym())
        self.assertEqual(entries["bin/alias"].linkname, "tool")
        self.assertEqual(entries["bin/tool"].mode, 0o755)
        self.assertEqual(entries["etc/motd"].mode, 0o644)
        self.assertEqual(entries["tmp"].mode, 0o1777)
        self.assertEqual(files(layer)["bin/tool"], b"\x7fELF tool")
        for info in entries.values():
            self.assertEqual((info.uid, info.gid, info.mtime, info.uname), (0, 0, 0, ""))

    def test_deterministic(self) -> None:
        first = archive_bytes(recipe())
        self.assertEqual(archive_bytes(recipe()), first)
        # The order entries are given in does not matter: they are sorted.
        shuffled = recipe(entries=list(reversed(recipe().entries)))
        self.assertEqual(archive_bytes(shuffled), first)
        # Anything else does.
        for other in (
            recipe(name="localhost/test/tool:3"),
            recipe(config=ImageConfig(cmd=("other",))),
            recipe(entries=[File("/bin/tool", b"\x7fELF tool", 0o700)]),
            recipe(platform=Platform("linux", "arm64")),
        ):
            self.assertNotEqual(archive_bytes(other)[0].manifest_digest, first[0].manifest_digest)

    def test_bad_recipes(self) -> None:
        for name in ("busybox", "localhost/busybox", "localhost/busybox:", "a/b@sha256:00"):
            self.assertRaises(ValueError, recipe, name=name)
        for entries in (
            [File("relative", b"")],
            [File("/", b"")],
            [File("/a", b""), Directory("/a")],
        ):
            self.assertRaises(ValueError, archive_bytes, recipe(entries=entries))

    def test_host_platform(self) -> None:
        for machine, expected in [
            ("x86_64", "linux/amd64"),
            ("aarch64", "linux/arm64"),
            ("armv7l", "linux/arm/v7"),
            ("riscv64", "linux/riscv64"),
        ]:
            uname = os.uname_result(("Linux", "h", "6", "#1", machine))
            with mock.patch("os.uname", return_value=uname):
                self.assertEqual(str(layout.host_platform()), expected)

    def test_platform_runs(self) -> None:
        self.assertTrue(AMD64.runs("linux", "amd64"))
        self.assertTrue(AMD64.runs("linux", "386"))
        self.assertFalse(AMD64.runs("linux", "arm64"))
        self.assertFalse(AMD64.runs("windows", "amd64"))
        self.assertTrue(Platform("linux", "arm64").runs("linux", "arm"))


class WriteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="hepto-layout-"))
        self.addCleanup(shutil.rmtree, self.directory)
        self.path = self.directory / "image.tar"

    def test_write(self) -> None:
        written = write_archive(recipe(), self.path)
        self.assertEqual(self.path.read_bytes(), archive_bytes(recipe())[1])
        self.assertEqual(written, archive_bytes(recipe())[0])
        self.assertEqual(self.path.stat().st_mode & 0o777, 0o644)
        self.assertEqual(os.listdir(self.directory), ["image.tar"])

    def test_a_failed_write_leaves_the_old_archive_and_no_debris(self) -> None:
        self.path.write_bytes(b"old")
        with mock.patch("os.replace", side_effect=OSError(28, "No space left on device")):
            self.assertRaises(OSError, write_archive, recipe(), self.path)
        self.assertEqual(self.path.read_bytes(), b"old")
        self.assertEqual(os.listdir(self.directory), ["image.tar"])

    def test_ensure_writes_only_what_is_missing_or_stale(self) -> None:
        self.assertIsNotNone(ensure_archive(recipe(), self.path))
        before = self.path.stat()
        self.assertIsNone(ensure_archive(recipe(), self.path))
        self.assertEqual(self.path.stat().st_ino, before.st_ino, "rewritten though up to date")
        changed = recipe(entries=[File("/bin/tool", b"\x7fELF tool, version 2", 0o755)])
        written = ensure_archive(changed, self.path)
        self.assertIsNotNone(written)
        self.assertEqual(self.path.read_bytes(), archive_bytes(changed)[1])

    def test_ensure_replaces_what_it_cannot_read(self) -> None:
        for damaged in (b"", b"not a tar", archive_bytes(recipe())[1][:1000]):
            self.path.write_bytes(damaged)
            self.assertIsNotNone(ensure_archive(recipe(), self.path))
            self.assertEqual(self.path.read_bytes(), archive_bytes(recipe())[1])

    def test_ensure_replaces_another_image(self) -> None:
        write_archive(recipe(name="localhost/test/other:1"), self.path)
        self.assertIsNotNone(ensure_archive(recipe(), self.path))


class PauseImageTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="hepto-pause-"))
        self.addCleanup(shutil.rmtree, self.directory)
        self.program = self.directory / "pause"
        self.program.write_bytes(b"\x7fELF pause, version 1")
        self.archive = self.directory / "pause.tar"

    def test_the_pause_image(self) -> None:
        opened = Opened(archive_bytes(pause_recipe(b"\x7fELF pause"))[1])
        self.assertEqual(PAUSE_IMAGE, "localhost/hepto/pause:1")
        self.assertEqual(opened.entry["annotations"]["io.containerd.image.name"], PAUSE_IMAGE)
        self.assertEqual(opened.config["config"], {"Entrypoint": ["/pause"], "User": "65535:65535"})
        [only] = members(opened.layer).values()
        self.assertEqual((only.name, only.mode), ("pause", 0o755))
        self.assertEqual(files(opened.layer)["pause"], b"\x7fELF pause")

    def test_written_again_only_when_the_program_changed(self) -> None:
        first = ensure_pause_archive(self.program, self.archive)
        assert first is not None
        self.assertIsNone(ensure_pause_archive(self.program, self.archive))
        self.program.write_bytes(b"\x7fELF pause, version 2")
        second = ensure_pause_archive(self.program, self.archive)
        assert second is not None
        self.assertNotEqual(second.manifest_digest, first.manifest_digest)
        self.assertEqual(Opened(self.archive.read_bytes()).entry["digest"], second.manifest_digest)

    def test_a_missing_program(self) -> None:
        self.assertRaises(OSError, ensure_pause_archive, self.directory / "nope", self.archive)
        self.assertFalse(self.archive.exists())


class BusyboxImageTests(SynchronousTestCase):
    def test_the_busybox_image(self) -> None:
        if not BUSYBOX.exists():
            raise self.skipTest(f"no {BUSYBOX}: tools/install-deps installs busybox-static")
        built = busybox_recipe()
        opened = Opened(archive_bytes(built)[1])
        self.assertEqual(opened.entry["annotations"]["io.containerd.image.name"], BUSYBOX_IMAGE)
        self.assertEqual(opened.config["config"], {"Cmd": ["sh"], "Env": ["PATH=/bin"]})
        entries = members(opened.layer)
        self.assertEqual(entries["bin/sh"].linkname, "busybox")
        self.assertEqual(entries["bin/busybox"].mode, 0o755)
        self.assertEqual(files(opened.layer)["bin/busybox"], BUSYBOX.read_bytes())
        for directory in ("etc", "tmp", "proc", "sys", "dev", "root", "var"):
            self.assertTrue(entries[directory].isdir(), directory)
        passwd = files(opened.layer)["etc/passwd"].decode()
        self.assertEqual([line.split(":")[0] for line in passwd.splitlines()], ["root", "nobody"])
        group = files(opened.layer)["etc/group"].decode()
        self.assertEqual([line.split(":")[2] for line in group.splitlines()], ["0", "65534"])
