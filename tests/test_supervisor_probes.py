"""Readiness probes against real servers on ::1: HTTPS with client certificates, unix sockets.

The servers are the standard library's, in threads: the probes must not need pyOpenSSL,
and neither must their tests.
"""

from __future__ import annotations

import configparser
import datetime
import http.server
import importlib.metadata
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from twisted.internet import reactor as _reactor
from twisted.internet.defer import CancelledError, inlineCallbacks
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hepto.supervisor import HTTPProbe, ProbeFailed, ProbeTLS, UnixSocketProbe
from hepto.supervisor.probes import Answer, judge

reactor: Any = _reactor


@attrs.frozen
class Issued:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        cert = directory / f"{name}.crt"
        key = directory / f"{name}.key"
        cert.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert, key


def issue(
    name: str,
    issuer: Issued | None = None,
    ips: tuple[str, ...] = (),
    usage: tuple[x509.ObjectIdentifier, ...] = (),
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if ips:
        names = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


class Pages(http.server.BaseHTTPRequestHandler):
    """``/readyz`` is ok, ``/health`` is etcd's JSON, anything else is not ready."""

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/readyz":
            self.answer(200, b"ok")
        elif path == "/health":
            healthy = "false" if "healthy=false" in query else "true"
            self.answer(200, json.dumps({"health": healthy, "reason": ""}).encode())
        else:
            self.answer(503, b"[-]etcd failed: not ready\nreadyz check failed")

    def answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a refused handshake is what some tests want


def serve(
    test: SynchronousTestCase,
    context: ssl.SSLContext | None,
    handler: type[http.server.BaseHTTPRequestHandler] | None = None,
) -> int:
    """An HTTP(S) server on ::1 in a thread, until the test ends; its port."""
    server = _Server(("::1", 0), handler or Pages)
    if context is not None:
        # The handshake happens in the request's thread, not in the accepting one.
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    test.addCleanup(thread.join, 10)
    test.addCleanup(server.server_close)
    test.addCleanup(server.shutdown)
    return int(server.server_address[1])


def server_context(
    directory: Path, served: Issued, client_ca: Path | None = None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert, key = served.write(directory, f"served-{id(served)}")
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=client_ca)
    return context


def etcd_health(body: bytes) -> str | None:
    health = json.loads(body).get("health")
    return None if health == "true" else f"etcd says health={health}"


class HTTPProbeTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hx-probes-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.ca = issue("ca")
        self.ca_path, _ = self.ca.write(self.dir, "ca")
        self.other_ca_path, _ = issue("other").write(self.dir, "other")
        server = issue("server", self.ca, ips=("::1",), usage=(ExtendedKeyUsageOID.SERVER_AUTH,))
        self.client = issue("client", self.ca, usage=(ExtendedKeyUsageOID.CLIENT_AUTH,))
        self.client_paths = self.client.write(self.dir, "client")
        self.port = serve(self, server_context(self.dir, server, client_ca=self.ca_path))

    def url(self, path: str, port: int | None = None) -> str:
        return f"https://[::1]:{port or self.port}{path}"

    def probe(self, path: str, tls: ProbeTLS | None = None, **kwargs: Any) -> HTTPProbe:
        if tls is None:
            tls = ProbeTLS(self.ca_path, *self.client_paths)
        return HTTPProbe(reactor, self.url(path), tls, **kwargs)

    @inlineCallbacks
    def test_verified_with_a_client_certificate(self) -> Any:
        yield self.probe("/readyz").check()

    @inlineCallbacks
    def test_unready_answer(self) -> Any:
        error = yield self.assertFailure(self.probe("/unready").check(), ProbeFailed)
        self.assertIn("HTTP 503: [-]etcd failed", str(error))

    @inlineCallbacks
    def test_body_check(self) -> Any:
        yield self.probe("/health", body_check=etcd_health).check()
        probe = self.probe("/health?healthy=false", body_check=etcd_health)
        error = yield self.assertFailure(probe.check(), ProbeFailed)
        self.assertEqual(str(error), "etcd says health=false")

    @inlineCallbacks
    def test_a_server_from_another_ca_is_refused(self) -> Any:
        tls = ProbeTLS(self.other_ca_path, *self.client_paths)
        error = yield self.assertFailure(
            self.probe("/readyz", tls).check(), ssl.SSLCertVerificationError
        )
        self.assertIn("certificate verify failed", str(error))

    @inlineCallbacks
    def test_files_are_read_at_every_probe(self) -> Any:
        trusted = self.dir / "trusted.crt"
        shutil.copy(self.other_ca_path, trusted)
        probe = self.probe("/readyz", ProbeTLS(trusted, *self.client_paths))
        yield self.assertFailure(probe.check(), ssl.SSLCertVerificationError)
        # A CA bundle holding both, as during a rotation: the same probe now passes.
        trusted.write_bytes(self.other_ca_path.read_bytes() + self.ca_path.read_bytes())
        yield probe.check()

    @inlineCallbacks
    def test_an_unreadable_file_fails_the_probe(self) -> Any:
        probe = self.probe("/readyz", ProbeTLS(self.dir / "absent.crt", *self.client_paths))
        yield self.assertFailure(probe.check(), FileNotFoundError)

    @inlineCallbacks
    def test_the_server_must_show_our_address(self) -> Any:
        wrong = issue("server", self.ca, ips=("::2",), usage=(ExtendedKeyUsageOID.SERVER_AUTH,))
        port = serve(self, server_context(self.dir, wrong))
        url = self.url("/readyz", port)
        error = yield self.assertFailure(
            HTTPProbe(reactor, url, ProbeTLS(self.ca_path)).check(),
            ssl.SSLCertVerificationError,
        )
        self.assertIn("IP address mismatch", str(error))
        # The same server passes for a client that does not verify: the address was the issue.
        yield HTTPProbe(reactor, url, ProbeTLS(None)).check()

    @inlineCallbacks
    def test_no_client_certificate_is_refused_by_the_server(self) -> Any:
        # TLS 1.3 reports the refusal after the handshake: an alert, or a reset.
        yield self.assertFailure(self.probe("/readyz", ProbeTLS(self.ca_path)).check(), OSError)

    @inlineCallbacks
    def test_unverified_on_loopback(self) -> Any:
        yield self.probe("/readyz", ProbeTLS(None, *self.client_paths)).check()

    @inlineCallbacks
    def test_plain_http(self) -> Any:
        port = serve(self, None)
        yield HTTPProbe(reactor, f"http://[::1]:{port}/readyz").check()

    @inlineCallbacks
    def test_nobody_listening(self) -> Any:
        with socket.socket(socket.AF_INET6) as closed:
            closed.bind(("::1", 0))
            port = closed.getsockname()[1]
        probe = HTTPProbe(reactor, f"http://[::1]:{port}/readyz")
        yield self.assertFailure(probe.check(), ConnectionRefusedError)


class SilentServerTests(TestCase):
    """A server that accepts and never answers: the probe's worker thread must not hang."""

    timeout = 60

    def setUp(self) -> None:
        self.listener = socket.socket(socket.AF_INET6)
        self.addCleanup(self.listener.close)
        self.listener.bind(("::1", 0))
        self.listener.listen()
        self.url = f"http://[::1]:{self.listener.getsockname()[1]}/readyz"
        self.hung_up = threading.Event()
        thread = threading.Thread(target=self._hold, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 30)

    def _hold(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            connection.settimeout(30)
            try:
                while connection.recv(4096):
                    pass  # the request, then nothing more until the client hangs up
            except OSError:
                return
            self.hung_up.set()

    @inlineCallbacks
    def test_each_step_is_bounded(self) -> Any:
        probe = HTTPProbe(reactor, self.url, timeout=0.5)
        yield self.assertFailure(probe.check(), TimeoutError)

    @inlineCallbacks
    def test_cancelling_hangs_up_at_once(self) -> Any:
        probe = HTTPProbe(reactor, self.url, timeout=30)
        probing = probe.check()
        # Once connected (the request is on its way), cancel as the supervisor's timeout does.
        yield deferLater(reactor, 0.5, lambda: None)
        probing.cancel()
        yield self.assertFailure(probing, CancelledError)
        # Far sooner than the probe's own 30 s: the worker was woken, not left to time out.
        hung_up = yield deferLater(reactor, 0, self.hung_up.wait, 10)
        self.assertTrue(hung_up, "the probe kept its connection after being cancelled")


class JudgeTests(SynchronousTestCase):
    def test_ok(self) -> None:
        judge(Answer(200, b"ok"))

    def test_status(self) -> None:
        error = self.assertRaises(ProbeFailed, judge, Answer(500, b"  boom\n" + b"x" * 500))
        self.assertEqual(str(error), "HTTP 500: boom\n" + "x" * 193)

    def test_body_check(self) -> None:
        error = self.assertRaises(ProbeFailed, judge, Answer(200, b"{}"), lambda body: "no")
        self.assertEqual(str(error), "no")
        judge(Answer(200, b"{}"), lambda body: None)

    def test_undecodable_body(self) -> None:
        error = self.assertRaises(ProbeFailed, judge, Answer(503, b"\xff\xfe"))
        self.assertIn("HTTP 503", str(error))


class ProbeConfigurationTests(SynchronousTestCase):
    def test_unverified_only_on_loopback(self) -> None:
        error = self.assertRaises(
            ValueError, HTTPProbe, reactor, "https://[fd00::1]:6443/readyz", ProbeTLS(None)
        )
        self.assertIn("only a loopback server may go unverified", str(error))
        HTTPProbe(reactor, "https://[::1]:10257/healthz", ProbeTLS(None))
        HTTPProbe(reactor, "https://127.0.0.1:10257/healthz", ProbeTLS(None))
        HTTPProbe(reactor, "https://localhost:10257/healthz", ProbeTLS(None))
        self.assertRaises(ValueError, HTTPProbe, reactor, "https://[::2]:1/", ProbeTLS(None))
        self.assertRaises(ValueError, HTTPProbe, reactor, "https://example.org/", ProbeTLS(None))

    def test_https_needs_tls_settings(self) -> None:
        self.assertRaises(ValueError, HTTPProbe, reactor, "https://[::1]:6443/readyz")

    def test_plain_http_takes_no_tls_settings(self) -> None:
        self.assertRaises(
            ValueError, HTTPProbe, reactor, "http://[::1]:2381/health", ProbeTLS(Path("/ca"))
        )

    def test_not_a_url(self) -> None:
        self.assertRaises(ValueError, HTTPProbe, reactor, "ftp://[::1]/")
        self.assertRaises(ValueError, HTTPProbe, reactor, "/healthz")

    def test_certificate_and_key_go_together(self) -> None:
        self.assertRaises(ValueError, ProbeTLS, Path("/ca"), Path("/cert"), None)

    def test_describe(self) -> None:
        probe = HTTPProbe(reactor, "http://[::1]:2381/health")
        self.assertEqual(probe.describe(), "GET http://[::1]:2381/health")


class UnixSocketProbeTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hx-probes-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.path = self.dir / "containerd.sock"

    @inlineCallbacks
    def test_listening(self) -> Any:
        port = reactor.listenUNIX(str(self.path), Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        yield UnixSocketProbe(reactor, self.path).check()

    @inlineCallbacks
    def test_absent(self) -> Any:
        probe = UnixSocketProbe(reactor, self.path)
        yield self.assertFailure(probe.check(), ConnectError)
        self.assertEqual(probe.describe(), f"connect to {self.path}")


_IMPORT_THE_AGENT = textwrap.dedent(
    """
    import sys
    import twisted.internet.reactor
    import twisted.plugins.hepto_plugin
    import hepto.cli, hepto.manhole, hepto.node, hepto.tap
    import hepto.supervisor.probes
    import hepto.kube.api, hepto.kube.registration
    print(",".join(sorted(name for name in sys.modules if name.split(".")[0] == "OpenSSL")))
    """
)

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"


def requirements_of(requirement: Requirement, seen: set[str]) -> set[str]:
    """Every distribution ``requirement`` brings, as installed here, by normalized name."""
    name = canonicalize_name(requirement.name)
    wanted: set[str] = {name}
    key = f"{name}{sorted(requirement.extras)}"
    if key in seen:
        return wanted
    seen.add(key)
    try:
        declared = importlib.metadata.requires(requirement.name) or []
    except importlib.metadata.PackageNotFoundError:
        return wanted
    for line in declared:
        needed = Requirement(line)
        extras = requirement.extras or {""}
        if needed.marker is None or any(needed.marker.evaluate({"extra": e}) for e in extras):
            wanted |= requirements_of(needed, seen)
    return wanted


class NoPyOpenSSLTests(SynchronousTestCase):
    """pyOpenSSL costs every agent ~13 MB resident (docs/memory.rst): hepto never needs it.

    Twisted imports it from ``twisted.internet.tcp`` whenever it is importable, so it
    must not be installed at all: neither required by hepto nor by its dependencies
    (``twisted[tls]`` and treq would bring it back).
    """

    def test_the_agent_imports_no_openssl(self) -> None:
        done = subprocess.run(
            [sys.executable, "-c", _IMPORT_THE_AGENT],
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.strip(), "", "imported by the agent")

    def test_no_requirement_brings_pyopenssl(self) -> None:
        setup = configparser.ConfigParser()
        setup.read(SETUP_CFG)
        lines = setup["options"]["install_requires"].split("\n")
        brought: set[str] = set()
        for line in filter(None, (line.strip() for line in lines)):
            brought |= requirements_of(Requirement(line), set())
        self.assertIn("twisted", brought)  # the walk does see the installed metadata
        self.assertNotIn("pyopenssl", brought)

    def test_the_walk_sees_extras(self) -> None:
        """What the test above relies on: Twisted's ``tls`` extra does need pyOpenSSL."""
        self.assertIn("pyopenssl", requirements_of(Requirement("twisted[tls]"), set()))
        self.assertNotIn("pyopenssl", requirements_of(Requirement("twisted[conch]"), set()))
