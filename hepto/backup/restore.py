"""Restoring a master's directory from a backup: ``hepto restore``.

Everything is checked before anything is written: the file (its header names this
cluster and this master, the cluster key opens it, every digest of its manifest holds,
no newer hepto wrote it) and the target (the master's directory is absent or empty).
Then the directory is built aside, ``<data-dir>/<cluster>/.<name>.restoring``: the
master's files, then etcd's data by ``etcdutl snapshot restore``, and renamed into
place as a whole.  A failure at any step removes what was built aside: the data
directory is left as it was.

etcd's member is restored under the master's name, with the peer URL of its mesh
address (a function of the cluster's and the master's names, so the same on any host),
``--bump-revision`` and ``--mark-compacted``: every watch of every controller and
kubelet then fails as compacted and lists again, instead of keeping a cache that the
older revisions of the snapshot would contradict.  The rationale is in
``docs/backup.rst``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import attrs

import hepto
from hepto import datadir, plan
from hepto.backup.contents import Contents, unpack
from hepto.backup.sealing import BackupError, Header, open_sealed
from hepto.files import write_atomically
from hepto.kube.component import url
from hepto.kube.etcd import PEER_PORT

#: Added to etcd's revision: more than any cluster writes between a backup and its
#: restore, as Kubernetes' own documentation suggests (etcd PR 16029).
BUMP_REVISION: Final = 1_000_000_000
ETCD_DIRECTORY: Final = "etcd"
#: etcdutl restoring a large snapshot writes it whole once, and fsyncs.
RESTORE_TIMEOUT: Final = 600.0


@attrs.frozen
class Restored:
    node_dir: str
    created: str
    hepto_version: str
    snapshot_size: int
    seconds: float


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        digits = "".join(character for character in part if character.isdigit()) or "0"
        parts.append(int(digits))
    return tuple(parts)


def read_backup(
    path: Path, cluster: str, name: str, keyring: Sequence[bytes]
) -> tuple[Header, Contents]:
    """The checked contents of the backup at ``path``, or BackupError saying what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BackupError(f"cannot read {path}: {error.strerror}") from None
    header, opened = open_sealed(data, keyring)
    if header.cluster != cluster:
        raise BackupError(f"is a backup of cluster {header.cluster!r}, not {cluster!r}")
    if header.name != name:
        raise BackupError(f"is a backup of master {header.name!r}, not {name!r}")
    contents = unpack(opened)
    manifest = contents.manifest
    if (manifest.get("cluster"), manifest.get("name")) != (cluster, name):
        raise BackupError("damaged: its manifest names another cluster or master than its header")
    written_by = str(manifest.get("hepto_version", ""))
    if version_tuple(written_by) > version_tuple(hepto.__version__):
        raise BackupError(
            f"was written by hepto {written_by}, newer than this one ({hepto.__version__}): "
            "restore it with that version or a later one"
        )
    return header, contents


def check_empty(node_dir: Path) -> None:
    if not os.path.lexists(node_dir):
        return
    if not node_dir.is_dir() or node_dir.is_symlink():
        raise BackupError(f"{node_dir} exists and is not a directory: move it away first")
    if any(node_dir.iterdir()):
        raise BackupError(
            f"{node_dir} is not empty: a restore only fills an empty master's directory "
            "(move it away first)"
        )


def restore(
    path: Path,
    cluster: str,
    name: str,
    keyring: Sequence[bytes],
    data_dir: Path,
    etcdutl: Path,
) -> Restored:
    """Check the backup, then build the master's directory aside and move it into place."""
    started = time.monotonic()
    node_dir = data_dir / cluster / name
    check_empty(node_dir)
    _header, contents = read_backup(path, cluster, name, keyring)
    parent = node_dir.parent
    made: list[Path] = []  # the directories above it made here, removed on failure
    try:
        datadir.check_ancestors(datadir.deepest_existing(parent))
        for directory in reversed([parent, *parent.parents]):
            if not os.path.lexists(directory):
                datadir.make_directory(directory, datadir.PARENT_MODE)
                made.append(directory)
    except datadir.UnsafePath as error:
        raise BackupError(f"--data-dir: {error}") from None
    except OSError as error:
        _remove_empty(made)
        raise BackupError(f"--data-dir: cannot create {error.filename}: {error.strerror}") from None
    aside = parent / f".{name}.restoring"
    shutil.rmtree(aside, ignore_errors=True)  # what an interrupted restore left
    try:
        datadir.make_directory(aside, datadir.NODE_DIR_MODE)
        _write_files(aside, contents)
        _restore_etcd(aside, contents.snapshot, cluster, name, etcdutl)
        check_empty(node_dir)  # still, after the minutes etcdutl may take
        if node_dir.exists():
            node_dir.rmdir()
        os.rename(aside, node_dir)
        _fsync_directory(parent)
    except BaseException:
        shutil.rmtree(aside, ignore_errors=True)
        _remove_empty(made)
        raise
    return Restored(
        node_dir=str(node_dir),
        created=str(contents.manifest.get("created")),
        hepto_version=str(contents.manifest.get("hepto_version")),
        snapshot_size=len(contents.snapshot),
        seconds=round(time.monotonic() - started, 3),
    )


def _remove_empty(directories: list[Path]) -> None:
    """Remove the directories made, deepest first, as long as they are empty."""
    for directory in reversed(directories):
        try:
            directory.rmdir()
        except OSError:
            return


def _write_files(node_dir: Path, contents: Contents) -> None:
    for relative, (content, mode) in sorted(contents.files.items()):
        target = node_dir / relative
        for directory in reversed(target.relative_to(node_dir).parents[:-1]):
            if not (node_dir / directory).exists():
                datadir.make_directory(node_dir / directory, datadir.NODE_DIR_MODE)
        write_atomically(target, content, mode)


def _restore_etcd(node_dir: Path, snapshot: bytes, cluster: str, name: str, etcdutl: Path) -> None:
    database = node_dir / ".snapshot.db"
    write_atomically(database, snapshot, 0o600)
    mesh_address = plan.Plan(cluster, name).mesh_address
    assert mesh_address is not None  # a plan with a name has one
    peer = url(mesh_address, PEER_PORT)
    argv = [
        str(etcdutl), "snapshot", "restore", str(database),
        "--data-dir", str(node_dir / ETCD_DIRECTORY),
        "--name", name,
        "--initial-cluster", f"{name}={peer}",
        "--initial-cluster-token", cluster,
        "--initial-advertise-peer-urls", peer,
        "--bump-revision", str(BUMP_REVISION),
        "--mark-compacted",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=RESTORE_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BackupError(f"etcdutl snapshot restore failed: {error}") from None
    finally:
        database.unlink(missing_ok=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise BackupError(
            f"etcdutl snapshot restore failed (exit {done.returncode}): "
            f"{lines[-1] if lines else 'no output'}"
        )


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
