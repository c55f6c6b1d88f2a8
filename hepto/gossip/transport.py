"""Gossip on the reactor: sealed UDP datagrams and sealed TCP streams on one port.

:class:`GossipTransport` is the ``Network`` that Membership sends through, and the
fetcher of the record store.  Received datagrams go size check -> open (decrypt,
freshness, replay) -> decode -> ``receiver``; each refusal is counted by its reason.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any, Final

from twisted.internet import protocol
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import TCP6ClientEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime, IReactorUDP
from twisted.logger import Logger
from twisted.python.failure import Failure

from hepto import plan
from hepto.config import Endpoint
from hepto.gossip import codec
from hepto.gossip.crypto import MALFORMED, OVERSIZED, Dropped, Keyring
from hepto.gossip.messages import MAX_DATAGRAM, MAX_PLAINTEXT, Message, Ping
from hepto.gossip.streams import (
    MAX_MEMBERS,
    Fetch,
    FetchRecords,
    PushPull,
    Record,
    Records,
    Responder,
    StreamAck,
    StreamClient,
    StreamMessage,
    StreamPing,
    StreamServerFactory,
)

#: Seconds a stream request may take, connection included, before it counts as failed.
STREAM_TIMEOUT: Final = 10.0
#: Twisted reads at most this much of a datagram: anything over MAX_DATAGRAM must still
#: be seen whole enough to be recognised as oversized, never silently truncated to fit.
_READ_SIZE: Final = 65535

Receiver = Callable[[Endpoint, Sequence[Message]], None]


def recipient_of(endpoint: Endpoint) -> bytes:
    """What binds a datagram to the member it is sent to: its gossip address and port."""
    return endpoint.host.packed + endpoint.port.to_bytes(2, "big")


@functools.lru_cache(maxsize=plan.ADDRESS_CACHE)
def socket_address(endpoint: Endpoint) -> tuple[str, int]:
    """``endpoint`` as ``sendto`` takes it.

    Remembered, as the Endpoints of :func:`sender_of` are: every datagram needs one or
    the other, and formatting or parsing an IPv6 address costs about as much as sealing
    the datagram, while members are few and talk all the time.
    """
    return (str(endpoint.host), endpoint.port)


def sender_of(address: Any) -> Endpoint:
    """The Endpoint of a ``recvfrom`` address; ValueError, TypeError or IndexError for
    what is none (a failure is not remembered)."""
    return _sender(address[0], address[1])


@functools.lru_cache(maxsize=plan.ADDRESS_CACHE)
def _sender(host: str, port: int) -> Endpoint:
    return Endpoint(ipaddress.IPv6Address(host.split("%")[0]), int(port))


class _Datagrams(protocol.DatagramProtocol):
    maxPacketSize = _READ_SIZE
    noisy = False

    def __init__(self, owner: GossipTransport) -> None:
        self.owner = owner

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.owner.datagram_received(datagram, addr)


class _OneStream(protocol.ClientFactory):
    """connectProtocol's factory, without a log line per connection."""

    noisy = False

    def __init__(self, client: StreamClient) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> StreamClient:
        return self.client


class GossipTransport:
    """UDP and TCP on the node's gossip address; ``receiver`` and ``responder`` plug in."""

    log = Logger(namespace="hepto.gossip.transport")

    def __init__(
        self,
        reactor: Any,
        keyring: Keyring,
        address: Endpoint,
        stream_timeout: float = STREAM_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.keyring = keyring
        self.drops = keyring.drops
        self.address = address
        self._recipient = recipient_of(address)
        self.stream_timeout = stream_timeout
        self.receiver: Receiver | None = None
        self.responder: Responder | None = None
        self.sent = 0
        self.received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._udp: IListeningPort | None = None
        self._tcp: IListeningPort | None = None
        self._datagrams = _Datagrams(self)
        self._server: StreamServerFactory | None = None
        self._clients: set[StreamClient] = set()

    # Lifecycle

    def listen(self) -> None:
        """Bind UDP and TCP; raises CannotListenError (with the address) if taken."""
        assert self.responder is not None, "a responder must be set before listening"
        udp: IReactorUDP = self.reactor
        tcp: IReactorTCP = self.reactor
        interface = str(self.address.host)
        self._udp = udp.listenUDP(
            self.address.port, self._datagrams, interface=interface, maxPacketSize=_READ_SIZE
        )
        self._server = StreamServerFactory(self.keyring, self.clock, self.responder)
        self._tcp = tcp.listenTCP(self.address.port, self._server, interface=interface)
        self.log.info("Gossip listening on {address} (UDP and TCP)", address=self.address)

    def stop(self) -> Deferred[Any]:
        ports = [port for port in (self._udp, self._tcp) if port is not None]
        self._udp = self._tcp = None
        if self._server is not None:
            self._server.abort_all()
        for client in list(self._clients):
            client.abort()
        stopped = [d for d in (port.stopListening() for port in ports) if d is not None]
        return DeferredList(stopped) if stopped else succeed(None)

    # Datagrams

    def send(self, to: Endpoint, messages: Sequence[Message]) -> None:
        """Seal and send one datagram, best effort."""
        if self._udp is None:
            return
        datagram = self._seal(to, messages)
        if datagram is None:
            return
        try:
            self._udp.write(datagram, socket_address(to))  # type: ignore[attr-defined]
        except OSError as error:
            self.drops.count("send-failed", to, error.strerror or str(error))
            return
        self._sent(datagram)

    def send_aside(self, to: Endpoint, messages: Sequence[Message]) -> None:
        """Seal and send one datagram from a port of its own, opened for it and closed
        after it, best effort: what only a receiver that admits datagrams nobody asked
        for receives (:mod:`hepto.gossip.knocks`).

        A bare non-blocking socket rather than a Twisted port: one datagram is sent and
        nothing is ever read, and a port would log its opening and closing each time.
        """
        if self._udp is None:
            return
        datagram = self._seal(to, messages)
        if datagram is None:
            return
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as aside:
                aside.setblocking(False)
                aside.bind((str(self.address.host), 0))
                aside.sendto(datagram, socket_address(to))
        except OSError as error:
            self.drops.count("send-failed", to, error.strerror or str(error))
            return
        self._sent(datagram)

    def _seal(self, to: Endpoint, messages: Sequence[Message]) -> bytes | None:
        """The sealed datagram of ``messages`` for ``to``; None (logged) if unsendable."""
        try:
            payload = codec.encode(messages)
        except codec.EncodeError:
            self.log.failure("Cannot encode gossip for {peer}", peer=to)
            return None
        if len(payload) > MAX_PLAINTEXT:  # The codec refuses this too; never trust it alone.
            self.log.error("Refusing to send {size} bytes of gossip", size=len(payload))
            return None
        return self.keyring.seal_datagram(payload, recipient_of(to))

    def _sent(self, datagram: bytes) -> None:
        self.sent += 1
        self.bytes_sent += len(datagram)

    def datagram_received(self, datagram: bytes, addr: Any) -> None:
        try:
            sender = sender_of(addr)
        except (ValueError, TypeError, IndexError):
            return
        self.received += 1
        self.bytes_received += len(datagram)
        if len(datagram) > MAX_DATAGRAM:
            self.drops.count(OVERSIZED, sender, f"{len(datagram)} bytes")
            return
        try:
            payload = self.keyring.open_datagram(datagram, self._recipient, peer=sender)
        except Dropped:
            return
        try:
            messages = codec.decode(payload)
        except codec.DecodeError as error:
            self.drops.count(MALFORMED, sender, error.reason)
            return
        if self.receiver is None:
            return
        try:
            self.receiver(sender, messages)
        except Exception:
            self.log.failure("Membership failed on a datagram from {peer}", peer=sender)

    # Streams

    def request(self, to: Endpoint, message: StreamMessage) -> Deferred[StreamMessage]:
        """Open a stream to ``to``, send ``message``, fire with its reply, hang up."""
        endpoint = TCP6ClientEndpoint(
            self.reactor, str(to.host), to.port, timeout=max(1, int(self.stream_timeout))
        )
        client = StreamClient(self.keyring, self.clock)
        connected = endpoint.connect(_OneStream(client))

        def ask(_: object) -> Deferred[StreamMessage]:
            self._clients.add(client)
            return client.request(message)

        def done(result: Any) -> Any:
            self._clients.discard(client)
            if client.transport is not None and not client.closed:
                client.transport.loseConnection()
            return result

        answered: Deferred[StreamMessage] = connected.addCallback(ask)
        answered.addTimeout(self.stream_timeout, self.clock)
        return answered.addBoth(done)

    def ping_stream(self, to: Endpoint, ping: Ping) -> Deferred[bool]:
        """The fallback ping over TCP: True if acknowledged, False on any failure."""

        def acked(reply: StreamMessage) -> bool:
            return isinstance(reply, StreamAck) and reply.acked

        def failed(_: Failure) -> bool:
            return False

        return self.request(to, StreamPing(ping)).addCallback(acked).addErrback(failed)

    def fetch(self, to: Endpoint, name: str) -> Deferred[bytes | None]:

        def blob(reply: StreamMessage) -> bytes | None:
            return reply.blob if isinstance(reply, Record) else None

        return self.request(to, Fetch(name)).addCallback(blob)

    def fetch_many(self, to: Endpoint, names: Sequence[str]) -> Deferred[Sequence[bytes]]:
        """Those of the records of ``names`` that ``to`` holds and sends in one reply."""

        def blobs(reply: StreamMessage) -> Sequence[bytes]:
            return reply.blobs if isinstance(reply, Records) else ()

        return self.request(to, FetchRecords(tuple(names[:MAX_MEMBERS]))).addCallback(blobs)

    def push_pull(self, to: Endpoint, state: PushPull) -> Deferred[PushPull]:
        def check(reply: StreamMessage) -> PushPull:
            assert isinstance(reply, PushPull)  # StreamClient checks reply types.
            return reply

        return self.request(to, state).addCallback(check)
