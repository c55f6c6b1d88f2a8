"""Taking a backup of a running master: ``hepto backup``, and the periodic backups' child.

A short-lived process: it may hold the snapshot in memory and import what it likes; the
agent itself only starts it (``hepto.backup.service``).  As a program,
``python -m hepto.backup.take NODE_DIR CLUSTER NAME OUT`` with the cluster key in
``HEPTO_KEY``, it prints one JSON line, the :class:`Taken`, and exits 0, or prints the
error on stderr and exits 1.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

import hepto
from hepto import config, plan
from hepto.backup.contents import MANIFEST_FORMAT, node_files, pack
from hepto.backup.sealing import BackupError, Header, seal
from hepto.backup.snapshot import save_snapshot
from hepto.backup.store import utc_iso
from hepto.files import write_atomically
from hepto.https import ClientTLS, Origin
from hepto.kube.component import LOOPBACK, url
from hepto.kube.etcd import CLIENT_PORT
from hepto.pki.paths import Paths
from hepto.pki.specs import APISERVER_ETCD_CLIENT, ETCD_CA


@attrs.frozen
class Taken:
    """A backup written: where, how big, how long it took, when it was taken."""

    path: str
    size: int
    seconds: float
    created: str
    snapshot_size: int

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def etcd_origin(node_dir: Path) -> Origin:
    """etcd's client URL on loopback, spoken to as the apiserver does (its certificate)."""
    paths = Paths(node_dir)
    tls = ClientTLS(
        paths.authority_certificate(ETCD_CA),
        paths.certificate(APISERVER_ETCD_CLIENT),
        paths.key(APISERVER_ETCD_CLIENT),
    )
    return Origin.split(url(LOOPBACK, CLIENT_PORT), tls)[0]


def read_node_files(node_dir: Path) -> dict[str, tuple[bytes, int]]:
    files = {}
    for name, required in node_files(node_dir):
        path = node_dir / name
        try:
            content = path.read_bytes()
            mode = 0o644 if path.stat().st_mode & 0o044 else 0o600
        except FileNotFoundError:
            if required:
                raise BackupError(
                    f"{path} is missing: is {node_dir} the directory of a master that has started?"
                ) from None
            continue
        except OSError as error:
            raise BackupError(f"cannot read {path}: {error.strerror}") from None
        files[name] = (content, mode)
    return files


def take_backup(
    node_dir: Path,
    cluster: str,
    name: str,
    cluster_key: bytes,
    out: Path,
    *,
    origin: Origin | None = None,
    clock: Callable[[], float] = time.time,
) -> Taken:
    """Snapshot etcd, gather the master's files, seal it all into ``out`` atomically."""
    started = time.monotonic()
    created = clock()
    files = read_node_files(node_dir)
    try:
        with tempfile.NamedTemporaryFile(
            dir=out.parent, prefix=f".{out.name}.", suffix=".etcd"
        ) as db:
            snapshot = save_snapshot(origin or etcd_origin(node_dir), db)
            db.flush()
            manifest = {
                "format": MANIFEST_FORMAT,
                "hepto_version": hepto.__version__,
                "cluster": cluster,
                "name": name,
                "created": utc_iso(created),
                "plan": plan.Plan(cluster, name).as_dict(),
                "etcd": {"file": "etcd.db", "size": snapshot.size, "sha256": snapshot.sha256},
            }
            contents = pack(manifest, files, Path(db.name))
    except OSError as error:
        raise BackupError(f"cannot write beside {out}: {error.strerror}") from None
    sealed = seal(cluster_key, Header(cluster, name, int(created * 1000)), contents)
    try:
        write_atomically(out, sealed, 0o600)
    except OSError as error:
        raise BackupError(f"cannot write {out}: {error.strerror}") from None
    return Taken(
        path=str(out),
        size=len(sealed),
        seconds=round(time.monotonic() - started, 3),
        created=utc_iso(created),
        snapshot_size=snapshot.size,
    )


def main(argv: Sequence[str] | None = None) -> None:
    node_dir, cluster, name, out = sys.argv[1:] if argv is None else argv
    try:
        keyring = config.parse_keyring(config.from_environment("key"))
        taken = take_backup(Path(node_dir), cluster, name, keyring[0], Path(out))
    except (BackupError, config.ConfigError) as error:
        print(f"hepto backup: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    # What the agent spared itself by running this in a child: shown by hepto backup.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({**taken.as_dict(), "peak_rss_kib": peak}), flush=True)


if __name__ == "__main__":
    os.umask(0o077)
    main()
