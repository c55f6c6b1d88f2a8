"""The master's proof that it is one: its identity, signed by the cluster CA's key.

Any member's record may say ``role: master``, and the role brings the apiserver's
address on every node's mesh.  So the master's record carries, under ``pki``, a
``master`` entry: an ECDSA signature by the Kubernetes CA key over the cluster's name,
the master's name and its identity key (the Ed25519 key that signs its records and
that every member pins to its name).  A member believes a master only once that
signature verifies against the CA it pinned (:mod:`hepto.pki.trust`) and the identity
is the one of the record that carries it; a key holder that merely says "master", or
copies the real master's proof into its own record, has none that verifies.

Signatures are deterministic (RFC 6979): the same statement makes the same proof, so a
batch that signs again changes nothing in the record.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from hepto.pki.keys import PrivateKey, PublicKey
from hepto.pki.specs import MASTERSHIP_KEY

#: The key of the proof in the ``pki`` section of the master's record.
PROOF_KEY: Final = MASTERSHIP_KEY
_DOMAIN: Final = b"hepto/master/v1\0"
_SIGNATURE: Final = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)


def statement(cluster: str, name: str, identity: bytes) -> bytes:
    """What the CA key signs: the master ``name`` of ``cluster`` is the holder of
    ``identity``."""
    return _DOMAIN + cluster.encode() + b"\0" + name.encode() + b"\0" + identity


def prove(authority_key: PrivateKey, cluster: str, name: str, identity: bytes) -> str:
    return base64.b64encode(
        authority_key.sign(statement(cluster, name, identity), _SIGNATURE)
    ).decode("ascii")


def verify(authority: PublicKey, proof: object, cluster: str, name: str, identity: bytes) -> bool:
    """Whether ``proof`` (as found in a record: anything) proves ``name`` a master."""
    if not isinstance(proof, str) or len(proof) > 256:
        return False
    try:
        signature = base64.b64decode(proof.encode("ascii"), validate=True)
        authority.verify(signature, statement(cluster, name, identity), _SIGNATURE)
    except (InvalidSignature, binascii.Error, UnicodeEncodeError, ValueError):
        return False
    return True
