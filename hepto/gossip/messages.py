"""The datagram messages of SWIM gossip, as plain values.

A datagram carries one or more messages: a protocol message (ping, ack, ...) first and
membership news piggybacked after it.  :mod:`hepto.gossip.codec` turns a sequence of
them into bytes and back; nothing here knows about bytes or sockets.
"""

from __future__ import annotations

from typing import Final

import attrs

from hepto.config import Endpoint

#: The largest UDP payload we ever send: the IPv6 minimum MTU (1,280 bytes) minus the
#: IPv6 (40) and UDP (8) headers, so that a datagram crosses any IPv6 path unfragmented.
MAX_DATAGRAM: Final = 1232
#: Bytes reserved for the encryption envelope (version, key id, nonce, timestamp, tag).
SEALING_OVERHEAD: Final = 64
#: The most an encoded list of messages may take before sealing.
MAX_PLAINTEXT: Final = MAX_DATAGRAM - SEALING_OVERHEAD


@attrs.frozen
class Ping:
    """Are you alive?  ``target`` names the member meant, so a stale address is noticed."""

    seq: int
    target: str
    source: str


@attrs.frozen
class PingReq:
    """Please ping ``target`` at ``target_address`` for me and relay its ack (or a nack)."""

    seq: int
    target: str
    target_address: Endpoint
    source: str


@attrs.frozen
class Ack:
    """Member ``source`` answered ping ``seq`` (directly, or through a ping-req helper)."""

    seq: int
    source: str


@attrs.frozen
class Nack:
    """Helper ``source`` got no answer from the target of ping-req ``seq``.

    It tells the prober that the helper itself is fine (Lifeguard): the prober's own
    missing acks then count against the target, not against its own health.
    """

    seq: int
    source: str


@attrs.frozen
class Alive:
    """Member ``name`` is alive at ``incarnation``, reachable at ``address``.

    ``proof`` is the member's signature of all that (:mod:`hepto.gossip.proofs`): an
    Alive is the one message that only its member can make.
    """

    name: str
    incarnation: int
    address: Endpoint
    role: str
    proof: bytes = attrs.field(repr=lambda proof: proof[:4].hex() + "…")


@attrs.frozen
class Suspect:
    """``source`` suspects member ``name`` at ``incarnation``."""

    name: str
    incarnation: int
    source: str


@attrs.frozen
class Dead:
    """``source`` declares member ``name`` dead at ``incarnation``.

    When ``source == name`` the member announces its own graceful leave.
    """

    name: str
    incarnation: int
    source: str

    @property
    def is_leave(self) -> bool:
        return self.source == self.name


@attrs.frozen
class Digest:
    """The sender of this datagram holds record ``name`` at ``version``."""

    name: str
    version: int


@attrs.frozen
class KnockRequest:
    """Member ``source`` asks: knock ``seq`` on my door, from another port than yours.

    A datagram from a port its receiver never sent to is one that a stateful firewall or
    NAT in front of the receiver would drop: its arrival proves that the sender reaches
    the receiver unprompted (:mod:`hepto.gossip.knocks`).
    """

    seq: int
    source: str


@attrs.frozen
class Knock:
    """Member ``source`` knocks, as asked in request ``seq``, from a port of its own."""

    seq: int
    source: str


Message = Ping | PingReq | Ack | Nack | Alive | Suspect | Dead | Digest | KnockRequest | Knock
#: Messages that run the failure detector, as opposed to the news they carry along.
PROTOCOL_MESSAGES: Final = (Ping, PingReq, Ack, Nack)
#: Messages between two members about whether one reaches the other unprompted; never
#: piggybacked, and none of Membership's business.
KNOCK_MESSAGES: Final = (KnockRequest, Knock)
