"""wireguard-go's configuration protocol (UAPI) over its unix socket, on Twisted.

The protocol is text: a request is ``get=1`` or ``set=1`` followed by ``key=value``
lines and a blank line; the reply is ``key=value`` lines ending with ``errno=N`` and a
blank line.  Keys are hexadecimal here, base64 everywhere else.  Formatting and parsing
are plain functions; :class:`UAPIClient` sends its transactions one after another over
one connection, which it makes again when wireguard-go closed it.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from twisted.internet.defer import CancelledError, Deferred, DeferredLock, TimeoutError, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IReactorTime, IReactorUNIX
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from hepto import plan, unixpath
from hepto.mesh.backend import (
    AddPeer,
    DeviceStatus,
    IPNetwork,
    PeerChange,
    PeerSpec,
    PeerStatus,
    RemovePeer,
)
from hepto.mesh.keys import InvalidKey, base64_to_hex, hex_to_base64
from hepto.once import Once

#: A reply larger than this is not wireguard-go talking (1,000 peers take ~400 KB).
MAX_REPLY: Final = 16 * 1024 * 1024
DEFAULT_TIMEOUT: Final = 10.0


class UAPIError(Exception):
    """wireguard-go refused a request; ``errno`` is its error number."""

    def __init__(self, errno: int, request: str) -> None:
        super().__init__(errno, request)
        self.errno = errno
        self.request = request

    def __str__(self) -> str:
        return f"wireguard-go answered errno={self.errno} to {self.request}"


class UAPIProtocolError(Exception):
    """The reply does not follow the protocol."""


GET_REQUEST: Final = b"get=1\n\n"


def _peer_lines(spec: PeerSpec, endpoint: bool) -> Iterator[str]:
    if endpoint:
        yield f"endpoint={spec.endpoint}"
    yield f"persistent_keepalive_interval={spec.keepalive}"
    yield "replace_allowed_ips=true"
    for network in sorted(spec.allowed_ips, key=str):
        yield f"allowed_ip={network}"


def _change_lines(change: PeerChange) -> Iterator[str]:
    if isinstance(change, RemovePeer):
        yield f"public_key={base64_to_hex(change.public_key)}"
        yield "remove=true"
    elif isinstance(change, AddPeer):
        yield f"public_key={base64_to_hex(change.spec.public_key)}"
        yield from _peer_lines(change.spec, endpoint=True)
    else:
        yield f"public_key={base64_to_hex(change.spec.public_key)}"
        # Never resurrect a peer that a concurrent removal took away.
        yield "update_only=true"
        yield from _peer_lines(change.spec, change.endpoint)


def set_request(
    private_key: str | None = None,
    listen_port: int | None = None,
    changes: Sequence[PeerChange] = (),
) -> bytes:
    """A ``set=1`` transaction; every value is rendered from a typed, validated one."""
    lines = ["set=1"]
    if private_key is not None:
        lines.append(f"private_key={base64_to_hex(private_key)}")
    if listen_port is not None:
        lines.append(f"listen_port={listen_port}")
    for change in changes:
        lines.extend(_change_lines(change))
    return ("\n".join(lines) + "\n\n").encode("ascii")


def _split(reply: bytes) -> list[tuple[str, str]]:
    try:
        text = reply.decode("ascii")
    except UnicodeDecodeError:
        raise UAPIProtocolError("reply is not ASCII") from None
    pairs = []
    for line in text.split("\n"):
        if not line:
            continue
        key, equals, value = line.partition("=")
        if not equals:
            raise UAPIProtocolError(f"reply line {line!r} is not key=value")
        pairs.append((key, value))
    return pairs


def _integer(key: str, value: str) -> int:
    if not value.isdigit():
        raise UAPIProtocolError(f"{key}={value!r} is not a number")
    return int(value)


def check_errno(reply: bytes, request: str) -> list[tuple[str, str]]:
    """The reply's ``key=value`` pairs before ``errno``; :class:`UAPIError` unless it is 0."""
    pairs = _split(reply)
    if not pairs or pairs[-1][0] != "errno":
        raise UAPIProtocolError("reply does not end with errno")
    # wireguard-go sends errno as a negative number (-22 for EINVAL).
    errno = abs(_integer("errno", pairs[-1][1].removeprefix("-")))
    if errno:
        raise UAPIError(errno, request)
    return pairs[:-1]


class _PeerBuilder:
    def __init__(self, public_key: str) -> None:
        self.public_key = public_key
        self.endpoint: str | None = None
        self.allowed_ips: set[IPNetwork] = set()
        self.keepalive = 0
        self.handshake_sec = 0
        self.handshake_nsec = 0
        self.rx_bytes = 0
        self.tx_bytes = 0

    def take(self, key: str, value: str) -> None:
        if key == "endpoint":
            self.endpoint = _endpoint(value)
        elif key == "allowed_ip":
            self.allowed_ips.add(_prefix(value))
        elif key == "persistent_keepalive_interval":
            self.keepalive = _integer(key, value)
        elif key == "last_handshake_time_sec":
            self.handshake_sec = _integer(key, value)
        elif key == "last_handshake_time_nsec":
            self.handshake_nsec = _integer(key, value)
        elif key == "rx_bytes":
            self.rx_bytes = _integer(key, value)
        elif key == "tx_bytes":
            self.tx_bytes = _integer(key, value)
        # Other keys (preshared_key, protocol_version, later additions) do not matter here.

    def build(self) -> PeerStatus:
        handshake = None
        if self.handshake_sec or self.handshake_nsec:
            handshake = self.handshake_sec + self.handshake_nsec / 1e9
        return PeerStatus(
            self.public_key,
            self.endpoint,
            frozenset(self.allowed_ips),
            self.keepalive,
            handshake,
            self.rx_bytes,
            self.tx_bytes,
        )


# The mesh reads the whole device at every resync (every 10 s), and the same keys,
# endpoints and prefixes come back each time: parsing them again, mostly in ipaddress,
# took 2.4 ms a read at 100 peers (docs/benchmarks.rst, "Reading the device").  Each
# kind is remembered apart; errors are raised, never remembered (lru_cache keeps only
# what a call returns).
@functools.lru_cache(maxsize=plan.ADDRESS_CACHE)
def _prefix(value: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(value)
    except ValueError:
        raise UAPIProtocolError(f"allowed_ip={value!r} is not a prefix") from None


@functools.lru_cache(maxsize=plan.ADDRESS_CACHE)
def _endpoint(value: str) -> str:
    """wireguard-go's ``[addr]:port`` (or ``a.b.c.d:port``), canonicalised."""
    host, _, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]").partition("%")[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise UAPIProtocolError(f"endpoint={value!r} is not address:port") from None
    port_number = _integer("endpoint port", port)
    if isinstance(address, ipaddress.IPv4Address):
        return f"{address}:{port_number}"
    return f"[{address}]:{port_number}"


def parse_get(reply: bytes) -> DeviceStatus:
    """The device described by a ``get=1`` reply."""
    private_key = None
    listen_port = 0
    peers: dict[str, PeerStatus] = {}
    peer: _PeerBuilder | None = None
    for key, value in check_errno(reply, "get"):
        if key == "public_key":
            if peer is not None:
                peers[peer.public_key] = peer.build()
            peer = _PeerBuilder(_key(key, value))
        elif peer is not None:
            peer.take(key, value)
        elif key == "private_key":
            private_key = _key(key, value)
        elif key == "listen_port":
            listen_port = _integer(key, value)
    if peer is not None:
        peers[peer.public_key] = peer.build()
    return DeviceStatus(private_key, listen_port, peers)


def _key(key: str, value: str) -> str:
    try:
        return _base64_key(value)
    except InvalidKey as error:
        raise UAPIProtocolError(f"{key} is {error}") from None


@functools.lru_cache(maxsize=plan.ADDRESS_CACHE)
def _base64_key(value: str) -> str:
    return hex_to_base64(value)


class UAPIConnection(Protocol):
    """One connection to wireguard-go, carrying one transaction at a time.

    wireguard-go serves operation after operation on a connection, each reply ending
    with a blank line, so a request waits for the previous reply: it reads a request
    through a scanner that may take bytes beyond it, and a second request sent behind
    the first could be lost in that scanner's buffer.
    """

    def __init__(self) -> None:
        self._reply: Deferred[bytes] | None = None
        self._buffer = bytearray()
        self._dropped = False
        self._lost: Once[None] = Once()

    @property
    def open(self) -> bool:
        return self.transport is not None and not self._dropped and not self._lost.done

    def transact(self, request: bytes) -> Deferred[bytes]:
        """The raw reply to ``request``; cancelling it drops the connection."""
        assert self.transport is not None and self._reply is None
        reply = self._reply = Deferred(self._cancelled)
        self.transport.write(request)
        return reply

    def _cancelled(self, reply: Deferred[bytes]) -> None:
        if reply is self._reply:
            self._reply = None
        self.abort()

    def dataReceived(self, data: bytes) -> None:
        if self._reply is None:
            # Nothing was asked: not wireguard-go talking, or out of step with it.
            self.abort()
            return
        self._buffer += data
        # Replies hold no blank line but the final one.
        end = self._buffer.find(b"\n\n")
        if end != -1:
            if end + 2 != len(self._buffer):
                self._fail(UAPIProtocolError("bytes after the reply"))
                return
            reply, self._reply = self._reply, None
            answer = bytes(self._buffer[: end + 1])
            self._buffer.clear()
            reply.callback(answer)
        elif len(self._buffer) > MAX_REPLY:
            self._fail(UAPIProtocolError(f"reply longer than {MAX_REPLY} bytes"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        reply, self._reply = self._reply, None
        if reply is not None:
            why = "" if reason is None else f": {reason.getErrorMessage()}"
            reply.errback(UAPIProtocolError(f"connection lost before the reply{why}"))
        self._lost.fire(None)

    def abort(self) -> None:
        if self.open:
            self._dropped = True
            self.transport.abortConnection()  # type: ignore[union-attr]

    def close(self) -> Deferred[None]:
        """Hang up; fires once the connection is gone."""
        if self.open:
            self._dropped = True
            self.transport.loseConnection()  # type: ignore[union-attr]
        return self._lost.when()

    def _fail(self, error: Exception) -> None:
        reply, self._reply = self._reply, None
        self.abort()
        if reply is not None:
            reply.errback(error)


class _Connections(Factory):
    # Quiet: the default factory logs two lines for every connection.
    noisy = False
    protocol = UAPIConnection


def _timed_out(result: object, timeout: float) -> object:
    # Cancelling a connection attempt fails with ConnectingCancelledError, not
    # CancelledError: say "timeout" whichever stage it was in.
    if isinstance(result, Failure) and result.check(CancelledError, ConnectingCancelledError):
        raise TimeoutError(timeout, "wireguard-go UAPI transaction")
    return result


class UAPIClient:
    """Transactions with the wireguard-go listening on ``path``, one at a time.

    They share one connection, made by the first and kept: a connection made and closed
    per transaction was a tenth of a member's CPU for a join, on both sides.  A
    connection that wireguard-go closed (it restarted, or refused a request) is replaced
    by the next transaction; one that failed a transaction is dropped.
    """

    def __init__(
        self, reactor: IReactorUNIX | IReactorTime, path: Path, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.reactor = reactor
        self.path = path
        self.timeout = timeout
        #: Connections made (not attempted), for tests and the curious.
        self.connections = 0
        self._connection: UAPIConnection | None = None
        self._turns = DeferredLock()

    def transact(self, request: bytes) -> Deferred[bytes]:
        """The raw reply to ``request``; fails on timeout or a lost connection.

        The timeout counts from the call, the wait for earlier transactions included.
        """
        reply = self._turns.run(lambda: Deferred.fromCoroutine(self._transact(request)))
        reply.addTimeout(self.timeout, IReactorTime(self.reactor), onTimeoutCancel=_timed_out)
        return reply

    async def _transact(self, request: bytes) -> bytes:
        connection = self._connection
        if connection is None or not connection.open:
            connection = self._connection = await self._connect()
            self.connections += 1
        try:
            reply = await connection.transact(request)
        except BaseException:
            # Out of step with wireguard-go (a timeout, a reply cut short): start afresh.
            connection.abort()
            raise
        if not reply.endswith(b"errno=0\n"):
            # A refused set may leave the rest of its request unread: never reuse that.
            connection.close()
        return reply

    def _connect(self) -> Deferred[UAPIConnection]:
        def connect(path: str) -> Deferred[UAPIConnection]:
            endpoint = UNIXClientEndpoint(self.reactor, path, timeout=int(self.timeout))
            return endpoint.connect(_Connections())

        return unixpath.connecting(self.path, connect)

    def close(self) -> Deferred[None]:
        """Hang up the connection kept, if any; fires once it is gone."""
        connection, self._connection = self._connection, None
        if connection is None:
            return succeed(None)
        return connection.close()

    async def get(self) -> DeviceStatus:
        return parse_get(await self.transact(GET_REQUEST))

    async def set(self, request: bytes) -> None:
        check_errno(await self.transact(request), "set")
