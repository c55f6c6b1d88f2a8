"""wireguard-go's configuration protocol (UAPI) over its unix socket, on Twisted.

The protocol is text: a request is ``get=1`` or ``set=1`` followed by ``key=value``
lines and a blank line; the reply is ``key=value`` lines ending with ``errno=N`` and a
blank line.  Keys are hexadecimal here, base64 everywhere else.  Formatting and parsing
are plain functions; :class:`UAPIClient` opens one connection per transaction, which
costs less than keeping one alive across wireguard-go restarts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IReactorTime, IReactorUNIX
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from hepto import unixpath
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
            try:
                self.allowed_ips.add(ipaddress.ip_network(value))
            except ValueError:
                raise UAPIProtocolError(f"allowed_ip={value!r} is not a prefix") from None
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
        return hex_to_base64(value)
    except InvalidKey as error:
        raise UAPIProtocolError(f"{key} is {error}") from None


class UAPITransaction(Protocol):
    """Send one request, collect the reply up to its blank line, hang up."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.reply: Deferred[bytes] = Deferred(lambda _: self._abort())
        self._buffer = bytearray()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if self.reply.called:
            return
        self._buffer += data
        # Replies hold no blank line but the final one.
        end = self._buffer.find(b"\n\n")
        if end != -1:
            self._finish(bytes(self._buffer[: end + 1]))
        elif len(self._buffer) > MAX_REPLY:
            self._finish(Failure(UAPIProtocolError(f"reply longer than {MAX_REPLY} bytes")))

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.reply.called:
            why = "" if reason is None else f": {reason.getErrorMessage()}"
            self.reply.errback(UAPIProtocolError(f"connection lost before the reply{why}"))

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _finish(self, result: bytes | Failure) -> None:
        assert self.transport is not None
        self.transport.loseConnection()
        if isinstance(result, Failure):
            self.reply.errback(result)
        else:
            self.reply.callback(result)


class _OneTransaction(Factory):
    # Quiet: the default factory logs two lines for every transaction.
    noisy = False

    def __init__(self, transaction: UAPITransaction) -> None:
        self.transaction = transaction

    def buildProtocol(self, addr: object) -> UAPITransaction:
        return self.transaction


def _timed_out(result: object, timeout: float) -> object:
    # Cancelling a connection attempt fails with ConnectingCancelledError, not
    # CancelledError: say "timeout" whichever stage it was in.
    if isinstance(result, Failure) and result.check(CancelledError, ConnectingCancelledError):
        raise TimeoutError(timeout, "wireguard-go UAPI transaction")
    return result


class UAPIClient:
    """Transactions with the wireguard-go listening on ``path``."""

    def __init__(
        self, reactor: IReactorUNIX | IReactorTime, path: Path, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.reactor = reactor
        self.path = path
        self.timeout = timeout

    def transact(self, request: bytes) -> Deferred[bytes]:
        """The raw reply to ``request``; fails on timeout or a lost connection."""
        transaction = UAPITransaction(request)

        def connect(path: str) -> Deferred[object]:
            endpoint = UNIXClientEndpoint(self.reactor, path, timeout=int(self.timeout))
            return endpoint.connect(_OneTransaction(transaction))

        connecting = unixpath.connecting(self.path, connect)

        def connected(_: object) -> Deferred[bytes]:
            return transaction.reply

        reply = connecting.addCallback(connected)
        reply.addTimeout(self.timeout, IReactorTime(self.reactor), onTimeoutCancel=_timed_out)
        return reply

    async def get(self) -> DeviceStatus:
        return parse_get(await self.transact(GET_REQUEST))

    async def set(self, request: bytes) -> None:
        check_errno(await self.transact(request), "set")
