"""An etcd snapshot through etcd's own client API, with the standard library only.

etcd's gRPC gateway serves ``Maintenance.Snapshot`` as ``POST /v3/maintenance/snapshot``
on its client port: the server-streamed messages arrive as one JSON object a line,
``{"result": {"remaining_bytes": "…", "blob": "<base64>"}}``, or ``{"error": {…}}`` when
the stream fails.  The blobs, in order, are the snapshot exactly as ``etcdctl snapshot
save`` writes it: etcd's database, then the SHA-256 of it, which ``etcdutl snapshot
restore`` checks.  It is checked here too, as the blobs arrive, so that a backup never
holds a snapshot that restore would refuse.  The rationale is in ``docs/backup.rst``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import json
import ssl
from typing import IO, Any, Final

import attrs

from hepto.backup.sealing import BackupError
from hepto.https import Origin

PATH: Final = "/v3/maintenance/snapshot"
DIGEST_SIZE: Final = hashlib.sha256().digest_size
#: A message of the stream is one blob of at most 32 KiB (etcd's snapshotSendBufferSize),
#: base64 and JSON around it: far below this.
MAX_LINE: Final = 1 << 20


@attrs.frozen
class Snapshot:
    """What was written: its size and SHA-256 (hex), the database's digest included."""

    size: int
    sha256: str


@attrs.define
class _Digester:
    """SHA-256 of everything but the last 32 bytes seen (the database, whose digest they
    should be), and of everything (the file, for the backup's manifest)."""

    _database: Any = attrs.field(factory=hashlib.sha256)
    _whole: Any = attrs.field(factory=hashlib.sha256)
    _tail: bytes = b""
    size: int = 0

    def update(self, data: bytes) -> None:
        self.size += len(data)
        self._whole.update(data)
        joined = self._tail + data
        self._database.update(joined[:-DIGEST_SIZE])
        self._tail = joined[-DIGEST_SIZE:]

    def check(self) -> str:
        """The digest of the whole file, once its database proved whole."""
        if self.size <= DIGEST_SIZE or self._database.digest() != self._tail:
            raise BackupError(
                f"etcd's snapshot ({self.size} bytes) does not end with the SHA-256 of its "
                "database: it is damaged"
            )
        return str(self._whole.hexdigest())


def save_snapshot(origin: Origin, out: IO[bytes], timeout: float = 60.0) -> Snapshot:
    """Stream etcd's snapshot into ``out``; BackupError if it is not whole and sound."""
    try:
        connection = origin.connection(timeout)
    except (OSError, ValueError) as error:
        raise BackupError(f"cannot use the etcd client certificate: {error}") from None
    digester = _Digester()
    try:
        connection.request(
            "POST", PATH, b"{}", {"Content-Type": "application/json", "Connection": "close"}
        )
        response = connection.getresponse()
        if response.status != 200:
            body = response.read(4096).decode(errors="replace").strip()
            raise BackupError(f"etcd refused the snapshot: {response.status} {body}")
        remaining: int | None = None
        while line := response.readline(MAX_LINE + 1):
            if len(line) > MAX_LINE:
                raise BackupError("etcd's snapshot stream has a line longer than 1 MiB")
            if not line.strip():
                continue
            blob, remaining = _message(line)
            digester.update(blob)
            out.write(blob)
    except (OSError, ssl.SSLError, http.client.HTTPException) as error:
        raise BackupError(f"cannot take etcd's snapshot at {origin.url(PATH)}: {error}") from None
    finally:
        connection.close()
    if remaining != 0:
        raise BackupError(
            f"etcd's snapshot stream ended early after {digester.size} bytes "
            f"({remaining if remaining is not None else 'all'} bytes missing)"
        )
    return Snapshot(digester.size, digester.check())


def _message(line: bytes) -> tuple[bytes, int]:
    """The blob of one message and the bytes etcd says remain after it."""
    try:
        message = json.loads(line)
    except ValueError:
        raise BackupError(f"etcd's snapshot stream is not JSON: {line[:80]!r}") from None
    if not isinstance(message, dict):
        raise BackupError(f"etcd's snapshot stream has {line[:80]!r}")
    if "error" in message:
        raise BackupError(f"etcd failed the snapshot: {json.dumps(message['error'])[:400]}")
    result = message.get("result")
    if not isinstance(result, dict):
        raise BackupError(f"etcd's snapshot stream has {line[:80]!r}")
    try:
        # proto3 JSON: int64 as a string, and omitted when zero (the last message).
        remaining = int(result.get("remaining_bytes", 0))
        blob = base64.b64decode(result.get("blob", ""), validate=True)
    except (ValueError, TypeError, binascii.Error):
        raise BackupError(
            f"etcd's snapshot stream has a malformed message: {line[:80]!r}"
        ) from None
    return blob, remaining
