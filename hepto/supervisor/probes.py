"""Readiness probes: is a started program ready to serve?

A probe's ``check()`` returns a Deferred that fires (with anything) when the program is
ready and fails with :class:`ProbeFailed`, or any other error, when it is not.  Probes
do not retry: the supervisor schedules them and bounds each attempt.  This is the one
place hepto polls, because upstream programs offer nothing to wait on.

HTTP(S) probes are one :func:`hepto.https.exchange` each: the standard library's
:mod:`ssl` and :mod:`http.client` in the reactor's thread pool, not pyOpenSSL.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IReactorUNIX
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as WireProtocol

from hepto import unixpath
from hepto.https import ClientTLS, Origin, Request, Response, exchange

#: A probe reads "ok" or a short JSON document; anything beyond this is not read.
BODY_LIMIT: Final = 64 * 1024

#: The supervisor's names for what a probe shows the server, and what it hears back.
ProbeTLS = ClientTLS
Answer = Response


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


BodyCheck = Callable[[bytes], str | None]
"""Returns why a 200 response's body does not mean ready, or None when it does."""


def judge(answer: Response, body_check: BodyCheck | None = None) -> None:
    """Raises ProbeFailed unless the answer means ready."""
    if answer.status != 200:
        excerpt = answer.body[:200].decode("utf-8", errors="replace").strip()
        raise ProbeFailed(f"HTTP {answer.status}: {excerpt}")
    if body_check is not None:
        problem = body_check(answer.body)
        if problem is not None:
            raise ProbeFailed(problem)


@attrs.define
class HTTPProbe:
    """``GET url`` answers 200 (and, with ``body_check``, the expected body).

    ``reactor`` provides ``getThreadPool`` and ``callFromThread``.  ``timeout`` bounds
    each blocking step of the request in its worker thread, which the supervisor's own
    time limit cannot interrupt; cancelling the Deferred, as that limit does, shuts the
    connection down and frees the thread at once.
    """

    reactor: Any
    url: str
    tls: ClientTLS | None = None
    body_check: BodyCheck | None = None
    timeout: float = 5.0
    _origin: Origin = attrs.field(init=False)
    _path: str = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._origin, self._path = Origin.split(self.url, self.tls)

    def describe(self) -> str:
        return f"GET {self.url}"

    def check(self) -> Deferred[Any]:
        answered = exchange(
            self.reactor,
            self._origin,
            Request("GET", self._path),
            limit=BODY_LIMIT,
            timeout=self.timeout,
        )
        return answered.addCallback(judge, self.body_check)


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
