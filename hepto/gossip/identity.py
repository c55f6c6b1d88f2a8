"""Long-term member identities: an Ed25519 key per node, and the names pinned to keys.

The cluster key lets a host into the gossip; the identity key decides whose record it
may write.  A name is bound to the first identity seen for it (trust on first use), so
a host holding the cluster key still cannot rewrite another member's record.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

import attrs
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from hepto.errors import StartupError
from hepto.files import write_atomically

IDENTITY_FILE: Final = "identity.key"
PUBLIC_KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
_SEED_SIZE: Final = 32


class IdentityError(StartupError):
    """The identity key file cannot be used; the message says why and what to do."""


@attrs.frozen(repr=False)
class Identity:
    """This node's signing key."""

    signing_key: SigningKey

    @classmethod
    def generate(cls) -> Identity:
        return cls(SigningKey.generate())

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature

    def __repr__(self) -> str:
        return f"Identity({self.public_key.hex()[:16]}…)"


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError):
        return False
    return True


def load_or_create(path: Path) -> Identity:
    """The identity kept at ``path``, made (owner-only) on first start."""
    try:
        seed = path.read_bytes()
    except FileNotFoundError:
        identity = Identity.generate()
        write_private(path, bytes(identity.signing_key))
        return identity
    except OSError as error:
        raise IdentityError(f"cannot read the identity key {path}: {error.strerror}") from None
    if len(seed) != _SEED_SIZE:
        raise IdentityError(
            f"{path} is {len(seed)} bytes long, not a {_SEED_SIZE}-byte Ed25519 seed; "
            "restore it from a backup (other members have pinned this node's identity)"
        )
    if path.stat().st_mode & 0o077:
        # Like ssh, refuse to trust a private key others could have read or replaced.
        raise IdentityError(f"{path} is readable or writable by others: chmod 600 it")
    return Identity(SigningKey(seed))


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only, atomically and durably."""
    write_atomically(path, data, 0o600)


@attrs.define
class Pins:
    """The identity pinned to each name: the first seen wins, forever.

    ``changed`` is set whenever a new pin is made, for the owner to persist.
    """

    _keys: dict[str, bytes] = attrs.field(factory=dict)
    changed: bool = False

    @classmethod
    def from_mapping(cls, pins: Mapping[str, bytes]) -> Pins:
        return cls(dict(pins))

    def as_mapping(self) -> Mapping[str, bytes]:
        return dict(self._keys)

    def get(self, name: str) -> bytes | None:
        return self._keys.get(name)

    def check(self, name: str, public_key: bytes) -> bool:
        """Whether ``public_key`` may sign for ``name``; pins it if ``name`` is new."""
        pinned = self._keys.get(name)
        if pinned is None:
            self._keys[name] = bytes(public_key)
            self.changed = True
            return True
        return pinned == public_key

    def __len__(self) -> int:
        return len(self._keys)
