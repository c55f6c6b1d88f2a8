"""hepto.https: one exchange against a real TLS server on ::1, made in the test.

The server is the standard library's, in a thread; it echoes what it received.
Timeouts and cancellation are exercised through the probes (tests/test_supervisor_probes.py),
which are one exchange each.
"""

from __future__ import annotations

import http.server
import json
import shutil
import ssl
import tempfile
from pathlib import Path
from typing import Any

from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.internet import reactor as _reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hepto.https import ClientTLS, Origin, Request, Response, exchange
from test_supervisor_probes import issue, server_context
from test_supervisor_probes import serve as probes_serve

reactor: Any = _reactor


class Echo(http.server.BaseHTTPRequestHandler):
    """``/status/<n>`` answers n, ``/big/<n>`` n bytes; anything else echoes the request."""

    protocol_version = "HTTP/1.1"

    def handle_one_request(self) -> None:
        self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline or not self.parse_request():
            self.close_connection = True
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        parts = self.path.split("/")
        if parts[1] == "status":
            self.answer(int(parts[2]), b"as asked", {"X-Answer": "yes"})
        elif parts[1] == "big":
            self.answer(200, b"x" * int(parts[2]))
        else:
            peer = (
                self.connection.getpeercert() if hasattr(self.connection, "getpeercert") else None
            )
            subject = dict(pair[0] for pair in peer["subject"]) if peer else {}
            echoed = {
                "method": self.command,
                "path": self.path,
                "headers": {key.lower(): value for key, value in self.headers.items()},
                "body": body.decode(),
                "client": subject.get("commonName"),
            }
            self.answer(200, json.dumps(echoed).encode())
        self.close_connection = True

    def answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(test: SynchronousTestCase, context: ssl.SSLContext | None) -> int:
    return probes_serve(test, context, Echo)


class ExchangeTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hx-https-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        ca = issue("ca")
        self.ca_path, _ = ca.write(self.dir, "ca")
        served = issue("server", ca, ips=("::1",), usage=(ExtendedKeyUsageOID.SERVER_AUTH,))
        client = issue("the-client", ca, usage=(ExtendedKeyUsageOID.CLIENT_AUTH,))
        self.client_paths = client.write(self.dir, "client")
        port = serve(self, server_context(self.dir, served, client_ca=self.ca_path))
        self.origin = Origin("https", "::1", port, ClientTLS(self.ca_path, *self.client_paths))

    def send(self, request: Request, limit: int = 64 * 1024) -> Any:
        return exchange(reactor, self.origin, request, limit=limit)

    @inlineCallbacks
    def test_a_body_and_headers_go_out(self) -> Any:
        request = Request("POST", "/things?x=1", b'{"a": 1}', {"Content-Type": "text/x-test"})
        response = yield self.send(request)
        self.assertEqual(response.status, 200)
        echoed = json.loads(response.body)
        self.assertEqual(echoed["method"], "POST")
        self.assertEqual(echoed["path"], "/things?x=1")
        self.assertEqual(echoed["body"], '{"a": 1}')
        self.assertEqual(echoed["headers"]["content-type"], "text/x-test")
        self.assertEqual(echoed["headers"]["content-length"], "8")
        self.assertEqual(echoed["headers"]["connection"], "close")

    @inlineCallbacks
    def test_any_method(self) -> Any:
        for method in ("GET", "PATCH", "PUT", "DELETE"):
            response = yield self.send(Request(method, "/echo", b"" if method != "GET" else None))
            self.assertEqual(json.loads(response.body)["method"], method)

    @inlineCallbacks
    def test_the_server_sees_our_certificate(self) -> Any:
        response = yield self.send(Request("GET", "/echo"))
        self.assertEqual(json.loads(response.body)["client"], "the-client")

    @inlineCallbacks
    def test_any_status_is_an_answer_with_its_headers(self) -> Any:
        response = yield self.send(Request("GET", "/status/404"))
        self.assertEqual((response.status, response.body), (404, b"as asked"))
        self.assertEqual(response.header("x-answer"), "yes")
        self.assertEqual(response.header("X-ANSWER"), "yes")
        self.assertIsNone(response.header("x-absent"))

    @inlineCallbacks
    def test_the_body_is_bounded_by_the_callers_limit(self) -> Any:
        response = yield self.send(Request("GET", "/big/100"), limit=10)
        self.assertEqual((response.body, response.truncated), (b"x" * 10, True))
        response = yield self.send(Request("GET", "/big/100"), limit=100)
        self.assertEqual((len(response.body), response.truncated), (100, False))
        response = yield self.send(Request("GET", "/big/100"), limit=99)
        self.assertEqual((len(response.body), response.truncated), (99, True))

    @inlineCallbacks
    def test_a_missing_certificate_file_fails_the_deferred(self) -> Any:
        tls = ClientTLS(self.ca_path, self.dir / "absent.crt", self.client_paths[1])
        origin = Origin("https", "::1", self.origin.port, tls)
        answered = exchange(reactor, origin, Request("GET", "/echo"), limit=10)
        yield self.assertFailure(answered, FileNotFoundError)


class OriginTests(SynchronousTestCase):
    def test_split(self) -> None:
        tls = ClientTLS(Path("/ca"))
        self.assertEqual(
            Origin.split("https://[fd00::1]:6443/readyz?verbose", tls),
            (Origin("https", "fd00::1", 6443, tls), "/readyz?verbose"),
        )
        self.assertEqual(Origin.split("http://localhost"), (Origin("http", "localhost", 80), "/"))
        self.assertEqual(Origin.split("https://[::1]", tls)[0].port, 443)

    def test_url(self) -> None:
        self.assertEqual(
            Origin("https", "fd00::1", 6443, ClientTLS(Path("/ca"))).url("/api"),
            "https://[fd00::1]:6443/api",
        )
        self.assertEqual(Origin("http", "127.0.0.1", 80).url(), "http://127.0.0.1:80")

    def test_refusals(self) -> None:
        self.assertRaises(ValueError, Origin, "https", "fd00::1", 443)
        self.assertRaises(ValueError, Origin, "http", "::1", 80, ClientTLS(None))
        self.assertRaises(ValueError, Origin, "ftp", "::1", 21)
        error = self.assertRaises(ValueError, Origin, "https", "fd00::1", 443, ClientTLS(None))
        self.assertEqual(
            str(error), "https://[fd00::1]:443: only a loopback server may go unverified"
        )
        self.assertRaises(ValueError, Origin.split, "/healthz")

    def test_request_headers_are_frozen(self) -> None:
        request = Request("GET", "/", headers={"Accept": "application/json"})
        self.assertEqual(request.headers, (("Accept", "application/json"),))
        self.assertEqual(hash(request), hash(Request("GET", "/", None, request.headers)))

    def test_response_defaults(self) -> None:
        self.assertEqual(Response(200, b"ok"), Response(200, b"ok", (), False))
