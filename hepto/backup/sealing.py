"""The backup file's envelope: a readable header, then everything else sealed.

::

    magic      8 bytes   b"HEPTOBAK"
    format     1 byte    1
    cluster    1 byte length, then UTF-8
    name       1 byte length, then UTF-8
    created    8 bytes   milliseconds since the epoch, big-endian
    nonce      24 bytes  random
    sealed     XChaCha20-Poly1305(key, nonce, contents, associated data = all of the above
               but the nonce) + 16-byte tag

The key is a personalised BLAKE2b of the cluster key (``hepto.gossip.crypto.derive_key``
with a person of its own): a stolen file is useless without the cluster key, and no key
that gossip uses ever opens a backup or the reverse.  The header is authenticated but
not secret, so that a file of another cluster or another master is named as such before
any key is tried.  One AEAD over the whole file: a single flipped or missing byte, a
truncation, a wrong key or a header changed to another name all fail the tag, and
nothing of the contents is used before it passed.  The rationale is in
``docs/backup.rst``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import attrs
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_ABYTES,
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
)
from nacl.exceptions import CryptoError
from nacl.utils import random as random_bytes

from hepto.gossip.crypto import derive_key

MAGIC: Final = b"HEPTOBAK"
FORMAT: Final = 1
NONCE_SIZE: Final = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
TAG_SIZE: Final = crypto_aead_xchacha20poly1305_ietf_ABYTES
#: The purpose of the key derived from the cluster key (BLAKE2b's person, 16 bytes max).
KEY_PERSON: Final = b"hepto.backup.v1"


class BackupError(Exception):
    """A backup cannot be taken, read or restored; ``str()`` says why, for the operator."""


@attrs.frozen
class Header:
    """What a backup says of itself in clear: whose it is and when it was taken."""

    cluster: str
    name: str
    created_ms: int

    def encode(self) -> bytes:
        cluster, name = self.cluster.encode(), self.name.encode()
        if len(cluster) > 255 or len(name) > 255:
            raise ValueError("cluster and node names are at most 255 bytes")
        return (
            MAGIC
            + bytes([FORMAT, len(cluster)])
            + cluster
            + bytes([len(name)])
            + name
            + self.created_ms.to_bytes(8, "big")
        )


def backup_key(cluster_key: bytes) -> bytes:
    return derive_key(cluster_key, KEY_PERSON)


def seal(cluster_key: bytes, header: Header, contents: bytes) -> bytes:
    """The whole file: ``header`` in clear, ``contents`` sealed under ``cluster_key``."""
    clear = header.encode()
    nonce = random_bytes(NONCE_SIZE)
    sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
        contents, clear, nonce, backup_key(cluster_key)
    )
    return clear + nonce + sealed


def read_header(data: bytes) -> tuple[Header, int]:
    """The header of a file and where its nonce starts; BackupError if it is none."""
    if not data.startswith(MAGIC):
        raise BackupError("not a hepto backup (it does not start with HEPTOBAK)")
    offset = len(MAGIC)
    try:
        version = data[offset]
        if version != FORMAT:
            raise BackupError(
                f"backup format {version}, this hepto reads format {FORMAT} only "
                "(is the backup from a newer hepto?)"
            )
        cluster, offset = _text(data, offset + 1)
        name, offset = _text(data, offset)
        if len(data) < offset + 8:
            raise IndexError
        created_ms = int.from_bytes(data[offset : offset + 8], "big")
    except IndexError:
        raise BackupError("truncated: the file ends inside its header") from None
    return Header(cluster, name, created_ms), offset + 8


def _text(data: bytes, offset: int) -> tuple[str, int]:
    length = data[offset]
    end = offset + 1 + length
    if len(data) < end:
        raise IndexError
    try:
        return data[offset + 1 : end].decode(), end
    except UnicodeDecodeError:
        raise BackupError("damaged: a name in its header is not UTF-8") from None


def open_sealed(data: bytes, keyring: Sequence[bytes]) -> tuple[Header, bytes]:
    """The header and contents of a file, once every byte of it proved whole and ours.

    Any key of the ring may open it (keys rotate as gossip's do).  Raises BackupError.
    """
    header, offset = read_header(data)
    if len(data) < offset + NONCE_SIZE + TAG_SIZE:
        raise BackupError("truncated: the file ends before its sealed contents")
    clear, nonce, sealed = (
        data[:offset],
        data[offset : offset + NONCE_SIZE],
        data[offset + NONCE_SIZE :],
    )
    for cluster_key in keyring:
        try:
            contents = crypto_aead_xchacha20poly1305_ietf_decrypt(
                sealed, clear, nonce, backup_key(cluster_key)
            )
        except CryptoError:
            continue
        return header, contents
    raise BackupError(
        "cannot be opened with the cluster key given: the key is wrong, or the file is "
        "damaged or truncated"
    )
