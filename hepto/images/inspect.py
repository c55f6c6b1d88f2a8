"""Whether an operator's archive can be imported, and which images it names.

:func:`inspect_archive` reads the whole file, as ``ctr images import`` would, and
either lists the image names ctr will give it or raises :class:`ArchiveError`, whose
message is one sentence saying what is wrong.  It follows ctr's rules (containerd's
``core/images/archive/importer.go``):

* a tar, or a gzip-compressed tar (ctr decompresses its input);
* an OCI image layout (``oci-layout`` and ``index.json``) is preferred; otherwise a
  ``docker save`` archive (``manifest.json``);
* OCI blobs are found by the digest of their content, wherever they are in the tar;
  docker's config and layers by their path (symbolic links followed);
* an image is named by its ``io.containerd.image.name`` annotation, or by a full
  ``org.opencontainers.image.ref.name`` (a bare tag gets a made-up ``import-<date>``
  name); docker's ``RepoTags`` are normalized (``busybox:1`` is
  ``docker.io/library/busybox:1``);
* only this machine's platform is imported: a multi-platform index needs its content
  for this platform alone.

It reads in a loop on the calling thread: meant for the ``hepto`` command, never for
the agent's reactor (an archive may be gigabytes).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import posixpath
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Final, Literal, TypeVar

import attrs

from hepto.images.layout import (
    IMAGE_NAME_ANNOTATION,
    OCI_LAYOUT_VERSION,
    REF_NAME_ANNOTATION,
    Platform,
    host_platform,
)

T = TypeVar("T")

#: Manifests and configs are small; the largest JSON kept in memory while reading.
MAX_JSON: Final = 4 * 1024 * 1024
_CHUNK: Final = 1024 * 1024

_INDEX_TYPES: Final = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
_MANIFEST_TYPES: Final = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }
)
#: What other compressors' output starts with: ctr reads gzip and zstd only.
_MAGIC: Final = {
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
}


class ArchiveError(Exception):
    """The archive cannot be imported; ``str()`` says why, in one sentence."""


@attrs.frozen
class ArchiveContents:
    """What ``ctr images import`` will make of an archive."""

    format: Literal["oci", "docker"]
    compressed: bool
    names: tuple[str, ...]


@attrs.define
class _Member:
    digest: str
    content: bytes | None  # kept for what may be JSON, small enough to parse


@attrs.define
class _Members:
    """Every regular file of the tar, by path and by content digest; its symlinks."""

    by_path: dict[str, _Member] = attrs.Factory(dict)
    by_digest: dict[str, _Member] = attrs.Factory(dict)
    symlinks: dict[str, str] = attrs.Factory(dict)


def inspect_archive(path: Path, platform: Platform | None = None) -> ArchiveContents:
    """The names ctr will import ``path`` under, or :class:`ArchiveError` saying why not.

    ``platform`` is the one the images must run on: this machine's by default.
    """
    platform = platform or host_platform()
    try:
        with open(path, "rb") as stream:
            compressed = _is_gzip(stream)
            members = _read(stream, compressed)
    except IsADirectoryError:
        raise ArchiveError("is a directory, not an archive") from None
    except FileNotFoundError:
        raise ArchiveError("does not exist") from None
    except OSError as error:
        raise ArchiveError(f"cannot be read: {error.strerror or error}") from None
    if "oci-layout" in members.by_path:
        return ArchiveContents("oci", compressed, _oci_names(members, platform))
    if "manifest.json" in members.by_path:
        return ArchiveContents("docker", compressed, _docker_names(members, platform))
    raise ArchiveError(
        "is a tar archive but neither an OCI image layout (oci-layout and index.json) "
        "nor a docker save archive (manifest.json)"
    )


def _is_gzip(stream: IO[bytes]) -> bool:
    start = stream.read(8)
    stream.seek(0)
    if not start:
        raise ArchiveError("is empty")
    if start.startswith(b"\x1f\x8b"):
        return True
    for magic, compressor in _MAGIC.items():
        if start.startswith(magic):
            raise ArchiveError(
                f"is compressed with {compressor}, which hepto does not read: "
                "decompress it, or compress it with gzip"
            )
    return False


def _read(stream: IO[bytes], compressed: bool) -> _Members:
    """Every member read to its end, as ctr reads them: a truncated archive fails here."""
    members = _Members()
    inside = after = None
    try:
        # gzip's own reader, not tarfile's: that one fails with a TypeError on a cut header.
        source = gzip.GzipFile(fileobj=stream, mode="rb") if compressed else stream
        with tarfile.open(fileobj=source, mode="r|") as tar:
            for info in tar:
                name = posixpath.normpath(info.name)
                if info.issym():
                    members.symlinks[name] = posixpath.normpath(
                        posixpath.join(posixpath.dirname(name), info.linkname)
                    )
                elif info.isreg():
                    inside = info.name
                    member = _consume(tar, info)
                    members.by_path[name] = member
                    members.by_digest.setdefault(member.digest, member)
                inside, after = None, info.name
    except (EOFError, tarfile.ReadError, gzip.BadGzipFile, zlib.error) as error:
        reason = str(error) or type(error).__name__
        truncated = isinstance(error, EOFError) or "end of data" in reason
        if inside is not None and truncated:
            raise ArchiveError(f"is truncated: it ends inside {inside}") from None
        if after is None and inside is None:
            kind = "a gzip-compressed tar archive" if compressed else "a tar archive"
            raise ArchiveError(f"is not {kind} ({reason})") from None
        where = f"inside {inside}" if inside is not None else f"after {after}"
        raise ArchiveError(
            f"is {'truncated' if truncated else 'damaged'} {where} ({reason})"
        ) from None
    except tarfile.TarError as error:
        raise ArchiveError(f"is a damaged tar archive ({error})") from None
    return members


def _consume(tar: tarfile.TarFile, info: tarfile.TarInfo) -> _Member:
    data = tar.extractfile(info)
    assert data is not None  # a regular file always has data
    digest = hashlib.sha256()
    chunk = data.read(_CHUNK)
    # Manifests and configs are JSON, layers are not: only the former are kept.
    kept: list[bytes] | None = None
    if info.size <= MAX_JSON and chunk.lstrip()[:1] in (b"{", b"["):
        kept = []
    while chunk:
        digest.update(chunk)
        if kept is not None:
            kept.append(chunk)
        chunk = data.read(_CHUNK)
    content = b"".join(kept) if kept is not None else None
    return _Member("sha256:" + digest.hexdigest(), content)


def _json(member: _Member | None, what: str) -> Any:
    if member is None:
        raise ArchiveError(f"misses {what}")
    if member.content is None:
        raise ArchiveError(f"has {what}, but it is not JSON")
    try:
        return json.loads(member.content)
    except ValueError:
        raise ArchiveError(f"has {what}, but it is not valid JSON") from None


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ArchiveError(f"has {what}, but it is not a JSON object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ArchiveError(f"has {what}, but it is not a JSON list")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ArchiveError(f"has {what} that is not a string")
    return value


_KINDS: Final[dict[type, str]] = {list: "a list", dict: "an object", str: "a string"}


def _field(document: Mapping[str, Any], key: str, kind: type[T], what: str) -> T:
    """``document[key]``, of the ``kind`` expected (a string not empty) or ArchiveError."""
    value = document.get(key)
    if not isinstance(value, kind) or (kind is str and not value):
        raise ArchiveError(f"has {what} whose {key} is not {_KINDS[kind]}")
    return value


def _runs_on(candidate: Mapping[str, Any], platform: Platform) -> bool:
    return platform.runs(candidate.get("os"), candidate.get("architecture"))


def _rank(candidate: Mapping[str, Any], platform: Platform) -> int:
    """0 for the platform itself, 1 for one it also runs, 2 for one it does not."""
    if not _runs_on(candidate, platform):
        return 2
    return 0 if candidate.get("architecture") == platform.architecture else 1


def _platform_text(candidate: Mapping[str, Any]) -> str:
    return "/".join(str(candidate.get(key, "?")) for key in ("os", "architecture"))


# -- OCI image layout ------------------------------------------------------------------


def _oci_names(members: _Members, platform: Platform) -> tuple[str, ...]:
    layout = _object(_json(members.by_path["oci-layout"], "oci-layout"), "oci-layout")
    version = layout.get("imageLayoutVersion")
    if version != OCI_LAYOUT_VERSION:
        raise ArchiveError(
            f"is an OCI image layout of version {version!r}, and ctr reads {OCI_LAYOUT_VERSION}"
        )
    if "index.json" not in members.by_path:
        raise ArchiveError("is an OCI image layout without index.json")
    index = _object(_json(members.by_path["index.json"], "index.json"), "index.json")
    descriptors = _field(index, "manifests", list, "an index.json")
    names: list[str] = []
    tags: list[str] = []
    for number, raw in enumerate(descriptors, 1):
        descriptor = _object(raw, f"entry {number} of index.json")
        annotations = descriptor.get("annotations") or {}
        name = _oci_name(_object(annotations, f"annotations of entry {number} of index.json"))
        label = name or f"entry {number} of index.json"
        _check(members, descriptor, label, platform)
        if name:
            names.append(name)
        elif isinstance(annotations.get(REF_NAME_ANNOTATION), str):
            tags.append(annotations[REF_NAME_ANNOTATION])
    if not names:
        hint = f", only the tag {tags[0]!r}" if tags else ""
        raise ArchiveError(
            f"names no image: index.json gives no entry a full name{hint} "
            f"(annotation {IMAGE_NAME_ANNOTATION}), so ctr would import it unnamed"
        )
    return tuple(dict.fromkeys(names))


def _oci_name(annotations: Mapping[str, Any]) -> str | None:
    """ctr's choice: the containerd annotation, else a full OCI ref name; never a bare tag."""
    for key in (IMAGE_NAME_ANNOTATION, REF_NAME_ANNOTATION):
        value = annotations.get(key)
        if isinstance(value, str) and any(mark in value for mark in "/:@"):
            return value
    return None


def _blob(members: _Members, descriptor: Mapping[str, Any], what: str) -> _Member:
    digest = _field(descriptor, "digest", str, f"a descriptor of {what}")
    member = members.by_digest.get(digest)
    if member is None:
        raise ArchiveError(f"misses the blob {digest} ({what})")
    return member


def _check(
    members: _Members, descriptor: Mapping[str, Any], image: str, platform: Platform
) -> None:
    """The content ctr needs for ``image`` on ``platform`` is all there."""
    declared = descriptor.get("platform")
    if isinstance(declared, dict) and not _runs_on(declared, platform):
        raise ArchiveError(
            f"holds {image} for {_platform_text(declared)} only, and this node runs {platform}"
        )
    media_type = descriptor.get("mediaType")
    blob = _blob(members, descriptor, f"the manifest of {image}")
    document = _object(_json(blob, f"the manifest of {image}"), f"the manifest of {image}")
    media_type = media_type or document.get("mediaType")
    if media_type in _INDEX_TYPES or "manifests" in document:
        candidates = [
            _object(entry, f"an entry of the index of {image}")
            for entry in _field(document, "manifests", list, f"the index of {image}")
        ]
        ranked = sorted(candidates, key=lambda entry: _rank(entry.get("platform") or {}, platform))
        if not ranked or _rank(ranked[0].get("platform") or {}, platform) == 2:
            offered = ", ".join(_platform_text(c.get("platform") or {}) for c in candidates)
            raise ArchiveError(
                f"holds {image} for {offered or 'no platform'} only, and this node runs {platform}"
            )
        _check(members, ranked[0], image, platform)
        return
    if media_type not in _MANIFEST_TYPES and "layers" not in document:
        raise ArchiveError(f"has a manifest for {image} of an unknown type {media_type!r}")
    config = _field(document, "config", dict, f"the manifest of {image}")
    settings = _object(
        _json(_blob(members, config, f"the config of {image}"), f"the config of {image}"),
        f"the config of {image}",
    )
    if not _runs_on(settings, platform):
        raise ArchiveError(
            f"holds {image} for {_platform_text(settings)}, and this node runs {platform}"
        )
    for layer in _field(document, "layers", list, f"the manifest of {image}"):
        _blob(members, _object(layer, f"a layer of {image}"), f"a layer of {image}")


# -- docker save -----------------------------------------------------------------------


def _docker_names(members: _Members, platform: Platform) -> tuple[str, ...]:
    entries = _list(_json(members.by_path["manifest.json"], "manifest.json"), "manifest.json")
    names: list[str] = []
    for number, raw in enumerate(entries, 1):
        entry = _object(raw, f"entry {number} of manifest.json")
        tags = [_text(tag, "a RepoTag") for tag in _list(entry.get("RepoTags") or [], "RepoTags")]
        image = normalize(tags[0]) if tags else f"entry {number} of manifest.json"
        config_path = _field(entry, "Config", str, f"entry {number} of manifest.json")
        config = _object(
            _json(_by_path(members, config_path), f"the config {config_path} of {image}"),
            f"the config of {image}",
        )
        if not _runs_on(config, platform):
            raise ArchiveError(
                f"holds {image} for {_platform_text(config)}, and this node runs {platform}"
            )
        for layer in _field(entry, "Layers", list, f"entry {number} of manifest.json"):
            layer_path = _text(layer, "a layer path")
            if _by_path(members, layer_path) is None:
                raise ArchiveError(f"misses the layer {layer_path} of {image}")
        names += [normalize(tag) for tag in tags]
    if not names:
        raise ArchiveError(
            "names no image: manifest.json gives no RepoTags, so ctr would import it unnamed"
        )
    return tuple(dict.fromkeys(names))


def _by_path(members: _Members, path: str) -> _Member | None:
    name = posixpath.normpath(path)
    return members.by_path.get(members.symlinks.get(name, name))


def normalize(reference: str) -> str:
    """A docker reference in full, as ctr names it (``busybox`` is
    ``docker.io/library/busybox:latest``): distribution's ``ParseDockerRef``."""
    first, slash, rest = reference.partition("/")
    if slash and (
        any(mark in first for mark in ".:") or first in ("localhost",) or first.lower() != first
    ):
        domain = first
    else:
        domain, rest = "docker.io", reference
    if domain == "index.docker.io":
        domain = "docker.io"
    if domain == "docker.io" and "/" not in rest:
        rest = "library/" + rest
    if ":" not in rest.rsplit("/", 1)[-1] and "@" not in rest:
        rest += ":latest"
    return f"{domain}/{rest}"
