"""One HTTP(S) exchange with the standard library, in the reactor's thread pool.

The agent speaks HTTPS to its own children (readiness probes) and to the apiserver (its
Node).  It does so with :mod:`ssl` and :mod:`http.client` in a worker thread rather than
with Twisted's TLS, which needs pyOpenSSL: importing that costs every agent about 13 MB
of resident memory, while :mod:`ssl` is loaded anyway (``asyncio`` imports it; see
``docs/memory.rst``).  The agent makes few requests, each on a connection of its own,
so a blocking exchange in a thread costs nothing that matters.

:func:`exchange` returns a Deferred that can be cancelled: the connection is shut down
and the worker thread freed at once, whatever step it was blocked in.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure


@attrs.frozen
class ClientTLS:
    """How a client speaks TLS: which CA it trusts, which certificate it shows.

    Files are read at every exchange, so renewed certificates are picked up; a CA file
    may hold several certificates (old and new CAs during a rotation).  Without a CA the
    server is not verified, which :class:`Origin` allows on loopback only: the client
    then learns nothing an attacker on the host could not already read, and sends no
    secret (a TLS client certificate proves possession of its key without revealing
    it).  Components that generate their own self-signed serving certificate need this.
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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@attrs.frozen
class Origin:
    """Where requests go (scheme, host, port) and, for https, how TLS is spoken there."""

    scheme: str
    host: str
    port: int
    tls: ClientTLS | None = None

    def __attrs_post_init__(self) -> None:
        if self.scheme == "https":
            if self.tls is None:
                raise ValueError(f"{self.url()}: https needs its ClientTLS")
            if self.tls.ca is None and not is_loopback(self.host):
                raise ValueError(f"{self.url()}: only a loopback server may go unverified")
        elif self.scheme == "http":
            if self.tls is not None:
                raise ValueError(f"{self.url()}: plain http takes no ClientTLS")
        else:
            raise ValueError(f"{self.url()}: not http or https")

    @classmethod
    def split(cls, url: str, tls: ClientTLS | None = None) -> tuple[Origin, str]:
        """The origin of ``url`` and the path (with its query) to ask it for."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url}: not an http or https URL")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path or "/"
        if parts.query:
            path += f"?{parts.query}"
        return cls(parts.scheme, parts.hostname, port, tls), path

    def url(self, path: str = "") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{path}"

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        """A connection not yet made; reads the TLS files, so it may raise OSError."""
        if self.tls is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        return http.client.HTTPSConnection(
            self.host, self.port, timeout=timeout, context=self.tls.context()
        )


def _headers(
    value: Mapping[str, str] | Iterable[tuple[str, str]],
) -> tuple[tuple[str, str], ...]:
    return tuple(dict(value).items())


@attrs.frozen
class Request:
    method: str
    path: str
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_headers)


@attrs.frozen
class Response:
    """What a server said: its status, its headers and the start of its body.

    ``truncated`` says that the body went on beyond the caller's limit, unread.
    """

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    truncated: bool = False

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, whatever its case, or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


@attrs.define
class _Exchange:
    """One request in a worker thread; ``abort`` (from any thread) unblocks it."""

    connection: http.client.HTTPConnection
    request: Request
    limit: int
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _aborted: bool = False

    def run(self) -> Response:
        try:
            self.connection.connect()
            with self._lock:
                if self._aborted:
                    raise ConnectionAbortedError("cancelled")
            request = self.request
            headers = {"Connection": "close", **dict(request.headers)}
            self.connection.request(request.method, request.path, request.body, headers)
            response = self.connection.getresponse()
            # One byte more than wanted tells a body of exactly ``limit`` from a longer one.
            body = response.read(self.limit + 1)
            return Response(
                response.status,
                body[: self.limit],
                tuple(response.getheaders()),
                truncated=len(body) > self.limit,
            )
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


def exchange(
    reactor: IReactorThreads,
    origin: Origin,
    request: Request,
    *,
    limit: int,
    timeout: float = 5.0,
) -> Deferred[Response]:
    """Sends ``request`` to ``origin`` and reads at most ``limit`` bytes of the answer.

    ``timeout`` bounds each blocking step (connect, handshake, each read) in the worker
    thread, which nothing else could interrupt; cancelling the Deferred shuts the
    connection down and frees the thread at once.  Any status is an answer: failures
    are those of the exchange itself (OSError, ssl.SSLError, http.client's errors).
    """
    # Made here, in the reactor thread: a bad certificate file fails this exchange only.
    try:
        worker = _Exchange(origin.connection(timeout), request, limit)
    except (OSError, ValueError) as error:
        return fail(error)
    answered = deferToThreadPool(reactor, reactor.getThreadPool(), worker.run)
    # deferToThreadPool's Deferred cannot be cancelled; this one can, and then the
    # worker's late outcome (an error from the aborted connection) goes nowhere.
    result: Deferred[Response] = Deferred(canceller=lambda _: worker.abort())

    def deliver(outcome: Response | Failure) -> None:
        if not result.called:
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)

    answered.addBoth(deliver)
    return result
