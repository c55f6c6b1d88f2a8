"""The node's WireGuard key pair: made on first start, then kept, owner-only.

The key file holds the private key exactly as ``wg genkey`` writes it (base64 and a
newline), so that ``wg pubkey < wireguard.key`` works on it.  WireGuard speaks base64 in
records and netlink, hexadecimal over wireguard-go's UAPI; the conversions live here.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Final

import attrs
from nacl.bindings import crypto_scalarmult_base
from twisted.logger import Logger

KEY_BYTES: Final = 32

log = Logger()


class InvalidKey(Exception):
    """Text that should hold a WireGuard key does not."""


class KeyFileError(Exception):
    """The key file exists but cannot be used; ``str()`` says why and where."""


def _clamp(raw: bytes) -> bytes:
    # As `wg genkey` does (RFC 7748): a clamped key is the one form every tool prints alike.
    key = bytearray(raw)
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def decode_key(text: str) -> bytes:
    """The 32 bytes of a base64 WireGuard key, or :class:`InvalidKey`."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidKey("not base64") from None
    if len(raw) != KEY_BYTES:
        raise InvalidKey(f"{len(raw)} bytes instead of {KEY_BYTES}")
    return raw


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def base64_to_hex(text: str) -> str:
    return decode_key(text).hex()


def hex_to_base64(text: str) -> str:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise InvalidKey("not hexadecimal") from None
    if len(raw) != KEY_BYTES:
        raise InvalidKey(f"{len(raw)} bytes instead of {KEY_BYTES}")
    return encode_key(raw)


@attrs.frozen
class KeyPair:
    """A Curve25519 key pair, in the base64 form WireGuard prints."""

    private_key: str = attrs.field(repr=False)
    public_key: str

    @classmethod
    def from_private(cls, raw: bytes) -> KeyPair:
        # X25519 (RFC 7748) clamps the scalar itself, so an unclamped key derives the
        # same public key here as in ``wg pubkey``; libsodium, loaded for gossip anyway.
        return cls(encode_key(raw), encode_key(crypto_scalarmult_base(raw)))

    @classmethod
    def generate(cls) -> KeyPair:
        return cls.from_private(_clamp(os.urandom(KEY_BYTES)))


def load_or_create(path: Path) -> KeyPair:
    """The key pair kept in ``path``, made and written (mode 0600) if there is none."""
    try:
        text = path.read_text("ascii")
    except FileNotFoundError:
        keys = KeyPair.generate()
        _write_private(path, keys.private_key)
        log.info(
            "Made the WireGuard key pair of this node in {path}: public key {public_key}",
            path=str(path),
            public_key=keys.public_key,
        )
        return keys
    except (OSError, UnicodeDecodeError) as error:
        raise KeyFileError(f"cannot read the WireGuard key {path}: {error}") from None
    try:
        keys = KeyPair.from_private(decode_key(text.strip()))
    except InvalidKey as error:
        raise KeyFileError(
            f"{path} does not hold a WireGuard private key ({error}); "
            "move it away to have a new key made"
        ) from None
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        # Someone loosened it; the key is only as secret as its file.
        path.chmod(0o600)
        log.warn(
            "The WireGuard key {path} had mode {mode:o}; set it back to 600",
            path=str(path),
            mode=mode,
        )
    return keys


def _write_private(path: Path, private_key: str) -> None:
    """Write through a temporary file so a crash never leaves half a key behind."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".new")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(descriptor, (private_key + "\n").encode("ascii"))
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
