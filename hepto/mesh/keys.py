"""The node's WireGuard key pair: its identity key, as a Curve25519 key.

A member's WireGuard public key is the Montgomery form of its Ed25519 identity key, the
one its gossip record is signed with and that every member pins to its name.  So anyone
can check that a record's WireGuard key is its author's own: a member that copies
another's key into its record (to take that member's place in every peer's WireGuard)
is refused by all, whatever the order in which they hear of the two (``docs/mesh.rst``
gives the rationale and what it costs).  WireGuard speaks base64 in records and
netlink, hexadecimal over wireguard-go's UAPI; the conversions live here.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from typing import Final

import attrs
from nacl.bindings import (
    crypto_scalarmult_base,
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
)
from nacl.exceptions import RuntimeError as NaclRuntimeError
from nacl.signing import SigningKey

from hepto import plan

KEY_BYTES: Final = 32


class InvalidKey(Exception):
    """Text that should hold a WireGuard key does not."""


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

    @classmethod
    def from_identity(cls, signing_key: SigningKey) -> KeyPair:
        """The pair whose public key is :func:`bound_public_key` of the identity's."""
        secret = bytes(signing_key) + bytes(signing_key.verify_key)
        return cls.from_private(crypto_sign_ed25519_sk_to_curve25519(secret))


@functools.lru_cache(maxsize=plan.ADDRESS_CACHE)
def bound_public_key(identity_public_key: bytes) -> str | None:
    """The WireGuard public key of the member whose identity key this is.

    None for bytes that are no Ed25519 public key (no point of the curve).
    """
    try:
        return encode_key(crypto_sign_ed25519_pk_to_curve25519(identity_public_key))
    except (NaclRuntimeError, ValueError, TypeError):
        return None
