"""hepto.kube.api: what the client sends, and how it reads answers and errors.

Requests go to the echoing TLS server of tests/test_https.py; the apiserver's own
answers (its ``Status`` objects) are decoded as plain values.  The real apiserver is in
tests/test_kube_registration.py.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.internet import reactor as _reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hepto import plan
from hepto.https import ClientTLS, Origin, Response
from hepto.kube.api import APIClient, APIError, BadResponse, decode
from hepto.pki.paths import Paths
from test_https import serve
from test_supervisor_probes import issue, server_context

reactor: Any = _reactor

FORBIDDEN = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": 'nodes "n2" is forbidden: node "n1" is not allowed to modify node "n2"',
    "reason": "Forbidden",
    "details": {"name": "n2", "kind": "nodes"},
    "code": 403,
}


def answer(status: int, body: Any, truncated: bool = False) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Response(status, raw, (("Content-Type", "application/json"),), truncated)


class DecodeTests(SynchronousTestCase):
    def test_an_object(self) -> None:
        self.assertEqual(decode("GET", "/x", answer(200, {"kind": "Node"})), {"kind": "Node"})
        self.assertEqual(decode("POST", "/x", answer(201, {"kind": "Node"})), {"kind": "Node"})

    def test_the_apiservers_status(self) -> None:
        error = self.assertRaises(APIError, decode, "POST", "/api/v1/nodes", answer(403, FORBIDDEN))
        self.assertEqual(
            (error.method, error.path, error.status, error.reason),
            ("POST", "/api/v1/nodes", 403, "Forbidden"),
        )
        self.assertEqual(error.message, FORBIDDEN["message"])
        self.assertEqual(
            str(error),
            'POST /api/v1/nodes: HTTP 403 Forbidden: nodes "n2" is forbidden: '
            'node "n1" is not allowed to modify node "n2"',
        )
        self.assertFalse(error.transient)

    def test_an_error_without_status(self) -> None:
        error = self.assertRaises(APIError, decode, "GET", "/x", answer(502, b"  bad gateway\n"))
        self.assertEqual(str(error), "GET /x: HTTP 502 Bad Gateway: bad gateway")
        self.assertTrue(error.transient)
        error = self.assertRaises(APIError, decode, "GET", "/x", answer(599, b"\xff" * 300))
        self.assertEqual(error.reason, "(unknown status)")
        self.assertEqual(len(error.message), 200)
        # JSON, but not a Status: the body is the message.
        error = self.assertRaises(APIError, decode, "GET", "/x", answer(500, [1]))
        self.assertEqual(str(error), "GET /x: HTTP 500 Internal Server Error: [1]")

    def test_transient(self) -> None:
        def status(code: int) -> APIError:
            return APIError("GET", "/", code, "", "")

        self.assertEqual(
            [
                code
                for code in (400, 401, 403, 404, 409, 422, 429, 500, 503)
                if status(code).transient
            ],
            [429, 500, 503],
        )

    def test_a_success_that_is_not_an_object(self) -> None:
        error = self.assertRaises(BadResponse, decode, "GET", "/x", answer(200, [1, 2]))
        self.assertEqual(str(error), "GET /x: answer is a JSON list")
        error = self.assertRaises(BadResponse, decode, "GET", "/x", answer(200, b"hello"))
        self.assertIn("GET /x: answer is not JSON", str(error))

    def test_a_truncated_answer(self) -> None:
        response = answer(200, b'{"kind": "No', truncated=True)
        error = self.assertRaises(BadResponse, decode, "GET", "/x", response)
        self.assertEqual(str(error), "GET /x: answer longer than 12 bytes")
        # An error status says what it can, even cut short.
        self.assertRaises(APIError, decode, "GET", "/x", answer(500, b"x", truncated=True))


class ForNodeTests(SynchronousTestCase):
    def test_the_clusters_apiserver_as_the_kubelet(self) -> None:
        paths = Paths(Path("/var/lib/hepto/c1/n1"))
        client = APIClient.for_node(reactor, "c1", paths)
        self.assertEqual(client.origin.scheme, "https")
        self.assertEqual(client.origin.host, str(plan.apiserver_address("c1")))
        self.assertEqual(client.origin.port, 6443)
        self.assertEqual(
            client.origin.tls,
            ClientTLS(
                paths.trusted_ca,
                paths.pki_dir / "kubelet-client.crt",
                paths.pki_dir / "kubelet-client.key",
            ),
        )

    def test_another_certificate(self) -> None:
        paths = Paths(Path("/n"))
        tls = APIClient.for_node(reactor, "c1", paths, "admin").origin.tls
        assert tls is not None
        self.assertEqual(tls.certificate, paths.pki_dir / "admin.crt")


class ClientTests(TestCase):
    """What goes out: method, path, JSON and its content type; what comes back."""

    timeout = 60

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hx-api-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        ca = issue("ca")
        ca_path, _ = ca.write(self.dir, "ca")
        served = issue("server", ca, ips=("::1",), usage=(ExtendedKeyUsageOID.SERVER_AUTH,))
        client = issue("system:node:n1", ca, usage=(ExtendedKeyUsageOID.CLIENT_AUTH,))
        port = serve(self, server_context(self.dir, served, client_ca=ca_path))
        tls = ClientTLS(ca_path, *client.write(self.dir, "client"))
        self.client = APIClient(reactor, Origin("https", "::1", port, tls))

    @inlineCallbacks
    def test_get(self) -> Any:
        echoed = yield self.client.get("/api/v1/nodes/n1")
        self.assertEqual((echoed["method"], echoed["path"]), ("GET", "/api/v1/nodes/n1"))
        self.assertEqual(echoed["headers"]["accept"], "application/json")
        self.assertNotIn("content-type", echoed["headers"])
        self.assertEqual(echoed["client"], "system:node:n1")

    @inlineCallbacks
    def test_create(self) -> Any:
        echoed = yield self.client.create("/api/v1/nodes", {"kind": "Node", "é": [1]})
        self.assertEqual((echoed["method"], echoed["path"]), ("POST", "/api/v1/nodes"))
        self.assertEqual(echoed["headers"]["content-type"], "application/json")
        self.assertEqual(json.loads(echoed["body"]), {"kind": "Node", "é": [1]})

    @inlineCallbacks
    def test_merge_patch(self) -> Any:
        patch = {"metadata": {"labels": {"a": "b"}}}
        echoed = yield self.client.merge_patch("/api/v1/nodes/n1/status", patch)
        self.assertEqual(echoed["method"], "PATCH")
        self.assertEqual(echoed["headers"]["content-type"], "application/merge-patch+json")
        self.assertEqual(json.loads(echoed["body"]), patch)

    @inlineCallbacks
    def test_an_error_status(self) -> Any:
        error = yield self.assertFailure(self.client.get("/status/503"), APIError)
        self.assertEqual(str(error), "GET /status/503: HTTP 503 Service Unavailable: as asked")

    @inlineCallbacks
    def test_an_answer_beyond_the_limit(self) -> Any:
        client = APIClient(reactor, self.client.origin, limit=10)
        error = yield self.assertFailure(client.get("/big/11"), BadResponse)
        self.assertEqual(str(error), "GET /big/11: answer longer than 10 bytes")
