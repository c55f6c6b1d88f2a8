"""The binary form of gossip datagrams: compact, fixed-layout, and strict.

A frame is a version byte followed by one or more messages, each a type byte and its
fields in a fixed order (network byte order throughout)::

    frame    = VERSION message+
    string   = u8 length (1..255), UTF-8 bytes
    endpoint = 16-byte IPv6 address, u16 port (1..65535)

    Ping     = 1 u32 seq, string target, string source
    PingReq  = 2 u32 seq, string target, endpoint target_address, string source
    Ack      = 3 u32 seq, string source
    Nack     = 4 u32 seq, string source
    Alive    = 5 string name, u64 incarnation, endpoint address, string role, proof
    proof    = 64 bytes: the member's Ed25519 signature (:mod:`hepto.gossip.proofs`)
    Suspect  = 6 string name, u64 incarnation, string source
    Dead     = 7 string name, u64 incarnation, string source
    Digest   = 8 string name, u64 version
    KnockReq = 9 u32 seq, string source
    Knock    = 10 u32 seq, string source

The decoder trusts nothing: every length is checked against what is left, unknown
types, empty or invalid UTF-8 strings, port 0, an empty or oversized frame and trailing
bytes all raise :class:`DecodeError`, and nothing else ever escapes it.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final

from hepto.config import Endpoint
from hepto.gossip.messages import (
    MAX_PLAINTEXT,
    Ack,
    Alive,
    Dead,
    Digest,
    Knock,
    KnockRequest,
    Message,
    Nack,
    Ping,
    PingReq,
    Suspect,
)
from hepto.gossip.proofs import PROOF_SIZE

#: 2 since Alive messages carry a proof: members of version 1 and 2 cannot talk.
VERSION: Final = 2
#: Bytes of a frame before its first message.
HEADER_SIZE: Final = 1
MAX_STRING: Final = 255
MAX_SEQ: Final = 2**32 - 1
MAX_U64: Final = 2**64 - 1

_U8 = struct.Struct("!B")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_ENDPOINT = struct.Struct("!16sH")

PING, PING_REQ, ACK, NACK, ALIVE, SUSPECT, DEAD, DIGEST, KNOCK_REQUEST, KNOCK = range(1, 11)


class DecodeError(Exception):
    """A frame is malformed; ``reason`` says how, in a few words fit for a drop counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EncodeError(ValueError):
    """A message cannot be represented on the wire (a bug of the caller, never input)."""


# Encoding -------------------------------------------------------------------------------


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    if not 0 < len(raw) <= MAX_STRING:
        raise EncodeError(f"string of {len(raw)} bytes; 1 to {MAX_STRING} are allowed")
    return _U8.pack(len(raw)) + raw


def _int(packer: struct.Struct, value: int, limit: int) -> bytes:
    if not 0 <= value <= limit:
        raise EncodeError(f"integer {value} out of range 0..{limit}")
    return packer.pack(value)


def _endpoint(endpoint: Endpoint) -> bytes:
    if not 0 < endpoint.port < 65536:
        raise EncodeError(f"port {endpoint.port} out of range 1..65535")
    return _ENDPOINT.pack(endpoint.host.packed, endpoint.port)


def _encode_one(message: Message) -> bytes:
    match message:
        case Ping(seq, target, source):
            return bytes((PING,)) + _int(_U32, seq, MAX_SEQ) + _string(target) + _string(source)
        case PingReq(seq, target, target_address, source):
            return (
                bytes((PING_REQ,))
                + _int(_U32, seq, MAX_SEQ)
                + _string(target)
                + _endpoint(target_address)
                + _string(source)
            )
        case Ack(seq, source):
            return bytes((ACK,)) + _int(_U32, seq, MAX_SEQ) + _string(source)
        case Nack(seq, source):
            return bytes((NACK,)) + _int(_U32, seq, MAX_SEQ) + _string(source)
        case Alive(name, incarnation, address, role, proof):
            if len(proof) != PROOF_SIZE:
                raise EncodeError(f"proof of {len(proof)} bytes; {PROOF_SIZE} are needed")
            return (
                bytes((ALIVE,))
                + _string(name)
                + _int(_U64, incarnation, MAX_U64)
                + _endpoint(address)
                + _string(role)
                + proof
            )
        case Suspect(name, incarnation, source):
            return (
                bytes((SUSPECT,))
                + _string(name)
                + _int(_U64, incarnation, MAX_U64)
                + _string(source)
            )
        case Dead(name, incarnation, source):
            return (
                bytes((DEAD,)) + _string(name) + _int(_U64, incarnation, MAX_U64) + _string(source)
            )
        case Digest(name, version):
            return bytes((DIGEST,)) + _string(name) + _int(_U64, version, MAX_U64)
        case KnockRequest(seq, source):
            return bytes((KNOCK_REQUEST,)) + _int(_U32, seq, MAX_SEQ) + _string(source)
        case Knock(seq, source):
            return bytes((KNOCK,)) + _int(_U32, seq, MAX_SEQ) + _string(source)
    raise EncodeError(f"not a gossip message: {message!r}")


def encode(messages: Sequence[Message]) -> bytes:
    """One frame holding ``messages``; raises :class:`EncodeError` if it cannot be sent."""
    if not messages:
        raise EncodeError("a frame needs at least one message")
    frame = bytes((VERSION,)) + b"".join(_encode_one(message) for message in messages)
    if len(frame) > MAX_PLAINTEXT:
        raise EncodeError(f"frame of {len(frame)} bytes exceeds {MAX_PLAINTEXT}")
    return frame


def _string_size(text: str) -> int:
    return 1 + len(text.encode("utf-8"))


_ENDPOINT_SIZE: Final = _ENDPOINT.size
# Sizing runs for every datagram sent (to pack news into it): a dispatch on the exact
# type is several times faster than structural pattern matching.
_SIZERS: Final[dict[type, Callable[[Any], int]]] = {
    Ping: lambda m: 5 + _string_size(m.target) + _string_size(m.source),
    PingReq: lambda m: 5 + _string_size(m.target) + _ENDPOINT_SIZE + _string_size(m.source),
    Ack: lambda m: 5 + _string_size(m.source),
    Nack: lambda m: 5 + _string_size(m.source),
    Alive: lambda m: 9 + _string_size(m.name) + _ENDPOINT_SIZE + _string_size(m.role) + PROOF_SIZE,
    Suspect: lambda m: 9 + _string_size(m.name) + _string_size(m.source),
    Dead: lambda m: 9 + _string_size(m.name) + _string_size(m.source),
    Digest: lambda m: 9 + _string_size(m.name),
    KnockRequest: lambda m: 5 + _string_size(m.source),
    Knock: lambda m: 5 + _string_size(m.source),
}


def encoded_size(message: Message) -> int:
    """Bytes ``message`` takes inside a frame (a frame adds :data:`HEADER_SIZE`)."""
    sizer = _SIZERS.get(type(message))
    if sizer is None:
        raise EncodeError(f"not a gossip message: {message!r}")
    return sizer(message)


#: The smallest message there is (an Ack or Digest with one-byte names): a broadcast
#: queue stops looking for something that fits once less than this is left.
MIN_MESSAGE_SIZE: Final = 7


# Decoding -------------------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int, what: str) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise DecodeError(f"truncated {what}")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def u8(self, what: str) -> int:
        value: int = _U8.unpack(self.take(1, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = _U32.unpack(self.take(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = _U64.unpack(self.take(8, what))[0]
        return value

    def string(self, what: str) -> str:
        length = self.u8(what)
        if length == 0:
            raise DecodeError(f"empty {what}")
        try:
            return self.take(length, what).decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError(f"invalid UTF-8 in {what}") from None

    def endpoint(self, what: str) -> Endpoint:
        packed, port = _ENDPOINT.unpack(self.take(_ENDPOINT.size, what))
        if port == 0:
            raise DecodeError(f"port 0 in {what}")
        return Endpoint(ipaddress.IPv6Address(packed), port)


def _ping(r: _Reader) -> Message:
    return Ping(r.u32("ping seq"), r.string("ping target"), r.string("ping source"))


def _ping_req(r: _Reader) -> Message:
    return PingReq(
        r.u32("ping-req seq"),
        r.string("ping-req target"),
        r.endpoint("ping-req address"),
        r.string("ping-req source"),
    )


def _ack(r: _Reader) -> Message:
    return Ack(r.u32("ack seq"), r.string("ack source"))


def _nack(r: _Reader) -> Message:
    return Nack(r.u32("nack seq"), r.string("nack source"))


def _alive(r: _Reader) -> Message:
    return Alive(
        r.string("alive name"),
        r.u64("alive incarnation"),
        r.endpoint("alive address"),
        r.string("alive role"),
        r.take(PROOF_SIZE, "alive proof"),
    )


def _suspect(r: _Reader) -> Message:
    return Suspect(
        r.string("suspect name"), r.u64("suspect incarnation"), r.string("suspect source")
    )


def _dead(r: _Reader) -> Message:
    return Dead(r.string("dead name"), r.u64("dead incarnation"), r.string("dead source"))


def _digest(r: _Reader) -> Message:
    return Digest(r.string("digest name"), r.u64("digest version"))


def _knock_request(r: _Reader) -> Message:
    return KnockRequest(r.u32("knock request seq"), r.string("knock request source"))


def _knock(r: _Reader) -> Message:
    return Knock(r.u32("knock seq"), r.string("knock source"))


_DECODERS: Final[dict[int, Callable[[_Reader], Message]]] = {
    PING: _ping,
    PING_REQ: _ping_req,
    ACK: _ack,
    NACK: _nack,
    ALIVE: _alive,
    SUSPECT: _suspect,
    DEAD: _dead,
    DIGEST: _digest,
    KNOCK_REQUEST: _knock_request,
    KNOCK: _knock,
}


def decode(data: bytes) -> list[Message]:
    """The messages of one frame; raises :class:`DecodeError` on anything malformed."""
    if not data:
        raise DecodeError("empty frame")
    if len(data) > MAX_PLAINTEXT:
        raise DecodeError("oversized frame")
    if data[0] != VERSION:
        raise DecodeError(f"unknown version {data[0]}")
    reader = _Reader(bytes(data))
    reader.offset = HEADER_SIZE
    messages: list[Message] = []
    while reader.offset < len(data):
        kind = reader.u8("message type")
        decoder = _DECODERS.get(kind)
        if decoder is None:
            raise DecodeError(f"unknown message type {kind}")
        messages.append(decoder(reader))
    if not messages:
        raise DecodeError("frame without messages")
    return messages
