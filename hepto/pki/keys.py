"""Private keys and the files that hold them.

Every key is ECDSA P-256: the smallest keys and signatures every Kubernetes component,
etcd and OpenSSL accept, which keeps CSRs and certificates lean in gossip records.
Files are replaced atomically (write aside, fsync, rename) so that a crash never leaves
half a key behind, and secrets are created 0600 from the first byte, never chmod-ed later.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hepto.files import write_atomically

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
DIRECTORY_MODE = 0o700


class BadKey(ValueError):
    """A key file or PEM block is not an ECDSA P-256 key."""


def generate_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def is_p256(key: object) -> bool:
    return isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, ec.SECP256R1
    )


def private_pem(key: PrivateKey) -> bytes:
    """PKCS #8, unencrypted: what Go's ``tls.X509KeyPair`` and OpenSSL read alike."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_pem(data: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise BadKey(f"not a PEM private key ({error})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not is_p256(key):
        raise BadKey(f"a {type(key).__name__}, not an ECDSA P-256 key")
    return key


def load_public_pem(data: bytes) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as error:
        raise BadKey(f"not a PEM public key ({error})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not is_p256(key):
        raise BadKey(f"a {type(key).__name__}, not an ECDSA P-256 key")
    return key


def fingerprint(key: PublicKey | PrivateKey) -> str:
    """SHA-256 of the SubjectPublicKeyInfo, hex: names a key pair without revealing it."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def same_key(first: PublicKey | PrivateKey, second: PublicKey | PrivateKey) -> bool:
    return fingerprint(first) == fingerprint(second)


def ensure_directory(path: Path) -> None:
    """Create ``path`` (and parents) owner-only, and tighten it if it already existed."""
    path.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    path.chmod(DIRECTORY_MODE)


def write_secret(path: Path, data: bytes) -> None:
    write_atomically(path, data, SECRET_MODE)


def write_public(path: Path, data: bytes) -> None:
    write_atomically(path, data, PUBLIC_MODE)


def write_private_key(path: Path, key: PrivateKey) -> None:
    write_secret(path, private_pem(key))


def read_private_key(path: Path) -> PrivateKey:
    return load_private_pem(path.read_bytes())
