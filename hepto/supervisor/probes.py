"""Readiness probes: is a started program ready to serve?

A probe's ``check()`` returns a Deferred that fires (with anything) when the program is
ready and fails with :class:`ProbeFailed`, or any other error, when it is not.  Probes
do not retry: the supervisor schedules them and bounds each attempt.  This is the one
place hepto polls, because upstream programs offer nothing to wait on.

HTTPS probes use the standard library's :mod:`ssl` and :mod:`http.client` in the
reactor's thread pool rather than Twisted's TLS, which needs pyOpenSSL: importing that
costs every agent about 13 MB of resident memory, while :mod:`ssl` is loaded anyway
(``asyncio`` imports it; see ``docs/memory.rst``).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IReactorUNIX
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as WireProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from hepto import unixpath

#: A probe reads "ok" or a short JSON document; anything beyond this is not read.
BODY_LIMIT: Final = 64 * 1024


class ProbeFailed(Exception):
    """The program answered, but not as a ready program does."""


class Probe(Protocol):
    def check(self) -> Deferred[Any]: ...

    def describe(self) -> str: ...


@attrs.frozen
class AlwaysReady:
    """For programs with nothing to probe: ready as soon as they are started."""

    def check(self) -> Deferred[Any]:
        return succeed(None)

    def describe(self) -> str:
        return "started"


@attrs.frozen
class ProbeTLS:
    """How a probe speaks TLS: which CA it trusts, which certificate it shows.

    Files are read at every probe, so renewed certificates are picked up; a CA file may
    hold several certificates (old and new CAs during a rotation).  Without a CA the
    server is not verified, which is only allowed on loopback: the probe then learns
    nothing an attacker on the host could not already read, and sends no secret (a TLS
    client certificate proves possession of its key without revealing it).  Components
    that generate their own self-signed serving certificate need this.
    """

    ca: Path | None
    certificate: Path | None = None
    key: Path | None = None

    def __attrs_post_init__(self) -> None:
        if (self.certificate is None) != (self.key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")

    def context(self) -> ssl.SSLContext:
        """A fresh client context from the files as they are now."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.certificate is not None and self.key is not None:
            context.load_cert_chain(self.certificate, self.key)
        if self.ca is None:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            # Checks the server's IP address SAN against the URL's address, too.
            context.load_verify_locations(cafile=self.ca)
        return context


BodyCheck = Callable[[bytes], str | None]
"""Returns why a 200 response's body does not mean ready, or None when it does."""


@attrs.frozen
class Answer:
    """What a server said: its status code and the first :data:`BODY_LIMIT` bytes."""

    status: int
    body: bytes


def judge(answer: Answer, body_check: BodyCheck | None = None) -> None:
    """Raises ProbeFailed unless the answer means ready."""
    if answer.status != 200:
        excerpt = answer.body[:200].decode("utf-8", errors="replace").strip()
        raise ProbeFailed(f"HTTP {answer.status}: {excerpt}")
    if body_check is not None:
        problem = body_check(answer.body)
        if problem is not None:
            raise ProbeFailed(problem)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@attrs.define
class _Exchange:
    """One request in a worker thread; ``abort`` (from any thread) unblocks it."""

    connection: http.client.HTTPConnection
    path: str
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _aborted: bool = False

    def run(self) -> Answer:
        try:
            self.connection.connect()
            with self._lock:
                if self._aborted:
                    raise ProbeFailed("cancelled")
            self.connection.request("GET", self.path, headers={"Connection": "close"})
            response = self.connection.getresponse()
            return Answer(response.status, response.read(BODY_LIMIT))
        finally:
            self.connection.close()

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            sock = self.connection.sock
        if sock is not None:
            try:
                # Wakes a worker blocked in recv at once; close() stays with the worker.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected yet, or closed already


@attrs.define
class HTTPProbe:
    """``GET url`` answers 200 (and, with ``body_check``, the expected body).

    ``reactor`` provides ``getThreadPool`` and ``callFromThread``.  ``timeout`` bounds
    each blocking step of the request (connect, handshake, each read) in its worker
    thread, which the supervisor's own time limit cannot interrupt; cancelling the
    Deferred, as that limit does, shuts the connection down and frees the thread at once.
    """

    reactor: Any
    url: str
    tls: ProbeTLS | None = None
    body_check: BodyCheck | None = None
    timeout: float = 5.0
    _host: str = attrs.field(init=False)
    _port: int = attrs.field(init=False)
    _path: str = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{self.url}: not an http or https URL")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._path = parts.path or "/"
        if parts.query:
            self._path += f"?{parts.query}"
        if parts.scheme == "https":
            if self.tls is None:
                raise ValueError(f"{self.url}: an https probe needs its ProbeTLS")
            if self.tls.ca is None and not is_loopback(self._host):
                raise ValueError(f"{self.url}: only a loopback probe may skip verification")
        elif self.tls is not None:
            raise ValueError(f"{self.url}: a plain http probe takes no ProbeTLS")

    def describe(self) -> str:
        return f"GET {self.url}"

    def check(self) -> Deferred[Any]:
        # Built here, in the reactor thread: a bad certificate file fails this probe only.
        try:
            exchange = _Exchange(self._connection(), self._path)
        except (OSError, ValueError) as error:
            return fail(error)
        pool = self.reactor.getThreadPool()
        answered: Deferred[Answer] = deferToThreadPool(self.reactor, pool, exchange.run)
        answered.addCallback(judge, self.body_check)
        # deferToThreadPool's Deferred cannot be cancelled; this one can, and then the
        # worker's late outcome (an error from the aborted connection) goes nowhere.
        result: Deferred[Any] = Deferred(canceller=lambda _: exchange.abort())

        def deliver(outcome: object) -> None:
            if not result.called:
                if isinstance(outcome, Failure):
                    result.errback(outcome)
                else:
                    result.callback(outcome)

        answered.addBoth(deliver)
        return result

    def _connection(self) -> http.client.HTTPConnection:
        if self.tls is None:
            return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        return http.client.HTTPSConnection(
            self._host, self._port, timeout=self.timeout, context=self.tls.context()
        )


class _Hangup(WireProtocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


@attrs.frozen
class UnixSocketProbe:
    """A unix socket accepts connections (containerd's API socket, for instance)."""

    reactor: IReactorUNIX
    path: Path

    def describe(self) -> str:
        return f"connect to {self.path}"

    def check(self) -> Deferred[Any]:
        def connect(path: str) -> Deferred[Any]:
            return UNIXClientEndpoint(self.reactor, path).connect(Factory.forProtocol(_Hangup))

        return unixpath.connecting(self.path, connect)
