"""What a master's backup holds, as a gzipped tar inside the sealed envelope.

::

    manifest.json       format, hepto's version, cluster, name, role, created, the
                        addressing plan, the etcd snapshot's size and SHA-256, and each
                        node file's SHA-256 and mode
    etcd.db             the snapshot, as etcd streamed it (database + its SHA-256)
    node/identity.key   the master's identity (gossip, records, WireGuard)
    node/gossip-state.json  its incarnation, record version, known members and pins
    node/pki/ca.crt     the Kubernetes CA it pinned
    node/pki/signed-keys.json  the replay ledger, when there is one
    node/pki/ca/…       the three CAs, their keys, the service-account key pair

Nothing else of the node's directory: the master's own leaf certificates and
kubeconfigs it issues again from its CAs at start, and etcd's directory is rebuilt from
the snapshot.  Reading never extracts: each expected member is read by its name into
memory and checked against the manifest; a name it does not expect is refused, so no
path in the archive ever reaches the filesystem.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from hepto.backup.sealing import BackupError
from hepto.pki.paths import SERVICE_ACCOUNT, Paths
from hepto.pki.specs import AUTHORITIES

MANIFEST: Final = "manifest.json"
SNAPSHOT: Final = "etcd.db"
NODE: Final = "node/"
#: The manifest's own format; a newer one is refused by name.
MANIFEST_FORMAT: Final = 1
#: Modes a restored file may have: readable by its owner, and certificates by all.
MODES: Final = (0o600, 0o644)


def node_files(node_dir: Path) -> tuple[tuple[str, bool], ...]:
    """The master's files a backup holds, relative to its directory; each with whether
    it must be there (the ledger appears with the first member served)."""
    paths = Paths(node_dir)
    authorities = paths.authority_dir.relative_to(node_dir)
    names = [f"{authority}.{suffix}" for authority in AUTHORITIES for suffix in ("crt", "key")]
    names += [f"{SERVICE_ACCOUNT}.key", f"{SERVICE_ACCOUNT}.pub"]
    return (
        ("identity.key", True),
        ("gossip-state.json", True),
        (str(paths.trusted_ca.relative_to(node_dir)), True),
        (str(paths.ledger.relative_to(node_dir)), False),
        *((str(authorities / name), True) for name in names),
    )


@attrs.frozen
class Contents:
    """A backup's contents, read and checked: the manifest, the files, the snapshot."""

    manifest: Mapping[str, Any]
    files: Mapping[str, tuple[bytes, int]]  # relative path: (content, mode)
    snapshot: bytes


def pack(
    manifest: Mapping[str, Any], files: Mapping[str, tuple[bytes, int]], snapshot: Path
) -> bytes:
    """The gzipped tar of a backup; ``manifest`` gains the files' and snapshot's digests."""
    described = dict(manifest)
    described["files"] = {
        name: {"sha256": hashlib.sha256(content).hexdigest(), "mode": mode}
        for name, (content, mode) in sorted(files.items())
    }
    buffer = io.BytesIO()
    # Level 6: etcd's database is mostly free pages and JSON, and compresses 3 to 10
    # times; level 9 costs twice the time for a few percent.
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w|", format=tarfile.PAX_FORMAT) as archive,
    ):
        _add(archive, MANIFEST, json.dumps(described, indent=1, sort_keys=True).encode())
        for name, (content, _mode) in sorted(files.items()):
            _add(archive, NODE + name, content)
        info = tarfile.TarInfo(SNAPSHOT)
        info.size = snapshot.stat().st_size
        info.mode = 0o600
        with snapshot.open("rb") as source:
            archive.addfile(info, source)
    return buffer.getvalue()


def _add(archive: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mode = 0o600
    archive.addfile(info, io.BytesIO(content))


def unpack(data: bytes) -> Contents:
    """The contents of an opened backup, every digest checked; BackupError otherwise."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for member in archive:
                if not member.isfile():
                    raise BackupError(f"damaged: {member.name!r} in the archive is not a file")
                if member.name in members:
                    raise BackupError(f"damaged: {member.name!r} is twice in the archive")
                extracted = archive.extractfile(member)
                assert extracted is not None  # a regular file always has content
                members[member.name] = extracted.read()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise BackupError(f"damaged: its archive cannot be read ({error})") from None
    manifest = _manifest(members.pop(MANIFEST, None))
    snapshot = members.pop(SNAPSHOT, None)
    etcd = manifest.get("etcd")
    if snapshot is None or not isinstance(etcd, dict):
        raise BackupError("damaged: it holds no etcd snapshot")
    if hashlib.sha256(snapshot).hexdigest() != etcd.get("sha256") or len(snapshot) != etcd.get(
        "size"
    ):
        raise BackupError("damaged: the etcd snapshot does not match its manifest")
    described = manifest.get("files")
    if not isinstance(described, dict):
        raise BackupError("damaged: the manifest lists no files")
    files: dict[str, tuple[bytes, int]] = {}
    for name, content in members.items():
        relative = name.removeprefix(NODE)
        entry = described.get(relative)
        if not name.startswith(NODE) or not isinstance(entry, dict):
            raise BackupError(f"damaged: {name!r} is in the archive but not in its manifest")
        if hashlib.sha256(content).hexdigest() != entry.get("sha256"):
            raise BackupError(f"damaged: {relative} does not match its manifest")
        mode = entry.get("mode")
        if mode not in MODES:
            raise BackupError(f"damaged: {relative} has mode {mode!r}, not 0600 or 0644")
        files[relative] = (content, mode)
    expected = dict(node_files(Path("/")))
    missing = [name for name, required in expected.items() if required and name not in files]
    unexpected = sorted(set(files) - set(expected))
    if missing or unexpected or set(described) != set(files):
        raise BackupError(
            f"damaged: its files are not a master's (missing {', '.join(missing) or 'none'}; "
            f"unexpected {', '.join(unexpected) or 'none'})"
        )
    return Contents(manifest, files, snapshot)


def _manifest(data: bytes | None) -> dict[str, Any]:
    if data is None:
        raise BackupError("damaged: it holds no manifest.json")
    try:
        manifest = json.loads(data)
    except ValueError:
        raise BackupError("damaged: its manifest.json is not JSON") from None
    if not isinstance(manifest, dict):
        raise BackupError("damaged: its manifest.json is not an object")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise BackupError(
            f"its manifest has format {manifest.get('format')!r}; this hepto reads format "
            f"{MANIFEST_FORMAT} (is the backup from a newer hepto?)"
        )
    return manifest
