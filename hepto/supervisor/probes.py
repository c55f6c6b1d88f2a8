"""Readiness probes: is a started program ready to serve?

A probe's ``check()`` returns a Deferred that fires (with anything) when the program is
ready and fails with :class:`ProbeFailed`, or any other error, when it is not.  Probes
neither retry nor time out: the supervisor schedules them and bounds each attempt.
This is the one place hepto polls, because upstream programs offer nothing to wait on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IReactorTCP, IReactorUNIX
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.protocol import Protocol as WireProtocol
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from zope.interface import implementer


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


def _load_certificates(path: Path) -> list[Certificate]:
    """Every certificate of a PEM file, so a CA bundle carrying old and new CAs works."""
    found = x509.load_pem_x509_certificates(path.read_bytes())
    return [Certificate.loadPEM(item.public_bytes(Encoding.PEM)) for item in found]


@implementer(IPolicyForHTTPS)
@attrs.frozen
class ProbeTLS:
    """How a probe speaks TLS: which CA it trusts, which certificate it shows.

    Files are read at every probe, so renewed certificates are picked up.  Without a
    CA the server is not verified, which is only allowed on loopback: the probe then
    learns nothing an attacker on the host could not already read, and sends no secret
    (a TLS client certificate proves possession of its key without revealing it).
    Components that generate their own self-signed serving certificate need this.
    """

    ca: Path | None
    certificate: Path | None = None
    key: Path | None = None

    def __attrs_post_init__(self) -> None:
        if (self.certificate is None) != (self.key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        host = hostname.decode("ascii").strip("[]")
        client: dict[str, Any] = {}
        if self.certificate is not None and self.key is not None:
            # cryptography objects: pyOpenSSL deprecates its own for these.
            client["certificate"] = x509.load_pem_x509_certificate(self.certificate.read_bytes())
            client["privateKey"] = load_pem_private_key(self.key.read_bytes(), password=None)
        if self.ca is None:
            return CertificateOptions(verify=False, **client)
        trust = trustRootFromCertificates(_load_certificates(self.ca))
        return optionsForClientTLS(host, trustRoot=trust, extraCertificateOptions=client)


BodyCheck = Callable[[bytes], str | None]
"""Returns why a 200 response's body does not mean ready, or None when it does."""


@attrs.define
class HTTPProbe:
    """``GET url`` answers 200 (and, with ``body_check``, the expected body)."""

    reactor: IReactorTCP
    url: str
    tls: ProbeTLS | None = None
    body_check: BodyCheck | None = None
    _agent: Agent = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.url.startswith("https:") and self.tls is None:
            raise ValueError(f"{self.url}: an https probe needs its ProbeTLS")
        if self.url.startswith("https:") and self.tls is not None and self.tls.ca is None:
            host = self.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
            if host not in ("[::1]", "127.0.0.1", "localhost"):
                raise ValueError(f"{self.url}: only a loopback probe may skip verification")
        # Not persistent: a probe every few seconds must not pin a connection to the
        # program, which would then count it among its clients for its whole life.
        pool = _QuietPool(self.reactor, persistent=False)
        self._agent = Agent(self.reactor, contextFactory=self.tls or _NoTLS(), pool=pool)

    def describe(self) -> str:
        return f"GET {self.url}"

    def check(self) -> Deferred[Any]:
        requested = self._agent.request(b"GET", self.url.encode("ascii"))
        return requested.addCallback(self._read)

    def _read(self, response: IResponse) -> Deferred[None]:
        body = _BoundedBody()
        response.deliverBody(body)
        return body.done.addCallback(self._judge, response.code)

    def _judge(self, body: bytes, code: int) -> None:
        excerpt = body[:200].decode("utf-8", errors="replace").strip()
        if code != 200:
            raise ProbeFailed(f"HTTP {code}: {excerpt}")
        if self.body_check is not None:
            problem = self.body_check(body)
            if problem is not None:
                raise ProbeFailed(problem)


class _QuietPool(HTTPConnectionPool):
    """A pool whose connections do not log "Starting factory" twice per probe."""

    @staticmethod
    def _factory(*args: Any) -> Any:  # type: ignore[override]
        # HTTPConnectionPool documents _factory as the connection factory it builds.
        factory = HTTPConnectionPool._factory(*args)
        factory.noisy = False
        return factory


class _BoundedBody(WireProtocol):
    """Keeps the first bytes of a response body: a probe reads "ok" or a short JSON."""

    limit = 64 * 1024

    def __init__(self) -> None:
        self.done: Deferred[bytes] = Deferred()
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        room = self.limit - self._size
        if room > 0:
            self._parts.append(data[:room])
            self._size += min(len(data), room)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)


@implementer(IPolicyForHTTPS)
class _NoTLS:
    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        raise ProbeFailed("this probe speaks plain HTTP; https needs a ProbeTLS")


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
        endpoint = UNIXClientEndpoint(self.reactor, str(self.path))
        return endpoint.connect(Factory.forProtocol(_Hangup))
