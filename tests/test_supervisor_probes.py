"""Readiness probes against real servers on ::1: HTTPS with client certificates, unix sockets."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import reactor as _reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, CertificateOptions
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from hepto.supervisor import HTTPProbe, ProbeFailed, ProbeTLS, UnixSocketProbe

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


class Pages(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        path = request.path
        if path == b"/readyz":
            return b"ok"
        if path == b"/health":
            healthy = request.args.get(b"healthy", [b"true"])[0].decode()
            return json.dumps({"health": healthy, "reason": ""}).encode()
        request.setResponseCode(503)
        return b"[-]etcd failed: not ready\nreadyz check failed"


def etcd_health(body: bytes) -> str | None:
    health = json.loads(body).get("health")
    return None if health == "true" else f"etcd says health={health}"


class HTTPProbeTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hk-probes-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.ca = issue("ca")
        self.ca_path, _ = self.ca.write(self.dir, "ca")
        self.other_ca_path, _ = issue("other").write(self.dir, "other")
        server = issue("server", self.ca, ips=("::1",), usage=(ExtendedKeyUsageOID.SERVER_AUTH,))
        self.client = issue("client", self.ca, usage=(ExtendedKeyUsageOID.CLIENT_AUTH,))
        self.client_paths = self.client.write(self.dir, "client")
        options = CertificateOptions(
            privateKey=_openssl_key(server),
            certificate=_openssl_cert(server),
            verify=True,
            caCerts=[_openssl_ca(self.ca)],
            requireCertificate=True,
        )
        self.port = reactor.listenSSL(0, Site(Pages()), options, interface="::1")
        self.addCleanup(self.port.stopListening)

    def url(self, path: str) -> str:
        return f"https://[::1]:{self.port.getHost().port}{path}"

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
        yield self.assertFailure(self.probe("/readyz", tls).check(), Exception)

    @inlineCallbacks
    def test_the_server_must_show_our_address(self) -> Any:
        wrong = issue("server", self.ca, ips=("::2",), usage=(ExtendedKeyUsageOID.SERVER_AUTH,))
        options = CertificateOptions(
            privateKey=_openssl_key(wrong), certificate=_openssl_cert(wrong)
        )
        port = reactor.listenSSL(0, Site(Pages()), options, interface="::1")
        self.addCleanup(port.stopListening)
        url = f"https://[::1]:{port.getHost().port}/readyz"
        probe = HTTPProbe(reactor, url, ProbeTLS(self.ca_path))
        yield self.assertFailure(probe.check(), Exception)
        # The same server passes for a client that does not verify: the address was the issue.
        yield HTTPProbe(reactor, url, ProbeTLS(None)).check()

    @inlineCallbacks
    def test_no_client_certificate_is_refused_by_the_server(self) -> Any:
        yield self.assertFailure(self.probe("/readyz", ProbeTLS(self.ca_path)).check(), Exception)

    @inlineCallbacks
    def test_unverified_on_loopback(self) -> Any:
        yield self.probe("/readyz", ProbeTLS(None, *self.client_paths)).check()

    @inlineCallbacks
    def test_nobody_listening(self) -> Any:
        port = self.port.getHost().port
        yield self.port.stopListening()
        probe = HTTPProbe(reactor, f"http://[::1]:{port}/readyz")
        yield self.assertFailure(probe.check(), ConnectError)


class ProbeConfigurationTests(SynchronousTestCase):
    def test_unverified_only_on_loopback(self) -> None:
        error = self.assertRaises(
            ValueError, HTTPProbe, reactor, "https://[fd00::1]:6443/readyz", ProbeTLS(None)
        )
        self.assertIn("only a loopback probe may skip verification", str(error))
        HTTPProbe(reactor, "https://[::1]:10257/healthz", ProbeTLS(None))

    def test_https_needs_tls_settings(self) -> None:
        self.assertRaises(ValueError, HTTPProbe, reactor, "https://[::1]:6443/readyz")

    def test_certificate_and_key_go_together(self) -> None:
        self.assertRaises(ValueError, ProbeTLS, Path("/ca"), Path("/cert"), None)

    def test_describe(self) -> None:
        probe = HTTPProbe(reactor, "http://[::1]:2381/health")
        self.assertEqual(probe.describe(), "GET http://[::1]:2381/health")


class UnixSocketProbeTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hk-probes-"))
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


def _openssl_key(issued: Issued) -> Any:
    return issued.key


def _openssl_cert(issued: Issued) -> Any:
    return issued.certificate


def _openssl_ca(issued: Issued) -> Any:
    # A trust store still takes pyOpenSSL's own certificates.
    pem = issued.certificate.public_bytes(serialization.Encoding.PEM)
    return Certificate.loadPEM(pem).original
