"""A minimal HTTP/1.1 responder for scrapes: ``GET /metrics``, one response, then close.

twisted.web would serve it in three lines, but the agent imports none of it otherwise
and it costs resident memory in every agent (``docs/metrics.rst`` has the figure); a
scrape needs one request line, and an answer whose length is known.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from hepto.errors import StartupError
from hepto.metrics.exposition import CONTENT_TYPE

PATH: Final = "/metrics"
#: A scrape's request is a few hundred bytes; anything past this is not one.
MAX_HEAD: Final = 8192
#: Seconds a connection may stay without a complete request.
IDLE_TIMEOUT: Final = 10.0

Scrape = Callable[[], bytes]


class ScrapeProtocol(Protocol, TimeoutMixin):
    """Reads one request head, answers it, closes: Prometheus reconnects for each scrape."""

    def __init__(self, scrape: Scrape, log: Logger) -> None:
        self._scrape = scrape
        self._log = log
        self._head = b""
        self._answered = False

    def connectionMade(self) -> None:
        self.setTimeout(IDLE_TIMEOUT)

    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return  # A body or a pipelined request: neither is answered.
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            end = self._head.find(b"\n\n")  # Bare newlines, as RFC 9112 tolerates.
        if end < 0:
            if len(self._head) > MAX_HEAD:
                self._respond(431, "Request Header Fields Too Large")
            return
        self._answered = True
        self._answer(self._head[:end].split(b"\n", 1)[0].rstrip(b"\r"))

    def _answer(self, line: bytes) -> None:
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._respond(400, "Bad Request")
            return
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target != PATH.encode():
            self._respond(404, "Not Found", f"metrics are at {PATH}\n".encode())
            return
        if method not in (b"GET", b"HEAD"):
            self._respond(405, "Method Not Allowed", extra="Allow: GET, HEAD\r\n")
            return
        try:
            body = self._scrape()
        except Exception:
            self._log.failure("A metrics scrape failed")
            self._respond(500, "Internal Server Error")
            return
        self._respond(200, "OK", body, CONTENT_TYPE, head_only=method == b"HEAD")

    def _respond(
        self,
        code: int,
        reason: str,
        body: bytes = b"",
        content_type: str = "text/plain; charset=utf-8",
        extra: str = "",
        head_only: bool = False,
    ) -> None:
        self._answered = True
        head = (
            f"HTTP/1.1 {code} {reason}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n"
        ).encode("ascii")
        assert self.transport is not None
        self.transport.write(head if head_only else head + body)
        self.setTimeout(None)
        self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]


class _ScrapeFactory(ServerFactory):
    noisy = False

    def __init__(self, scrape: Scrape, log: Logger) -> None:
        self.scrape = scrape
        self.log = log

    def buildProtocol(self, addr: Any) -> ScrapeProtocol:
        return ScrapeProtocol(self.scrape, self.log)


class MetricsService(Service):
    """Listens on ``host``:``port`` (TCP) and answers each scrape with ``scrape()``."""

    log = Logger(namespace="hepto.metrics")

    def __init__(self, reactor: IReactorTCP, host: str, port: int, scrape: Scrape) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.scrape = scrape
        self._listening: IListeningPort | None = None
        self.setName("metrics")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{PATH}"

    def startService(self) -> None:
        try:
            self._listening = self.reactor.listenTCP(
                self.port, _ScrapeFactory(self.scrape, self.log), interface=self.host
            )
        except CannotListenError as error:
            raise StartupError(
                f"--metrics: cannot listen on [{self.host}]:{self.port}: {error.socketError}"
            ) from None
        # The one chosen, if 0 was asked.
        self.port = self._listening.getHost().port  # type: ignore[attr-defined]
        self.log.info("Metrics served at {url}", url=self.url)
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        listening, self._listening = self._listening, None
        if listening is not None:
            return listening.stopListening()
        return None
