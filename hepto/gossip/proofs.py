"""Proofs of Alive messages: only a member can say where it is and at which incarnation.

Every host holds the cluster key, so the envelope of a datagram says that a member sent
it, not which one.  An Alive therefore carries its member's own word: an Ed25519
signature by the member's identity key (the one that signs its record) over the cluster,
its name, incarnation, address and role.  Others check it against the identity pinned to
that name, the first one its signed record was seen with (:class:`~hepto.gossip.identity.Pins`),
and pass it on unchanged, so a proof travels with the news however far it goes.

Suspect and Dead stay unsigned: anyone may accuse, as SWIM requires.  A member that hears
an accusation refutes with a new Alive that only it can sign.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import Final

import attrs

from hepto.config import Endpoint
from hepto.gossip.identity import SIGNATURE_SIZE, Identity, verify

#: Bytes of the proof each Alive carries.
PROOF_SIZE: Final = SIGNATURE_SIZE
#: Binds a proof to its use: no other signature of an identity key reads as one.
_CONTEXT: Final = b"hepto alive v1\0"
_INCARNATION: Final = struct.Struct("!Q")
_ENDPOINT: Final = struct.Struct("!16sH")


class Verdict(enum.Enum):
    #: Signed by the identity pinned to the member's name.
    PROVEN = "proven"
    #: Not signed by it: someone else's word.
    FORGED = "forged"
    #: No identity is pinned to the name yet (its record was never seen): nothing to
    #: check the proof against, until there is.
    UNKNOWN = "unknown"


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    return bytes((len(raw),)) + raw


def statement(cluster: str, name: str, incarnation: int, address: Endpoint, role: str) -> bytes:
    """What a member signs to say it is alive: unambiguous, every field length-prefixed."""
    return b"".join(
        (
            _CONTEXT,
            _text(cluster),
            _text(name),
            _INCARNATION.pack(incarnation),
            _ENDPOINT.pack(address.host.packed, address.port),
            _text(role),
        )
    )


@attrs.frozen
class Notary:
    """Signs this member's Alive messages and checks everyone else's.

    ``pinned`` gives the identity pinned to a name, if any; ours is our own.
    """

    cluster: str
    name: str
    identity: Identity
    pinned: Callable[[str], bytes | None]

    def prove(self, incarnation: int, address: Endpoint, role: str) -> bytes:
        """Our proof of being alive at ``incarnation``, ``address`` and ``role``."""
        return self.identity.sign(statement(self.cluster, self.name, incarnation, address, role))

    def check(
        self, name: str, incarnation: int, address: Endpoint, role: str, proof: bytes
    ) -> Verdict:
        key = self.identity.public_key if name == self.name else self.pinned(name)
        if key is None:
            return Verdict.UNKNOWN
        said = statement(self.cluster, name, incarnation, address, role)
        return Verdict.PROVEN if verify(key, said, proof) else Verdict.FORGED
