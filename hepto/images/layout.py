"""OCI image-layout archives of one layer, written from a list of files, deterministically.

The archive is what ``ctr images import`` reads (the OCI Image Layout, in a tar):
``oci-layout``, ``index.json`` naming the image, and under ``blobs/sha256/`` the gzip
layer, the image config and the manifest.  Every timestamp is zero, every owner root,
every list sorted and every JSON object written with sorted keys, so the same recipe
gives the same bytes, hence the same digests, every time (on one machine: another zlib
may compress differently).

It is meant for small images hepto makes itself (the pause image, test images): the
whole archive is built in memory.  Only the standard library is used, and nothing
happens at import time.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import attrs

from hepto.goarch import go_architecture

OCI_LAYOUT_VERSION: Final = "1.0.0"
INDEX_MEDIA_TYPE: Final = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE: Final = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE: Final = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
#: The full reference ctr names the image after (containerd's own annotation).
IMAGE_NAME_ANNOTATION: Final = "io.containerd.image.name"
#: The tag, as the OCI Image Layout specification names an index entry.
REF_NAME_ANNOTATION: Final = "org.opencontainers.image.ref.name"
#: On ``index.json`` itself, where ctr does not look: the recipe's :func:`fingerprint`.
RECIPE_ANNOTATION: Final = "hepto.images.recipe"


@attrs.frozen
class File:
    """A regular file of the image, ``path`` absolute, ``content`` all of it."""

    path: str
    content: bytes = attrs.field(repr=lambda content: f"<{len(content)} bytes>")
    mode: int = 0o644

    @classmethod
    def copy(cls, path: str, source: Path, mode: int | None = None) -> File:
        """The host's file ``source`` as ``path``, with its own permissions unless given."""
        content = source.read_bytes()
        return cls(path, content, source.stat().st_mode & 0o7777 if mode is None else mode)


@attrs.frozen
class Symlink:
    path: str
    target: str


@attrs.frozen
class Directory:
    path: str
    mode: int = 0o755


Entry = File | Symlink | Directory


def _entries(entries: Iterable[Entry]) -> tuple[Entry, ...]:
    return tuple(entries)


#: Architectures a machine runs besides its own, as containerd's default matcher has it.
_ALSO_RUNS: Final = {"amd64": ("386",), "arm64": ("arm",)}


@attrs.frozen
class Platform:
    """An OCI platform: ``os`` and ``architecture`` as Go spells them (``linux/amd64``)."""

    os: str
    architecture: str
    variant: str | None = None

    def runs(self, os: object, architecture: object) -> bool:
        """Whether a machine of this platform runs images of that one (variants aside)."""
        return os == self.os and architecture in (
            self.architecture,
            *_ALSO_RUNS.get(self.architecture, ()),
        )

    def as_json(self) -> dict[str, str]:
        fields = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            fields["variant"] = self.variant
        return fields

    def __str__(self) -> str:
        return "/".join(filter(None, (self.os, self.architecture, self.variant)))


def host_platform() -> Platform:
    """This machine's platform, the one containerd imports and runs by default."""
    machine = os.uname().machine
    if machine.startswith("armv"):
        return Platform("linux", "arm", f"v{machine[4]}")
    return Platform("linux", go_architecture(machine))


@attrs.frozen
class ImageConfig:
    """The part of the image config a runtime reads to start the container."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    user: str = ""
    working_dir: str = ""

    def as_json(self) -> dict[str, Any]:
        fields = {
            "Entrypoint": list(self.entrypoint),
            "Cmd": list(self.cmd),
            "Env": list(self.env),
            "User": self.user,
            "WorkingDir": self.working_dir,
        }
        return {key: value for key, value in fields.items() if value}


@attrs.frozen
class Recipe:
    """Everything an archive is made of: its bytes are a function of this alone.

    ``name`` is a full reference with a tag (``localhost/hepto/pause:1``).
    """

    name: str = attrs.field()
    entries: tuple[Entry, ...] = attrs.field(converter=_entries)
    config: ImageConfig = ImageConfig()
    platform: Platform = attrs.field(factory=host_platform)

    @name.validator
    def _full_reference(self, attribute: object, name: str) -> None:
        if tag_of(name) is None or "/" not in name:
            raise ValueError(f"{name!r} is not a full image name with a tag (host/path:tag)")

    @property
    def tag(self) -> str:
        tag = tag_of(self.name)
        assert tag is not None  # the validator made sure
        return tag


def tag_of(name: str) -> str | None:
    """The tag of a reference (``1`` of ``localhost/hepto/pause:1``), None without one."""
    last = name.rsplit("/", 1)[-1]
    if "@" in last or ":" not in last:
        return None
    return last.rsplit(":", 1)[1] or None


@attrs.frozen
class Written:
    """What an archive holds, by digest: the manifest's is what ``ctr images ls`` shows."""

    name: str
    manifest_digest: str
    config_digest: str
    layer_digest: str
    size: int


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data)}


def _member(name: str, kind: bytes, mode: int, size: int = 0, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = target
    # TarInfo's defaults, spelt out: the digests depend on them.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def _with_parents(entries: Iterable[Entry]) -> dict[str, Entry]:
    """Entries by relative path, each missing parent directory added (mode 0755)."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        path = posixpath.normpath(entry.path).lstrip("/")
        if not entry.path.startswith("/") or path in ("", "."):
            raise ValueError(f"{entry.path!r}: image paths are absolute, and not / itself")
        if path in by_path:
            raise ValueError(f"{entry.path!r} is given twice")
        by_path[path] = entry
    for path in list(by_path):
        parent = posixpath.dirname(path)
        while parent and parent not in by_path:
            by_path[parent] = Directory("/" + parent)
            parent = posixpath.dirname(parent)
    return by_path


def layer_tar(entries: Iterable[Entry]) -> bytes:
    """The uncompressed layer: every entry, sorted by path, parents first."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, entry in sorted(_with_parents(entries).items()):
            if isinstance(entry, File):
                member = _member(path, tarfile.REGTYPE, entry.mode, len(entry.content))
                tar.addfile(member, io.BytesIO(entry.content))
            elif isinstance(entry, Symlink):
                tar.addfile(_member(path, tarfile.SYMTYPE, 0o777, target=entry.target))
            else:
                tar.addfile(_member(path, tarfile.DIRTYPE, entry.mode))
    return buffer.getvalue()


def _config(recipe: Recipe, diff_id: str) -> bytes:
    return _json(
        {
            **recipe.platform.as_json(),
            "config": recipe.config.as_json(),
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "hepto", "comment": f"hepto's recipe for {recipe.name}"}],
        }
    )


def fingerprint(recipe: Recipe) -> str:
    """What the image is, compression aside: its name, config and uncompressed layer.

    Cheaper than the archive (no gzip): what tells whether an archive is stale.
    """
    config = _config(recipe, _digest(layer_tar(recipe.entries)))
    return _digest(_json({"name": recipe.name, "config": _digest(config)}))


def _files(recipe: Recipe) -> tuple[dict[str, bytes], bytes, bytes, bytes]:
    """The archive's files by path, then its manifest, config and compressed layer."""
    layer = layer_tar(recipe.entries)
    compressed = gzip.compress(layer, compresslevel=6, mtime=0)
    config = _config(recipe, _digest(layer))
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": _descriptor(CONFIG_MEDIA_TYPE, config),
            "layers": [_descriptor(LAYER_MEDIA_TYPE, compressed)],
        }
    )
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {
                **_descriptor(MANIFEST_MEDIA_TYPE, manifest),
                "platform": recipe.platform.as_json(),
                "annotations": {
                    IMAGE_NAME_ANNOTATION: recipe.name,
                    REF_NAME_ANNOTATION: recipe.tag,
                },
            }
        ],
        "annotations": {
            RECIPE_ANNOTATION: _digest(_json({"name": recipe.name, "config": _digest(config)}))
        },
    }
    files = {
        "oci-layout": _json({"imageLayoutVersion": OCI_LAYOUT_VERSION}),
        "index.json": _json(index),
    }
    for blob in (compressed, config, manifest):
        files["blobs/sha256/" + hashlib.sha256(blob).hexdigest()] = blob
    return files, manifest, config, compressed


def archive_bytes(recipe: Recipe) -> tuple[Written, bytes]:
    """The whole archive: ``oci-layout`` and ``index.json`` first, then the blobs."""
    files, manifest, config, layer = _files(recipe)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("oci-layout", "index.json"):
            content = files[name]
            tar.addfile(_member(name, tarfile.REGTYPE, 0o644, len(content)), io.BytesIO(content))
        for directory in ("blobs", "blobs/sha256"):
            tar.addfile(_member(directory, tarfile.DIRTYPE, 0o755))
        for name in sorted(name for name in files if name.startswith("blobs/")):
            content = files[name]
            tar.addfile(_member(name, tarfile.REGTYPE, 0o644, len(content)), io.BytesIO(content))
    data = buffer.getvalue()
    written = Written(recipe.name, _digest(manifest), _digest(config), _digest(layer), len(data))
    return written, data


def write_archive(recipe: Recipe, destination: Path) -> Written:
    """Write the archive to ``destination`` atomically: whole, or not at all."""
    written, data = archive_bytes(recipe)
    descriptor, temporary = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "wb") as stream:
            os.fchmod(stream.fileno(), 0o644)
            stream.write(data)
        os.replace(temporary, destination)
    except BaseException:
        os.unlink(temporary)
        raise
    return written


def recorded_fingerprint(archive: Path) -> str | None:
    """The fingerprint ``archive`` was written with; None if it has none or is unreadable."""
    try:
        with tarfile.open(archive, mode="r:") as tar:
            member = tar.extractfile("index.json")
            index = json.loads(member.read()) if member is not None else None
    except (OSError, tarfile.TarError, KeyError, ValueError):
        return None
    annotations = index.get("annotations") if isinstance(index, dict) else None
    value = annotations.get(RECIPE_ANNOTATION) if isinstance(annotations, dict) else None
    return value if isinstance(value, str) else None


def ensure_archive(recipe: Recipe, destination: Path) -> Written | None:
    """Write the archive unless ``destination`` already holds this recipe's image.

    Returns what was written, or None when the archive was up to date.  A missing,
    damaged or foreign file, or one of another recipe, is replaced (atomically).
    """
    if recorded_fingerprint(destination) == fingerprint(recipe):
        return None
    return write_archive(recipe, destination)
