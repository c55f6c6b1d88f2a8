"""A real master agent, end to end: ``twistd -n hepto --role master`` with the bundle.

Gossip, PKI, mesh and the control plane all run for real: the master's agent makes its
CAs and certificates, brings up its WireGuard interface with the mesh and apiserver
addresses, and supervises etcd, kube-apiserver, kube-controller-manager and
kube-scheduler; a node agent joins and reaches the apiserver through the mesh.
"""

from __future__ import annotations

import os
import signal
import time
from functools import partial
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from agent import KEY, Agent
from hepto.programs import BUNDLE_BIN_DIR
from netlab import Host, Lab, missing_requirements, wait_until

BIN_DIR = Path(os.environ.get("HEPTO_TEST_BIN_DIR", BUNDLE_BIN_DIR))
CLUSTER = "mastertest"
#: Two contended cores: a cold apiserver has been seen to take a minute.
READY_TIMEOUT = 300.0


class MasterAgentTests(SynchronousTestCase):
    def setUp(self) -> None:
        why = missing_requirements("wireguard-go", "setpriv")
        if why is None and not (BIN_DIR / "kube-apiserver").exists():
            why = f"needs the bundle in {BIN_DIR} (tools/build-bundle)"
        if why:
            self.skipTest(why)
        self.lab = Lab("ha")
        self.addCleanup(self.lab.close)
        self.master = self.lab.add_host("master")
        self.node = self.lab.add_host("node")

    def start(self, host: Host, *argv: str) -> Agent:
        agent = Agent.start(
            ["--cluster", CLUSTER, "--name", host.name, "--key", KEY, "--no-contain",
             "--ip", str(host.interface), "--bin-dir", str(BIN_DIR), *argv],
            prefix=host.command([]),
        )  # fmt: skip
        self.addCleanup(agent.kill)
        return agent

    def kubectl(self, host: Host, kubeconfig: Path, *argv: str) -> str:
        result = host.run(
            [
                str(BIN_DIR / "kubectl"),
                "--kubeconfig",
                str(kubeconfig),
                "--request-timeout=5s",
                *argv,
            ],
            check=False,
        )
        return result.stdout.strip()

    def ready(self, host: Host, kubeconfig: Path) -> bool:
        return (
            kubeconfig.exists()
            and self.kubectl(host, kubeconfig, "get", "--raw", "/readyz") == "ok"
        )

    def test_master_serves_and_survives_an_apiserver_kill(self) -> None:
        started = time.monotonic()
        master = self.start(self.master, "--role", "master")
        node = self.start(self.node, "--components", "none", "--anchor", str(self.master.address))
        kubeconfig = master.data_dir / CLUSTER / "master" / "kubeconfig"

        wait_until(partial(self.ready, self.master, kubeconfig), READY_TIMEOUT, 0.5, "/readyz")
        print(f"\nfigure: twistd start to /readyz ok: {time.monotonic() - started:.1f} s")
        # Through the mesh, from another host, at the address derived from the cluster name.
        wait_until(partial(self.ready, self.node, kubeconfig), 120, 0.5, "/readyz via the mesh")

        self.assertIn(
            "created",
            self.kubectl(
                self.master, kubeconfig, "create", "configmap", "survivor", "--from-literal=k=v"
            ),
        )
        [apiserver] = self.master.processes_named("kube-apiserver")
        killed = time.monotonic()
        os.kill(apiserver, signal.SIGKILL)
        wait_until(lambda: self.master.processes_named("kube-apiserver") - {apiserver}, 120,
                   what="a new kube-apiserver")  # fmt: skip
        wait_until(
            partial(self.ready, self.master, kubeconfig), READY_TIMEOUT, 0.5, "/readyz again"
        )
        print(f"figure: kill -9 of kube-apiserver to /readyz ok: {time.monotonic() - killed:.1f} s")
        self.assertTrue(master.logged("kube-apiserver"))
        self.assertEqual(
            self.kubectl(self.master, kubeconfig, "get", "configmap", "survivor",
                         "-o", "jsonpath={.data.k}"),
            "v",
        )  # fmt: skip

        self.assertEqual(node.stop(), 0)
        self.assertEqual(master.stop(), 0)
        for program in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                        "wireguard-go"):  # fmt: skip
            self.assertEqual(self.master.processes_named(program), set(), program)
