"""A master backed up, killed, and restored on another host: the node follows it.

Real agents in network namespaces (``--no-contain``): a master and a node; a ConfigMap,
a Secret and a pod on the node; ``hepto backup`` on the master; the master killed and
its directory deleted; ``hepto restore`` into the data directory of another host (its
own namespace and address) and the master started there under the same name, with no
anchor: it rejoins through the members its saved gossip state knows.  The objects are
there, the node is Ready again with the certificates it had (not one file of its PKI
changed), its pod kept running throughout, and a new pod is scheduled onto it.
"""

from __future__ import annotations

import calendar
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from agent import KEY, Agent, program
from cluster import BIN_DIR, READY_TIMEOUT, ClusterTestCase, pod
from images import write_busybox_archive
from netlab import Host, wait_until


class BackupRestoreTests(ClusterTestCase):
    LAB = "hb"
    NODES = 1

    def setUp(self) -> None:
        super().setUp()
        if not (BIN_DIR / "etcdutl").exists():
            self.skipTest(f"needs etcdutl in {BIN_DIR} (tools/build-bundle)")
        self.elsewhere = self.lab.add_host("newmaster")
        self.new_data_dir = Path(tempfile.mkdtemp(prefix="hepto-restored-"))
        if not os.environ.get("HEPTO_KEEP_TEST_DATA"):
            self.addCleanup(shutil.rmtree, self.new_data_dir, ignore_errors=True)
        self.master_host: Host = self.master
        self.master_dir = self.data_dir / self.cluster / "master"

    @property
    def kubeconfig(self) -> Path:
        return self.master_dir / "kubeconfig"

    def kubectl(self, *argv: str, stdin: str | None = None, check: bool = True) -> str:
        done = subprocess.run(
            self.master_host.command(
                [str(BIN_DIR / "kubectl"), "--kubeconfig", str(self.kubeconfig),
                 "--request-timeout=10s", *argv]
            ),
            input=stdin, capture_output=True, text=True,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout.strip()

    def hepto(self, host: Host, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            host.command([program("hepto"), *argv]),
            capture_output=True, text=True, timeout=600,
            env={k: v for k, v in os.environ.items() if not k.startswith("HEPTO_")},
        )  # fmt: skip

    def node_pki(self) -> dict[str, bytes]:
        pki = self.data_dir / self.cluster / "node1" / "pki"
        return {path.name: path.read_bytes() for path in sorted(pki.iterdir()) if path.is_file()}

    def lease_renewed_after(self, moment: float) -> bool:
        renewed = self.kubectl(
            "get", "lease", "-n", "kube-node-lease", "node1", "-o",
            "jsonpath={.spec.renewTime}", check=False,
        )  # fmt: skip
        if not renewed:
            return False
        stamp = renewed.split(".")[0].rstrip("Z")
        return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) > moment

    def test_restore_on_another_host(self) -> None:
        images = self.data_dir / self.cluster / "node1" / "images"
        images.mkdir(parents=True)
        write_busybox_archive(images / "busybox.tar")
        master = self.start(self.master, "--role", "master")
        self.start_node(self.nodes[0])
        wait_until(lambda: self.node_ready("node1"), READY_TIMEOUT, 0.5, "node1 Ready")

        self.kubectl("create", "configmap", "kept", "--from-literal=colour=blue")
        self.kubectl("create", "secret", "generic", "hidden", "--from-literal=word=swordfish")
        self.kubectl("apply", "-f", "-", stdin=json.dumps(pod("steady", "node1")))
        wait_until(lambda: self.pod_running("steady"), READY_TIMEOUT, 0.5, "steady Running")
        started_at = self.pod_started_at("steady")
        certificates = self.node_pki()

        backup = self.data_dir / "master.hepto-backup"
        done = self.hepto(
            self.master, "backup", "--cluster", self.cluster, "--name", "master",
            "--key", KEY, "--data-dir", str(self.data_dir), "--out", str(backup),
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr)
        print(f"\nfigure: hepto backup: {done.stdout.strip()}")

        # The old host is gone: every process of its namespace killed, its link down.
        master.kill()
        self.lab._kill_leftovers(self.master.netns)
        self.master.run(["ip", "link", "set", "eth0", "down"])
        shutil.rmtree(self.master_dir)

        restore_started = time.monotonic()
        done = self.hepto(
            self.elsewhere, "restore", "--cluster", self.cluster, "--name", "master",
            "--key", KEY, "--data-dir", str(self.new_data_dir), "--bin-dir", str(BIN_DIR),
            str(backup),
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr)
        print(f"figure: hepto restore: {done.stdout.strip()} "
              f"(command: {time.monotonic() - restore_started:.2f} s)")  # fmt: skip

        self.master_host = self.elsewhere
        self.master_dir = self.new_data_dir / self.cluster / "master"
        started = time.time()
        started_monotonic = time.monotonic()
        restored = Agent.start(
            ["--cluster", self.cluster, "--name", "master", "--key", KEY, "--no-contain",
             "--ip", str(self.elsewhere.interface), "--bin-dir", str(BIN_DIR),
             "--role", "master"],
            self.new_data_dir,
            prefix=self.elsewhere.command([]),
        )  # fmt: skip
        self.addCleanup(restored.kill)

        wait_until(
            lambda: self.kubectl("get", "configmap", "kept", "-o", "jsonpath={.data.colour}",
                                 check=False) == "blue",
            READY_TIMEOUT, 0.5, "the ConfigMap on the restored master",
        )  # fmt: skip
        print(f"figure: restored master's start to its apiserver serving the ConfigMap: "
              f"{time.monotonic() - started_monotonic:.1f} s")  # fmt: skip
        word = self.kubectl("get", "secret", "hidden", "-o", "jsonpath={.data.word}")
        self.assertEqual(word, "c3dvcmRmaXNo")  # base64 of swordfish
        wait_until(lambda: self.lease_renewed_after(started), READY_TIMEOUT, 1.0,
                   "node1's kubelet renewing its lease with the restored master")  # fmt: skip
        wait_until(lambda: self.node_ready("node1"), READY_TIMEOUT, 0.5, "node1 Ready again")
        print(f"figure: restored master's start to node1 Ready with it: "
              f"{time.monotonic() - started_monotonic:.1f} s")  # fmt: skip

        self.assertEqual(self.node_pki(), certificates, "the node's PKI changed")
        self.assertEqual(self.pod_started_at("steady"), started_at)
        self.assertTrue(self.pod_running("steady"))
        fresh = pod("fresh", "node1")
        del fresh["spec"]["nodeName"]  # through the restored scheduler
        self.kubectl("apply", "-f", "-", stdin=json.dumps(fresh))
        wait_until(lambda: self.pod_running("fresh"), READY_TIMEOUT, 0.5, "fresh Running")
        self.assertEqual(
            self.kubectl("get", "pod", "fresh", "-o", "jsonpath={.spec.nodeName}"), "node1"
        )
        status = self.hepto(
            self.elsewhere, "status", "--cluster", self.cluster, "--name", "master",
            "--data-dir", str(self.new_data_dir), "--json",
        )  # fmt: skip
        self.assertEqual(status.returncode, 0, status.stderr)
        self.assertIn("backup", json.loads(status.stdout))
