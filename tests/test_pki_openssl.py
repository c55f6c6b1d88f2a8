"""Every issued chain, checked by OpenSSL rather than by our own code."""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from agent import free_port
from hepto import plan
from hepto.pki import requests
from hepto.pki.requests import CLIENT, SERVER, CertificateSpec
from test_pki_service import CLUSTER, Lab, scratch

pytestmark = pytest.mark.integration


def openssl(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *argv], capture_output=True, text=True, timeout=60)


class OpenSSLVerifyTests(SynchronousTestCase):
    def setUp(self) -> None:
        if shutil.which("openssl") is None:
            raise SkipTest("needs the openssl program")
        self.lab = Lab(scratch(self), start=time.time())
        self.addCleanup(self.lab.stop)
        self.lab.join("master", "master")
        self.lab.join("node-a", "node")
        # A second master, refused by the others: only its own files are checked here.
        self.lab.join("full", "full")

    def verify(
        self, ca_file: Path, certificate: Path, *options: str
    ) -> subprocess.CompletedProcess[str]:
        return openssl(
            "verify", "-x509_strict", "-CAfile", str(ca_file), *options, str(certificate)
        )

    def assertVerified(self, ca_file: Path, certificate: Path, *options: str) -> None:
        result = self.verify(ca_file, certificate, *options)
        self.assertEqual(
            result.returncode, 0, f"{certificate.name} {options}: {result.stdout}{result.stderr}"
        )
        self.assertIn(": OK", result.stdout)

    def assertRejected(self, ca_file: Path, certificate: Path, *options: str) -> None:
        result = self.verify(ca_file, certificate, *options)
        self.assertNotEqual(result.returncode, 0, f"{certificate.name} {options} verified")

    def check_member(self, name: str) -> int:
        """Verify each certificate of ``name`` for each of its uses and names."""
        service = self.lab.services[name]
        checked = 0
        for spec in service.specs.values():
            certificate = service.paths.certificate(spec.name)
            authority = self.authority_file(name, spec)
            for purpose in self.purposes(spec):
                self.assertVerified(authority, certificate, "-purpose", purpose)
                checked += 1
            for dns_name in spec.dns_names:
                self.assertVerified(authority, certificate, "-verify_hostname", dns_name)
            for address in spec.ip_addresses:
                self.assertVerified(authority, certificate, "-verify_ip", str(address))
            if SERVER in spec.usages:
                self.assertRejected(authority, certificate, "-verify_hostname", "evil.example")
                self.assertRejected(authority, certificate, "-verify_ip", "2001:db8::1")
            if SERVER not in spec.usages:
                self.assertRejected(authority, certificate, "-purpose", "sslserver")
            if CLIENT not in spec.usages:
                self.assertRejected(authority, certificate, "-purpose", "sslclient")
            # The key on disk is the certificate's.
            public_from_key = openssl("pkey", "-in", str(service.paths.key(spec.name)), "-pubout")
            public_from_certificate = openssl("x509", "-in", str(certificate), "-pubkey", "-noout")
            self.assertEqual(public_from_key.returncode, 0, public_from_key.stderr)
            self.assertEqual(public_from_key.stdout, public_from_certificate.stdout)
        return checked

    def authority_file(self, name: str, spec: CertificateSpec) -> Path:
        service = self.lab.services[name]
        if service.is_master:
            return service.paths.authority_certificate(spec.authority)
        return service.paths.trusted_ca

    @staticmethod
    def purposes(spec: CertificateSpec) -> list[str]:
        return [{CLIENT: "sslclient", SERVER: "sslserver"}[usage] for usage in spec.usages]

    def test_every_chain_verifies(self) -> None:
        checked = sum(self.check_member(name) for name in ("master", "node-a", "full"))
        self.assertGreaterEqual(checked, 9 + 2 + 11)

    def test_node_certificates_chain_to_the_master_ca(self) -> None:
        master, node = self.lab.services["master"], self.lab.services["node-a"]
        self.assertEqual(
            master.paths.authority_certificate("kubernetes").read_bytes(),
            node.paths.trusted_ca.read_bytes(),
        )
        serving = node.paths.certificate(requests.KUBELET_SERVING)
        self.assertVerified(
            master.paths.authority_certificate("kubernetes"),
            serving,
            "-verify_ip",
            str(plan.mesh_address(CLUSTER, "node-a")),
        )
        self.assertRejected(
            node.paths.trusted_ca, serving, "-verify_ip", str(plan.mesh_address(CLUSTER, "node-b"))
        )

    def test_wrong_authorities_are_rejected(self) -> None:
        master, full = self.lab.services["master"], self.lab.services["full"]
        apiserver = master.paths.certificate(requests.APISERVER)
        self.assertRejected(master.paths.authority_certificate("etcd"), apiserver)
        self.assertRejected(master.paths.authority_certificate("front-proxy"), apiserver)
        self.assertRejected(full.paths.authority_certificate("kubernetes"), apiserver)
        etcd_client = master.paths.certificate(requests.APISERVER_ETCD_CLIENT)
        self.assertRejected(master.paths.authority_certificate("kubernetes"), etcd_client)

    def test_published_csrs_verify(self) -> None:
        node = self.lab.join("node-b", "node", start=False)
        node.startService()
        requests_published = self.lab.record("node-b").get("pki")["csr"]
        self.assertEqual(
            set(requests_published),
            {requests.KUBELET_CLIENT, requests.KUBELET_SERVING, requests.KUBE_PROXY},
        )
        for name, pem in requests_published.items():
            path = scratch(self) / f"{name}.csr"
            path.write_text(pem)
            result = openssl("req", "-in", str(path), "-verify", "-noout")
            self.assertEqual(result.returncode, 0, f"{name}: {result.stderr}")
            self.assertIn("verify OK", result.stdout + result.stderr)


class MutualTLSTests(SynchronousTestCase):
    """The admin kubeconfig, as a client would use it, against the apiserver certificate
    served by OpenSSL with client certificates required from the cluster CA."""

    def setUp(self) -> None:
        if shutil.which("openssl") is None:
            raise SkipTest("needs the openssl program")
        self.directory = scratch(self)
        self.lab = Lab(self.directory, start=time.time())
        self.addCleanup(self.lab.stop)
        self.master = self.lab.join("master", "master")
        self.node = self.lab.join("node-a", "node")
        self.port = free_port()
        paths = self.master.paths
        server = subprocess.Popen(
            [
                "openssl", "s_server", "-accept", f"[::1]:{self.port}", "-www",
                "-cert", str(paths.certificate(requests.APISERVER)),
                "-key", str(paths.key(requests.APISERVER)),
                "-CAfile", str(paths.trusted_ca),
                "-Verify", "1", "-verify_return_error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.addCleanup(self.stop, server)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("::1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    self.fail("openssl s_server did not start")
                time.sleep(0.05)

    @staticmethod
    def stop(server: subprocess.Popen[bytes]) -> None:
        server.kill()
        server.wait(timeout=30)

    def client_files(self, kubeconfig: Path) -> tuple[Path, Path, Path]:
        """The CA, certificate and key embedded in a kubeconfig, as files."""
        document = yaml.safe_load(kubeconfig.read_text())
        cluster = document["clusters"][0]["cluster"]
        user = document["users"][0]["user"]
        files = []
        for name, data in (
            ("ca.pem", cluster["certificate-authority-data"]),
            ("client.pem", user["client-certificate-data"]),
            ("client.key", user["client-key-data"]),
        ):
            path = self.directory / name
            path.write_bytes(base64.b64decode(data))
            files.append(path)
        return files[0], files[1], files[2]

    def get(self, authority: Path, certificate: Path, key: Path) -> str:
        context = ssl.create_default_context(cafile=str(authority))
        context.load_cert_chain(str(certificate), str(key))
        with (
            socket.create_connection(("::1", self.port), timeout=30) as raw,
            context.wrap_socket(raw, server_hostname="::1") as connection,
        ):
            connection.sendall(b"GET / HTTP/1.0\r\n\r\n")
            chunks = []
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def test_admin_kubeconfig_is_accepted(self) -> None:
        authority, certificate, key = self.client_files(self.master.paths.kubeconfig("admin"))
        page = self.get(authority, certificate, key)
        self.assertTrue(page.startswith("HTTP/1.0 200"), page[:200])
        self.assertIn("CN=hepto-admin", page.replace(" = ", "="))

    def test_kubelet_kubeconfig_is_accepted(self) -> None:
        authority, certificate, key = self.client_files(self.node.paths.kubeconfig("kubelet"))
        page = self.get(authority, certificate, key)
        self.assertIn("system:node:node-a", page)

    def test_serving_certificate_is_no_client(self) -> None:
        paths = self.node.paths
        with self.assertRaises((ssl.SSLError, ConnectionError)):
            self.get(
                paths.trusted_ca,
                paths.certificate(requests.KUBELET_SERVING),
                paths.key(requests.KUBELET_SERVING),
            )
