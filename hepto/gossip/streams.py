"""Gossip over TCP: push/pull of the full state, record fetches and the fallback ping.

A stream is a sequence of frames, each ``[length: u32][envelope]``, the envelope sealed
by a :class:`~hepto.gossip.crypto.StreamCipher`.  The initiator sends a request, the
responder answers it; an initiator may send several requests in turn.  Frame payloads::

    PushPull   = 1 JSON {"sender", "join", "members": [[name, address, port, role,
                          incarnation, status, proof]...], "digests": [[name, version]...]}

A member's proof is the base64 of the proof of the Alive its state came from
(:mod:`hepto.gossip.proofs`), required of a member said to be alive, else possibly empty.
    Fetch      = 2 UTF-8 name
    Record     = 3 (0 | 1 signed-record)       0: not held
    StreamPing = 4 datagram codec frame of one Ping
    StreamAck  = 5 (0 | 1)
    FetchRecords = 6 UTF-8 names, one per line
    Records    = 7 ([length: u32][signed-record])*   those held, in the order asked, at
                   most RECORDS_REPLY bytes of them (the first always)

A member older than FetchRecords counts it malformed and hangs up; the asker then
fetches the same records one by one, as it always did.

Everything received is bounded (frame size, member and digest counts) and validated:
a bad frame is counted and the stream is aborted, never half-believed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import json
import struct
from collections import deque
from typing import Any, Final, Protocol, cast

import attrs
from twisted.internet import protocol
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from hepto.config import ROLES, ConfigError, Endpoint, parse_name
from hepto.gossip import codec
from hepto.gossip.crypto import MALFORMED, OVERSIZED, Dropped, Drops, Keyring, StreamCipher
from hepto.gossip.messages import Ping
from hepto.gossip.proofs import PROOF_SIZE
from hepto.gossip.records import MAX_RECORD_SIZE, MAX_VERSION
from hepto.state import ALIVE, STATUSES

#: A push/pull of 10,000 members with their digests takes ~1.5 MiB; a record at most 1 MiB.
MAX_FRAME: Final = 4 << 20
MAX_MEMBERS: Final = 1 << 16
MAX_INCARNATION: Final = (1 << 64) - 1
#: Seconds a stream may stay silent before it is closed: a stalled peer must not pin us.
IDLE_TIMEOUT: Final = 10.0
#: Bytes of records one Records reply carries at most: half a frame, so that the reply's
#: framing never takes it over MAX_FRAME; the asker asks again for the rest.
RECORDS_REPLY: Final = MAX_FRAME // 2
_LENGTH = struct.Struct("!I")

PUSH_PULL, FETCH, RECORD, STREAM_PING, STREAM_ACK, FETCH_RECORDS, RECORDS = range(1, 8)

# Drop reasons of this layer.
BUSY: Final = "busy"
UNEXPECTED: Final = "unexpected-request"


class StreamDecodeError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StreamClosed(Exception):
    """The stream ended before its answer arrived."""


@attrs.frozen
class PeerState:
    """A member as the sender of a push/pull sees it."""

    name: str
    address: Endpoint
    role: str
    incarnation: int
    status: str
    proof: bytes = attrs.field(repr=False)


@attrs.frozen
class PushPull:
    sender: str
    join: bool
    members: tuple[PeerState, ...]
    digests: tuple[tuple[str, int], ...]


@attrs.frozen
class Fetch:
    name: str


@attrs.frozen
class Record:
    blob: bytes | None


@attrs.frozen
class FetchRecords:
    names: tuple[str, ...]


@attrs.frozen
class Records:
    blobs: tuple[bytes, ...]


@attrs.frozen
class StreamPing:
    ping: Ping


@attrs.frozen
class StreamAck:
    acked: bool


StreamMessage = PushPull | Fetch | Record | FetchRecords | Records | StreamPing | StreamAck
#: What each request is answered with.
REPLIES: Final[dict[type, type]] = {
    PushPull: PushPull,
    Fetch: Record,
    FetchRecords: Records,
    StreamPing: StreamAck,
}


# Encoding -------------------------------------------------------------------------------


def encode(message: StreamMessage) -> bytes:
    match message:
        case PushPull(sender, join, members, digests):
            document = {
                "sender": sender,
                "join": join,
                "members": [
                    [
                        m.name,
                        str(m.address.host),
                        m.address.port,
                        m.role,
                        m.incarnation,
                        m.status,
                        base64.b64encode(m.proof).decode("ascii"),
                    ]
                    for m in members
                ],
                "digests": [[name, version] for name, version in digests],
            }
            return bytes((PUSH_PULL,)) + json.dumps(document, separators=(",", ":")).encode()
        case Fetch(name):
            return bytes((FETCH,)) + name.encode("utf-8")
        case Record(blob):
            return bytes((RECORD,)) + (b"\0" if blob is None else b"\1" + blob)
        case FetchRecords(names):
            return bytes((FETCH_RECORDS,)) + "\n".join(names).encode("utf-8")
        case Records(blobs):
            return bytes((RECORDS,)) + b"".join(_LENGTH.pack(len(blob)) + blob for blob in blobs)
        case StreamPing(ping):
            return bytes((STREAM_PING,)) + codec.encode([ping])
        case StreamAck(acked):
            return bytes((STREAM_ACK, int(acked)))
    raise TypeError(f"not a stream message: {message!r}")


# Decoding -------------------------------------------------------------------------------


def decode(payload: bytes) -> StreamMessage:
    """One stream message; raises StreamDecodeError on anything malformed."""
    if not payload:
        raise StreamDecodeError("empty frame")
    kind, body = payload[0], payload[1:]
    if kind == PUSH_PULL:
        return _push_pull(body)
    if kind == FETCH:
        return Fetch(_name(_utf8(body, "fetch name"), "fetch name"))
    if kind == RECORD:
        if body == b"\0":
            return Record(None)
        if body[:1] != b"\1" or len(body) == 1 or len(body) > MAX_RECORD_SIZE + 1:
            raise StreamDecodeError("bad record reply")
        return Record(bytes(body[1:]))
    if kind == FETCH_RECORDS:
        # Counted before split: a frame of newlines would be millions of empty names.
        if body.count(b"\n") >= MAX_MEMBERS:
            raise StreamDecodeError(f"more than {MAX_MEMBERS} record names")
        names = _utf8(body, "record names").split("\n")
        return FetchRecords(tuple(_name(name, "record name") for name in names))
    if kind == RECORDS:
        return Records(_blobs(body))
    if kind == STREAM_PING:
        try:
            messages = codec.decode(body)
        except codec.DecodeError as error:
            raise StreamDecodeError(f"ping: {error.reason}") from None
        if len(messages) != 1 or not isinstance(messages[0], Ping):
            raise StreamDecodeError("stream ping without exactly one ping")
        return StreamPing(messages[0])
    if kind == STREAM_ACK:
        if body not in (b"\0", b"\1"):
            raise StreamDecodeError("bad stream ack")
        return StreamAck(body == b"\1")
    raise StreamDecodeError(f"unknown stream message {kind}")


def _blobs(body: bytes) -> tuple[bytes, ...]:
    blobs = []
    offset = 0
    while offset < len(body):
        if len(body) - offset < _LENGTH.size:
            raise StreamDecodeError("truncated record length")
        (length,) = _LENGTH.unpack_from(body, offset)
        offset += _LENGTH.size
        if not 0 < length <= MAX_RECORD_SIZE or offset + length > len(body):
            raise StreamDecodeError("bad record length")
        blobs.append(bytes(body[offset : offset + length]))
        offset += length
    return tuple(blobs)


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise StreamDecodeError(f"invalid UTF-8 in {what}") from None


def _name(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise StreamDecodeError(f"{what} is not a string")
    try:
        return parse_name(value)
    except ConfigError:
        raise StreamDecodeError(f"{what} is not a node name") from None


def _int(value: object, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise StreamDecodeError(f"{what} out of range")
    return value


def _list(value: object, what: str, limit: int = MAX_MEMBERS) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise StreamDecodeError(f"{what} is not a list of at most {limit}")
    return value


def _push_pull(body: bytes) -> PushPull:
    try:
        document = json.loads(_utf8(body, "push/pull"))
    except (ValueError, RecursionError):
        raise StreamDecodeError("push/pull is not JSON") from None
    if not isinstance(document, dict) or set(document) != {
        "sender",
        "join",
        "members",
        "digests",
    }:
        raise StreamDecodeError("push/pull fields")
    join = document["join"]
    if not isinstance(join, bool):
        raise StreamDecodeError("push/pull join flag")
    return PushPull(
        sender=_name(document["sender"], "push/pull sender"),
        join=join,
        members=tuple(_peer(item) for item in _list(document["members"], "members")),
        digests=tuple(_digest(item) for item in _list(document["digests"], "digests")),
    )


def _peer(item: object) -> PeerState:
    fields = _list(item, "member", 7)
    if len(fields) != 7:
        raise StreamDecodeError("member fields")
    name, host, port, role, incarnation, status, proof = fields
    try:
        address = ipaddress.IPv6Address(host if isinstance(host, str) else "")
    except ValueError:
        raise StreamDecodeError("member address") from None
    if role not in ROLES or status not in STATUSES:
        raise StreamDecodeError("member role or status")
    return PeerState(
        _name(name, "member name"),
        Endpoint(address, _int(port, 1, 65535, "member port")),
        role,
        _int(incarnation, 0, MAX_INCARNATION, "member incarnation"),
        status,
        _proof(proof, required=status == ALIVE),
    )


def _proof(value: object, required: bool) -> bytes:
    try:
        proof = base64.b64decode(value if isinstance(value, str) else "?", validate=True)
    except (binascii.Error, ValueError):
        raise StreamDecodeError("member proof is not base64") from None
    if len(proof) != PROOF_SIZE and (required or proof):
        raise StreamDecodeError("member proof size")
    return proof


def _digest(item: object) -> tuple[str, int]:
    fields = _list(item, "digest", 2)
    if len(fields) != 2:
        raise StreamDecodeError("digest fields")
    return _name(fields[0], "digest name"), _int(fields[1], 1, MAX_VERSION, "digest version")


# Framing --------------------------------------------------------------------------------


@attrs.define(eq=False)
class FrameBuffer:
    """Cuts a byte stream into length-prefixed frames, refusing any over ``limit``."""

    limit: int = MAX_FRAME
    _buffer: bytearray = attrs.field(factory=bytearray)

    def feed(self, data: bytes) -> list[bytes]:
        """The frames completed by ``data``; raises Dropped(OVERSIZED) on a huge length."""
        self._buffer += data
        frames = []
        offset = 0
        while len(self._buffer) - offset >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer, offset)
            if length > self.limit:
                raise Dropped(OVERSIZED)
            end = offset + _LENGTH.size + length
            if end > len(self._buffer):
                break
            frames.append(bytes(self._buffer[offset + _LENGTH.size : end]))
            offset = end
        del self._buffer[:offset]
        return frames


def frame(envelope: bytes) -> bytes:
    return _LENGTH.pack(len(envelope)) + envelope


# Protocols ------------------------------------------------------------------------------


class Responder(Protocol):
    """Answers the requests of streams: a reply, a Deferred of one, or None to hang up."""

    def respond(
        self, request: StreamMessage, peer: Endpoint
    ) -> StreamMessage | Deferred[StreamMessage] | None: ...


class _SealedStream(protocol.Protocol):
    """Frames, seals and checks; subclasses get whole, authentic messages."""

    _log = Logger(namespace="hepto.gossip.streams")

    def __init__(self, keyring: Keyring, clock: IReactorTime, initiator: bool) -> None:
        self.cipher = StreamCipher(keyring, initiator=initiator)
        self.drops: Drops = keyring.drops
        self.clock = clock
        self.frames = FrameBuffer()
        self.peer: Endpoint | None = None
        self._idle: IDelayedCall | None = None
        self.closed = False

    def connectionMade(self) -> None:
        address = self._tcp().getPeer()
        try:
            host = ipaddress.IPv6Address(str(getattr(address, "host", "")).split("%")[0])
            self.peer = Endpoint(host, int(getattr(address, "port", 0)))
        except ValueError:
            self.peer = None
        self._touch()

    def _touch(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(IDLE_TIMEOUT)
        else:
            self._idle = self.clock.callLater(IDLE_TIMEOUT, self._timed_out)

    def _timed_out(self) -> None:
        self._log.info("Closing the idle gossip stream with {peer}", peer=self.peer)
        self.abort()

    def _tcp(self) -> ITCPTransport:
        assert self.transport is not None
        return cast(ITCPTransport, self.transport)

    def abort(self) -> None:
        self._tcp().abortConnection()

    def send(self, message: StreamMessage) -> None:
        self._tcp().write(frame(self.cipher.seal(encode(message))))
        self._touch()

    def dataReceived(self, data: bytes) -> None:
        try:
            envelopes = self.frames.feed(data)
        except Dropped as dropped:
            self.drops.count(dropped.reason, self.peer, "stream frame over the limit")
            self.abort()
            return
        for envelope in envelopes:
            if self.closed:
                return
            self._touch()
            try:
                message = decode(self.cipher.open(envelope, self.peer))
            except Dropped:
                self.abort()
                return
            except StreamDecodeError as error:
                self.drops.count(MALFORMED, self.peer, error.reason)
                self.abort()
                return
            self.messageReceived(message)

    def messageReceived(self, message: StreamMessage) -> None:
        raise NotImplementedError

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed = True
        if self._idle is not None and self._idle.active():
            self._idle.cancel()


class StreamServer(_SealedStream):
    def __init__(self, factory: StreamServerFactory) -> None:
        super().__init__(factory.keyring, factory.clock, initiator=False)
        self.factory = factory
        self._busy = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.admit(self)

    def pause(self) -> None:
        IPushProducer(self.transport).pauseProducing()

    def resume(self) -> None:
        IPushProducer(self.transport).resumeProducing()
        self._touch()  # The wait was the server's, not the peer's.

    def messageReceived(self, message: StreamMessage) -> None:
        if self._busy or self.peer is None or type(message) not in REPLIES:
            self.drops.count(UNEXPECTED, self.peer, type(message).__name__)
            self.abort()
            return
        self._busy = True
        answer = maybeDeferred(self.factory.responder.respond, message, self.peer)
        answer.addCallback(self._answer, message)
        answer.addErrback(self._failed)

    def _answer(self, reply: StreamMessage | None, request: StreamMessage) -> None:
        self._busy = False
        if self.closed:
            return
        if reply is None or type(reply) is not REPLIES[type(request)]:
            self.abort()
            return
        self.send(reply)

    def _failed(self, failure: Failure) -> None:
        self._log.failure("Answering a gossip stream from {peer} failed", failure, peer=self.peer)
        if not self.closed:
            self.abort()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        self.factory.release(self)


@attrs.define(eq=False, repr=False)
class StreamServerFactory(protocol.ServerFactory):
    noisy = False  # One log line per stream would drown the rest.

    keyring: Keyring
    clock: IReactorTime
    responder: Responder
    #: Streams served at once: each is one request, its answer, and a hang-up.
    limit: int = 64
    #: Streams beyond ``limit`` wait their turn unread, so that a flood of joins through
    #: one anchor is served in order instead of sent back to retry with backoff.  Beyond
    #: this many waiting, streams are refused and counted as ``busy``: a flood costs a
    #: bounded amount of memory (a few KiB a stream), then a counter.
    backlog: int = 256
    open: set[StreamServer] = attrs.field(factory=set)
    waiting: deque[StreamServer] = attrs.field(factory=deque)

    def buildProtocol(self, addr: Any) -> StreamServer:
        return StreamServer(self)

    def admit(self, stream: StreamServer) -> None:
        if len(self.open) < self.limit:
            self.open.add(stream)
        elif len(self.waiting) < self.backlog:
            stream.pause()
            self.waiting.append(stream)
        else:
            self.drops.count(
                BUSY, stream.peer, f"{len(self.open)} streams open, {len(self.waiting)} waiting"
            )
            stream.abort()

    def release(self, stream: StreamServer) -> None:
        if stream not in self.open:
            with contextlib.suppress(ValueError):
                self.waiting.remove(stream)
            return
        self.open.discard(stream)
        while self.waiting and len(self.open) < self.limit:
            next_stream = self.waiting.popleft()
            if not next_stream.closed:
                self.open.add(next_stream)
                next_stream.resume()

    @property
    def drops(self) -> Drops:
        return self.keyring.drops

    def abort_all(self) -> None:
        waiting, self.waiting = self.waiting, deque()
        for stream in [*waiting, *self.open]:
            stream.abort()


class StreamClient(_SealedStream):
    """The initiator: one request at a time, each answered by one reply."""

    def __init__(self, keyring: Keyring, clock: IReactorTime) -> None:
        super().__init__(keyring, clock, initiator=True)
        self._waiting: Deferred[StreamMessage] | None = None
        self._expected: type | None = None

    def request(self, message: StreamMessage) -> Deferred[StreamMessage]:
        if self._waiting is not None:
            raise RuntimeError("one request at a time")
        if self.closed:
            raise StreamClosed("the stream is closed")
        self._expected = REPLIES[type(message)]
        self._waiting = Deferred(self._cancel)
        self.send(message)
        return self._waiting

    def _cancel(self, waiting: Deferred[StreamMessage]) -> None:
        self._waiting = None
        self.abort()

    def messageReceived(self, message: StreamMessage) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is None or type(message) is not self._expected:
            self.drops.count(UNEXPECTED, self.peer, f"reply {type(message).__name__}")
            self.abort()
            if waiting is not None:
                waiting.errback(StreamClosed(f"unexpected reply {type(message).__name__}"))
            return
        waiting.callback(message)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(StreamClosed(reason.getErrorMessage()))
