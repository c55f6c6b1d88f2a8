"""Checking operators' archives: the names ctr will give, or one sentence saying why not."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from hepto.images import inspect
from hepto.images.inspect import ArchiveContents, ArchiveError, inspect_archive, normalize
from hepto.images.layout import File, ImageConfig, Platform, Recipe, archive_bytes

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64")
NAME = "localhost/test/tool:1"


def tar(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return buffer.getvalue()


def untar(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return {
            info.name: archive.extractfile(info).read()  # type: ignore[union-attr]
            for info in archive
            if info.isreg()
        }


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci(name: str = NAME, platform: Platform = AMD64, tool: bytes = b"\x7fELF") -> dict[str, bytes]:
    """The files of a good OCI archive of one image, to spoil."""
    recipe = Recipe(name, [File("/tool", tool)], ImageConfig(cmd=("/tool",)), platform)
    return untar(archive_bytes(recipe)[1])


def index_of(files: dict[str, bytes]) -> dict[str, Any]:
    index: dict[str, Any] = json.loads(files["index.json"])
    return index


def blob_path(reference: str) -> str:
    return "blobs/sha256/" + reference.removeprefix("sha256:")


def docker(tags: list[str], architecture: str = "amd64") -> dict[str, bytes]:
    """The files of a docker save archive (format 1.2): config and layer by path."""
    layer = tar({"tool": b"\x7fELF"})
    config = as_json(
        {
            "architecture": architecture,
            "os": "linux",
            "config": {"Cmd": ["/tool"]},
            "rootfs": {"type": "layers", "diff_ids": [digest(layer)]},
        }
    )
    config_path = config_hex = digest(config).removeprefix("sha256:")
    layer_dir = digest(layer).removeprefix("sha256:")
    manifest = [
        {"Config": f"{config_path}.json", "RepoTags": tags, "Layers": [f"{layer_dir}/layer.tar"]}
    ]
    return {
        "manifest.json": as_json(manifest),
        f"{config_hex}.json": config,
        f"{layer_dir}/layer.tar": layer,
    }


class InspectTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="hepto-inspect-"))
        self.addCleanup(shutil.rmtree, self.directory)

    def archive(self, data: bytes, name: str = "image.tar") -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path

    def inspect(self, data: bytes, platform: Platform = AMD64) -> ArchiveContents:
        return inspect_archive(self.archive(data), platform)

    def refused(self, data: bytes, platform: Platform = AMD64) -> str:
        error = self.assertRaises(ArchiveError, self.inspect, data, platform)
        message = str(error)
        self.assertNotIn("\n", message)
        return message

    # What ctr imports.

    def test_oci(self) -> None:
        self.assertEqual(self.inspect(tar(oci())), ArchiveContents("oci", False, (NAME,)))

    def test_gzip_compressed(self) -> None:
        contents = self.inspect(gzip.compress(tar(oci())))
        self.assertEqual(contents, ArchiveContents("oci", True, (NAME,)))

    def test_docker_save(self) -> None:
        contents = self.inspect(tar(docker(["tool:1", "example.com/team/tool:2"])))
        self.assertEqual(
            contents,
            ArchiveContents(
                "docker", False, ("docker.io/library/tool:1", "example.com/team/tool:2")
            ),
        )

    def test_docker_save_with_symlinked_layers(self) -> None:
        # Older docker save archives link identical layers instead of copying them.
        files = docker(["tool:1"])
        [entry] = json.loads(files["manifest.json"])
        [layer] = entry["Layers"]
        entry["Layers"] = ["other/layer.tar"]
        files["manifest.json"] = as_json([entry])
        self.assertEqual(
            self.inspect(tar(files, {"other/layer.tar": f"../{layer}"})).names,
            ("docker.io/library/tool:1",),
        )

    def test_both_formats_read_as_oci(self) -> None:
        # docker save since 25 writes both; ctr prefers the OCI layout, and so do we.
        contents = self.inspect(tar({**oci(), **docker(["tool:1"])}))
        self.assertEqual(contents, ArchiveContents("oci", False, (NAME,)))

    def test_blobs_are_found_by_their_content(self) -> None:
        # ctr finds OCI blobs by the digest of what they hold, wherever they are.
        files = oci()
        moved = {f"elsewhere/{number}": content for number, content in enumerate(files.values())}
        moved.update({"oci-layout": files["oci-layout"], "index.json": files["index.json"]})
        self.assertEqual(self.inspect(tar(moved)).names, (NAME,))

    def test_a_full_ref_name_names_the_image(self) -> None:
        files = oci()
        index = index_of(files)
        index["manifests"][0]["annotations"] = {"org.opencontainers.image.ref.name": NAME}
        files["index.json"] = as_json(index)
        self.assertEqual(self.inspect(tar(files)).names, (NAME,))

    def test_a_multi_platform_index_needs_this_platform_only(self) -> None:
        files = oci()
        index = index_of(files)
        [entry] = index["manifests"]
        del entry["annotations"]
        missing = {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:" + "0" * 64,
            "size": 1,
            "platform": {"os": "linux", "architecture": "arm64"},
        }
        nested = as_json({"schemaVersion": 2, "manifests": [missing, entry]})
        files[blob_path(digest(nested))] = nested
        index["manifests"] = [
            {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": digest(nested),
                "size": len(nested),
                "annotations": {"io.containerd.image.name": NAME},
            }
        ]
        files["index.json"] = as_json(index)
        self.assertEqual(self.inspect(tar(files)).names, (NAME,))
        message = self.refused(tar(files), ARM64)
        self.assertIn("misses the blob sha256:0000", message)

    # What it does not, and why.

    def test_not_a_tar(self) -> None:
        self.assertEqual(
            self.refused(b"hello, world\n" * 100), "is not a tar archive (invalid header)"
        )
        self.assertTrue(self.refused(b"\x7fELF").startswith("is not a tar archive"))

    def test_gzip_but_not_a_tar(self) -> None:
        message = self.refused(gzip.compress(b"hello, world\n" * 100))
        self.assertTrue(message.startswith("is not a gzip-compressed tar archive"), message)

    def test_empty(self) -> None:
        self.assertEqual(self.refused(b""), "is empty")

    def test_other_compressors(self) -> None:
        self.assertEqual(
            self.refused(lzma.compress(tar(oci()))),
            "is compressed with xz, which hepto does not read: decompress it, "
            "or compress it with gzip",
        )

    def test_truncated(self) -> None:
        # The layer, all but the whole archive, ends half-way.
        data = tar(oci(tool=os.urandom(256 * 1024)))
        message = self.refused(data[: len(data) // 2])
        self.assertRegex(message, r"^is truncated: it ends inside blobs/sha256/[0-9a-f]{64}$")

    def test_truncated_gzip(self) -> None:
        data = gzip.compress(tar(oci(tool=os.urandom(256 * 1024))))
        message = self.refused(data[: len(data) // 2])
        self.assertRegex(message, r"^is truncated: it ends inside blobs/sha256/[0-9a-f]{64}$")

    def test_truncated_between_members(self) -> None:
        data = tar({"oci-layout": b"{}", "index.json": b"{}"})
        self.assertEqual(
            self.refused(data[:700]), "is truncated after oci-layout (unexpected end of data)"
        )

    def test_neither_format(self) -> None:
        self.assertEqual(
            self.refused(tar({"hello.txt": b"hi"})),
            "is a tar archive but neither an OCI image layout (oci-layout and index.json) "
            "nor a docker save archive (manifest.json)",
        )

    def test_oci_layout_without_index(self) -> None:
        files = oci()
        del files["index.json"]
        self.assertEqual(self.refused(tar(files)), "is an OCI image layout without index.json")

    def test_unknown_layout_version(self) -> None:
        files = oci()
        files["oci-layout"] = as_json({"imageLayoutVersion": "2.0.0"})
        self.assertEqual(
            self.refused(tar(files)),
            "is an OCI image layout of version '2.0.0', and ctr reads 1.0.0",
        )

    def test_missing_blob(self) -> None:
        files = oci()
        manifest = json.loads(files[blob_path(index_of(files)["manifests"][0]["digest"])])
        for descriptor, what in [
            (manifest["layers"][0], "a layer"),
            (manifest["config"], "the config"),
            (index_of(files)["manifests"][0], "the manifest"),
        ]:
            spoiled = dict(files)
            del spoiled[blob_path(descriptor["digest"])]
            self.assertEqual(
                self.refused(tar(spoiled)),
                f"misses the blob {descriptor['digest']} ({what} of {NAME})",
            )

    def test_a_blob_whose_content_does_not_match_is_missing(self) -> None:
        files = oci()
        layer = json.loads(files[blob_path(index_of(files)["manifests"][0]["digest"])])["layers"][0]
        files[blob_path(layer["digest"])] += b"damaged"
        self.assertIn(f"misses the blob {layer['digest']}", self.refused(tar(files)))

    def test_docker_missing_layer(self) -> None:
        files = docker(["tool:1"])
        [layer] = [name for name in files if name.endswith("layer.tar")]
        del files[layer]
        self.assertEqual(
            self.refused(tar(files)),
            f"misses the layer {layer} of docker.io/library/tool:1",
        )

    def test_no_name(self) -> None:
        files = oci()
        index = index_of(files)
        index["manifests"][0]["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
        files["index.json"] = as_json(index)
        self.assertEqual(
            self.refused(tar(files)),
            "names no image: index.json gives no entry a full name, only the tag 'latest' "
            "(annotation io.containerd.image.name), so ctr would import it unnamed",
        )
        del index["manifests"][0]["annotations"]
        files["index.json"] = as_json(index)
        self.assertEqual(
            self.refused(tar(files)),
            "names no image: index.json gives no entry a full name "
            "(annotation io.containerd.image.name), so ctr would import it unnamed",
        )
        self.assertEqual(
            self.refused(tar(docker([]))),
            "names no image: manifest.json gives no RepoTags, so ctr would import it unnamed",
        )

    def test_another_platform(self) -> None:
        self.assertEqual(
            self.refused(tar(oci(platform=ARM64))),
            f"holds {NAME} for linux/arm64 only, and this node runs linux/amd64",
        )
        self.assertEqual(
            self.refused(tar(docker(["tool:1"], architecture="arm64"))),
            "holds docker.io/library/tool:1 for linux/arm64, and this node runs linux/amd64",
        )
        self.assertEqual(self.inspect(tar(oci(platform=ARM64)), ARM64).names, (NAME,))

    def test_the_config_tells_the_platform_when_the_index_does_not(self) -> None:
        files = oci(platform=ARM64)
        index = index_of(files)
        del index["manifests"][0]["platform"]
        files["index.json"] = as_json(index)
        self.assertEqual(
            self.refused(tar(files)),
            f"holds {NAME} for linux/arm64, and this node runs linux/amd64",
        )

    def test_only_what_may_be_json_is_kept_in_memory(self) -> None:
        # Archives may be gigabytes: layers are hashed as they stream by, never kept.
        files = oci(tool=os.urandom(64 * 1024))
        with open(self.archive(tar(files)), "rb") as stream:
            members = inspect._read(stream, compressed=False)
        kept = {name for name, member in members.by_path.items() if member.content is not None}
        layer = json.loads(files[blob_path(index_of(files)["manifests"][0]["digest"])])["layers"]
        self.assertEqual(len(kept), 4)
        self.assertNotIn(blob_path(layer[0]["digest"]), kept)
        self.assertIn("index.json", kept)

    def test_not_json(self) -> None:
        files = oci()
        files["index.json"] = b"{not json"
        self.assertEqual(self.refused(tar(files)), "has index.json, but it is not valid JSON")
        files["index.json"] = as_json({"manifests": {}})
        self.assertEqual(
            self.refused(tar(files)), "has an index.json whose manifests is not a list"
        )
        files["index.json"] = as_json([])
        self.assertEqual(self.refused(tar(files)), "has index.json, but it is not a JSON object")

    def test_files_that_are_no_archive(self) -> None:
        error = self.assertRaises(ArchiveError, inspect_archive, self.directory / "nope.tar")
        self.assertEqual(str(error), "does not exist")
        error = self.assertRaises(ArchiveError, inspect_archive, self.directory)
        self.assertEqual(str(error), "is a directory, not an archive")

    @settings(max_examples=500, deadline=None)
    @given(st.data())
    def test_damage_gives_an_archive_error_and_nothing_else(self, data: st.DataObject) -> None:
        good = data.draw(st.sampled_from([tar(oci()), tar(docker(["tool:1"]))]))
        if data.draw(st.booleans()):
            good = gzip.compress(good)
        damaged = bytearray(good)
        for _ in range(data.draw(st.integers(1, 8))):
            position = data.draw(st.integers(0, len(damaged) - 1))
            damaged[position] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(damaged)))
        try:
            self.inspect(bytes(damaged[:cut]))
        except ArchiveError as error:
            self.assertNotIn("\n", str(error))


class NormalizeTests(SynchronousTestCase):
    def test_as_ctr_names_docker_references(self) -> None:
        for given_name, expected in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1", "docker.io/library/busybox:1"),
            ("team/tool:2", "docker.io/team/tool:2"),
            ("docker.io/busybox:1", "docker.io/library/busybox:1"),
            ("index.docker.io/team/tool", "docker.io/team/tool:latest"),
            ("example.com/tool:3", "example.com/tool:3"),
            ("example.com:5000/a/b", "example.com:5000/a/b:latest"),
            ("localhost/tool:1", "localhost/tool:1"),
            ("Registry/tool:1", "Registry/tool:1"),
            ("tool@sha256:" + "a" * 64, "docker.io/library/tool@sha256:" + "a" * 64),
        ]:
            self.assertEqual(normalize(given_name), expected, given_name)
