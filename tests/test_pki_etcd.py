"""A real etcd (Debian's etcd-server) serving with the master's certificates."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from agent import free_port
from hepto.pki.requests import APISERVER_ETCD_CLIENT, ETCD_CA, KUBELET_CLIENT
from test_pki_service import Lab, scratch

pytestmark = pytest.mark.integration

#: Two contended cores: etcd is usually healthy within a second, but leave it a minute.
HEALTHY_TIMEOUT = 60.0


class EtcdTests(SynchronousTestCase):
    def setUp(self) -> None:
        for program in ("etcd", "etcdctl"):
            if shutil.which(program) is None:
                raise SkipTest(f"needs {program} (apt-get install etcd-server etcd-client)")
        self.lab = Lab(scratch(self), start=time.time())
        self.addCleanup(self.lab.stop)
        self.master = self.lab.join("master", "master")
        self.node = self.lab.join("node-a", "node")
        self.client_port = free_port()
        self.endpoint = f"https://[::1]:{self.client_port}"
        self.etcd_ca = self.master.paths.authority_certificate(ETCD_CA)
        self.start_etcd()

    def start_etcd(self) -> None:
        paths = self.master.paths
        files = paths.component_files("etcd")
        peer = f"https://[::1]:{free_port()}"
        data_dir = scratch(self) / "etcd"
        data_dir.mkdir(mode=0o700)
        argv = [
            "etcd",
            "--name", "master",
            "--data-dir", str(data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"master={peer}",
            "--client-cert-auth",
            "--peer-client-cert-auth",
            "--heartbeat-interval", "10",
            "--election-timeout", "100",
        ]  # fmt: skip
        for flag, path in files.items():
            argv += [flag, str(path)]
        self.log_path = scratch(self) / "etcd.log"
        with self.log_path.open("wb") as log:
            process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.addCleanup(self.stop_etcd, process)
        self.process = process

    @staticmethod
    def stop_etcd(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)

    def etcdctl(self, certificate: str | None, *argv: str) -> subprocess.CompletedProcess[str]:
        command = ["etcdctl", "--endpoints", self.endpoint, "--cacert", str(self.etcd_ca)]
        if certificate is not None:
            owner = self.master if certificate != KUBELET_CLIENT else self.node
            command += [
                "--cert", str(owner.paths.certificate(certificate)),
                "--key", str(owner.paths.key(certificate)),
            ]  # fmt: skip
        environment = dict(os.environ, ETCDCTL_API="3")
        return subprocess.run(
            [*command, "--command-timeout", "3s", "--dial-timeout", "3s", *argv],
            capture_output=True,
            text=True,
            env=environment,
            timeout=60,
        )

    def wait_healthy(self) -> float:
        started = time.monotonic()
        while True:
            result = self.etcdctl(APISERVER_ETCD_CLIENT, "endpoint", "health")
            if result.returncode == 0:
                return time.monotonic() - started
            if self.process.poll() is not None:
                self.fail(f"etcd exited: {self.log_path.read_text()[-3000:]}")
            if time.monotonic() - started > HEALTHY_TIMEOUT:
                self.fail(f"etcd never became healthy: {result.stderr}")
            time.sleep(0.2)

    def test_apiserver_client_is_served_and_kubelet_refused(self) -> None:
        self.wait_healthy()
        health = self.etcdctl(APISERVER_ETCD_CLIENT, "endpoint", "health")
        self.assertIn("is healthy", health.stdout + health.stderr)
        put = self.etcdctl(APISERVER_ETCD_CLIENT, "put", "/hepto", "ok")
        self.assertEqual(put.returncode, 0, put.stderr)
        got = self.etcdctl(APISERVER_ETCD_CLIENT, "get", "--print-value-only", "/hepto")
        self.assertEqual(got.stdout.strip(), "ok")
        # A node's kubelet certificate comes from the Kubernetes CA: etcd must refuse it.
        refused = self.etcdctl(KUBELET_CLIENT, "endpoint", "health")
        self.assertNotEqual(refused.returncode, 0, refused.stdout)
        self.assertNotIn("is healthy", refused.stdout)
        refused_get = self.etcdctl(KUBELET_CLIENT, "get", "/hepto")
        self.assertNotEqual(refused_get.returncode, 0)
        self.assertNotIn("ok", refused_get.stdout)
        self.assertIn(
            "failed to verify client certificate: x509: certificate signed by unknown authority",
            self.log_path.read_text(),
        )
        # And so must it refuse a client without any certificate.
        anonymous = self.etcdctl(None, "get", "/hepto")
        self.assertNotEqual(anonymous.returncode, 0)
