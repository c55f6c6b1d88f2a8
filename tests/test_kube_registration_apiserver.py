"""A node registers its own Node with a real kube-apiserver (Node authorization and
NodeRestriction), as its agent will before the kubelet starts.

The master runs as in tests/test_kube_master.py, with its driver, in a network namespace
of its own.  Node ``n1``'s kubelet client certificate (``system:node:n1`` in
``system:nodes``) is issued by the master's CA from the PKI's own spec.  The agent's
client runs in a child process inside the namespace, where the apiserver address is;
it reports every request it made, so "nothing changed" means "no write was sent".
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

import netlab
from hepto import plan
from hepto.pki import ca, keys, signer, store
from hepto.pki.paths import Paths
from hepto.pki.specs import KUBELET_CLIENT, KUBERNETES_CA, kubelet_specs
from hepto.programs import MissingProgram, find_programs
from test_kube_master import _DRIVER, BIN_DIR, Lines

PROGRAMS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
CLUSTER, MASTER = "hkregister", "hkmaster"
PUBLIC, MOVED = "2001:db8:1::101", "2001:db8:1::102"
#: A child that has not finished by then is retrying what it should have given up on.
CLIENT_TIMEOUT = 60.0

_CLIENT = textwrap.dedent(
    """
    import ipaddress, json, sys
    from pathlib import Path
    from twisted.internet import reactor
    from twisted.python.failure import Failure
    from hepto import plan
    from hepto.kube.api import APIClient
    from hepto.kube.registration import desired_node, register_node
    from hepto.pki.paths import Paths

    node_dir, cluster, mode, *args = sys.argv[1:]
    client = APIClient.for_node(reactor, cluster, Paths(Path(node_dir)))
    calls = []

    class Recording:
        def get(self, path):
            calls.append(["GET", path])
            return client.get(path)

        def create(self, path, body):
            calls.append(["POST", path])
            return client.create(path, body)

        def merge_patch(self, path, patch):
            calls.append(["PATCH", path])
            return client.merge_patch(path, patch)

    def run():
        if mode == "register":
            name, role, public = args
            address = None if public == "-" else ipaddress.IPv6Address(public)
            node = desired_node(name, role, plan.mesh_address(cluster, name), address)
            return register_node(Recording(), node, clock=reactor)
        method, path, body = args
        return client.request(method, path, json.loads(body), content_type=(
            "application/merge-patch+json" if method == "PATCH" else "application/json"
        ))

    def report(outcome):
        failed = outcome.value if isinstance(outcome, Failure) else None
        print(json.dumps({
            "calls": calls,
            "error": None if failed is None else str(failed),
            "error_type": None if failed is None else type(failed).__name__,
        }), flush=True)
        reactor.stop()

    reactor.callWhenRunning(lambda: run().addBoth(report))
    reactor.run()
    """
)


def issue_kubelet_client(master_dir: Path, node_dir: Path, name: str) -> None:
    """What the master's PKI signs for node ``name``: its kubelet client certificate."""
    now = datetime.datetime.now(datetime.UTC)
    master, paths = Paths(master_dir), Paths(node_dir)
    authority = ca.load_authority(master.authority_dir, KUBERNETES_CA, now)
    [spec] = [spec for spec in kubelet_specs(CLUSTER, name) if spec.name == KUBELET_CLIENT]
    key = keys.generate_key()
    certificate = signer.issue(authority, key.public_key(), spec, now)
    keys.ensure_directory(paths.pki_dir)
    keys.write_private_key(paths.key(KUBELET_CLIENT), key)
    keys.write_public(
        paths.certificate(KUBELET_CLIENT), store.certificate_pem(certificate).encode()
    )
    keys.write_public(paths.trusted_ca, master.trusted_ca.read_bytes())


class RegistrationTests(SynchronousTestCase):
    def setUp(self) -> None:
        missing = netlab.missing_requirements()
        if missing:
            self.skipTest(missing)
        try:
            self.programs = find_programs(PROGRAMS, BIN_DIR, path="")
        except MissingProgram as error:
            self.skipTest(str(error))
        self.lab = netlab.Lab("hr")
        self.addCleanup(self.lab.close)
        self.host = self.lab.add_host("m")
        for address in (plan.mesh_address(CLUSTER, MASTER), plan.apiserver_address(CLUSTER)):
            self.host.run(["ip", "addr", "add", f"{address}/128", "dev", "eth0", "nodad"])
        self.data = Path(tempfile.mkdtemp(prefix="hr-register-"))
        self.addCleanup(shutil.rmtree, self.data, ignore_errors=True)
        self.master_dir = self.data / CLUSTER / MASTER
        self.n1_dir = self.data / "n1-agent"

    def start_master(self) -> Lines:
        argv = [sys.executable, "-c", _DRIVER, str(self.data), str(BIN_DIR), CLUSTER, MASTER]
        master = self.host.spawn(
            [*argv, str(self.host.interface)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert master.stdout is not None
        return Lines(master.stdout)

    def client(self, mode: str, *args: str) -> dict[str, Any]:
        argv = [sys.executable, "-c", _CLIENT, str(self.n1_dir), CLUSTER, mode, *args]
        done = subprocess.run(
            self.host.command(argv), capture_output=True, text=True, timeout=CLIENT_TIMEOUT
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        report["log"] = done.stdout
        return report

    def register(self, name: str, role: str, public: str) -> dict[str, Any]:
        return self.client("register", name, role, public)

    def node(self, name: str) -> dict[str, Any]:
        argv = [str(self.programs["kubectl"]), "--kubeconfig", str(self.master_dir / "kubeconfig")]
        done = self.host.run([*argv, "get", "node", name, "-o", "json"], check=False)
        self.assertEqual(done.returncode, 0, done.stderr)
        found: dict[str, Any] = json.loads(done.stdout)
        return found

    def test_a_node_registers_itself_and_no_other(self) -> None:
        output = self.start_master()
        output.wait_for(r"HK-READY")
        issue_kubelet_client(self.master_dir, self.n1_dir, "n1")
        mesh = str(plan.mesh_address(CLUSTER, "n1"))

        started = time.monotonic()
        first = self.register("n1", "node", PUBLIC)
        took = time.monotonic() - started
        self.assertIsNone(first["error"], first["log"])
        self.assertEqual(first["calls"], [["GET", "/api/v1/nodes/n1"], ["POST", "/api/v1/nodes"]])
        node = self.node("n1")
        labels = node["metadata"]["labels"]
        self.assertEqual(labels["hepto/role"], "node")
        self.assertEqual(labels["kubernetes.io/hostname"], "n1")
        self.assertEqual(labels["kubernetes.io/os"], "linux")
        self.assertIn(labels["kubernetes.io/arch"], ("amd64", "arm64"))
        # The status given at creation is kept, whole and in order.
        self.assertEqual(
            node["status"]["addresses"],
            [
                {"type": "InternalIP", "address": mesh},
                {"type": "ExternalIP", "address": PUBLIC},
                {"type": "Hostname", "address": "n1"},
            ],
        )
        taints = [taint["key"] for taint in node["spec"].get("taints", [])]
        self.assertNotIn("node.cloudprovider.kubernetes.io/uninitialized", taints)

        again = self.register("n1", "node", PUBLIC)
        self.assertIsNone(again["error"], again["log"])
        self.assertEqual(again["calls"], [["GET", "/api/v1/nodes/n1"]], "no write when it matches")

        moved = self.register("n1", "full", MOVED)
        self.assertIsNone(moved["error"], moved["log"])
        self.assertEqual(
            moved["calls"],
            [
                ["GET", "/api/v1/nodes/n1"],
                ["PATCH", "/api/v1/nodes/n1"],
                ["PATCH", "/api/v1/nodes/n1/status"],
            ],
        )
        node = self.node("n1")
        self.assertEqual(node["metadata"]["labels"]["hepto/role"], "full")
        self.assertEqual(node["status"]["addresses"][1], {"type": "ExternalIP", "address": MOVED})

        # Another node's Node: refused at once (Node authorization), not retried.
        started = time.monotonic()
        other = self.register("n2", "node", PUBLIC)
        self.assertEqual(other["error_type"], "RegistrationFailed", other["log"])
        self.assertEqual(other["calls"], [["GET", "/api/v1/nodes/n2"]])
        self.assertIn(
            "node n2 cannot be registered: GET /api/v1/nodes/n2: HTTP 403", other["error"]
        )
        self.assertIn("node 'n1' cannot read 'n2', only its own Node object", other["error"])
        self.assertNotIn("not registered yet", other["log"])
        print(
            f"\nregistered in {took:.2f} s (a child process, imports included); "
            f"refused in {time.monotonic() - started:.2f} s",
            file=sys.stderr,
        )

        # What NodeRestriction itself refuses a node: another's Node, labels outside the
        # node's own set, its taints.
        refused = self.client(
            "request",
            "POST",
            "/api/v1/nodes",
            json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"}}),
        )
        self.assertIn(
            'HTTP 403 Forbidden: nodes "n2" is forbidden: node "n1" is not allowed '
            'to modify node "n2"',
            refused["error"],
        )
        label = {"metadata": {"labels": {"node-role.kubernetes.io/worker": ""}}}
        refused = self.client("request", "PATCH", "/api/v1/nodes/n1", json.dumps(label))
        self.assertIn(
            "is not allowed to modify labels: node-role.kubernetes.io/worker", refused["error"]
        )
        allowed = {"metadata": {"labels": {"node.kubernetes.io/x": "1", "example.org/y": "2"}}}
        accepted = self.client("request", "PATCH", "/api/v1/nodes/n1", json.dumps(allowed))
        self.assertIsNone(accepted["error"])
        taint = {"spec": {"taints": [{"key": "x", "effect": "NoSchedule"}]}}
        refused = self.client("request", "PATCH", "/api/v1/nodes/n1", json.dumps(taint))
        self.assertIn('node "n1" is not allowed to modify taints', refused["error"])
