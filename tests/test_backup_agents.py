"""A master backed up, killed, and restored on another host: the nodes follow it.

Real agents in network namespaces (``--no-contain``): a master and two nodes; a
namespace, a ConfigMap, a Secret and a Deployment whose pods run on the nodes; the
master's periodic backups (every few seconds here); ``hepto backup`` on the master; the
master killed with everything of its host, and its directory deleted; ``hepto restore``
into the data directory of another host (its own namespace and address) and the master
started there under the same name, with no anchor: it rejoins through the members its
saved gossip state knows.  The objects are there, the nodes are Ready again with the
certificates they had (not one file of their PKI changed), the Deployment's pods kept
running throughout, and a new pod is scheduled.
"""

from __future__ import annotations

import base64
import calendar
import json
import os
import shutil
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from agent import KEY, Agent, program
from cluster import BIN_DIR, READY_TIMEOUT, ClusterTestCase, pod
from images import write_busybox_archive
from netlab import Host, wait_until

NODE_NAMES = ("node1", "node2")
#: ConfigMaps of 2 KiB to add before the backup, for the figures of docs/backup.rst
#: (``HEPTO_BACKUP_CONFIGMAPS=10000``); none by default.
CONFIGMAPS = int(os.environ.get("HEPTO_BACKUP_CONFIGMAPS", "0"))


class BackupRestoreTests(ClusterTestCase):
    LAB = "hb"
    NODES = 2

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
        # GNU time says how much memory the command took, for the figures.
        timed = ["/usr/bin/time", "-f", "maxrss %M KiB"] if Path("/usr/bin/time").exists() else []
        return subprocess.run(
            host.command([*timed, program("hepto"), *argv]),
            capture_output=True, text=True, timeout=600,
            env={k: v for k, v in os.environ.items() if not k.startswith("HEPTO_")},
        )  # fmt: skip

    def nodes_pki(self) -> dict[str, bytes]:
        """Every file of every node's PKI: certificates, keys, kubeconfigs, the pinned CA."""
        files: dict[str, bytes] = {}
        for node in NODE_NAMES:
            pki = self.data_dir / self.cluster / node / "pki"
            files |= {f"{node}/{path.name}": path.read_bytes() for path in pki.iterdir()
                      if path.is_file()}  # fmt: skip
        return files

    def deployment_pods(self) -> dict[str, str]:
        """The Deployment's running pods: name, node and when its container started."""
        out = self.kubectl(
            "get", "pods", "-n", "shop", "-l", "app=steady", "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} "
            "{.status.containerStatuses[0].state.running.startedAt}{\"\\n\"}{end}",
            check=False,
        )  # fmt: skip
        pods = {}
        for line in out.splitlines():
            fields = line.split()
            if len(fields) == 3:
                pods[fields[0]] = f"{fields[1]} {fields[2]}"
        return pods

    def lease_renewed_after(self, node: str, moment: float) -> bool:
        renewed = self.kubectl(
            "get", "lease", "-n", "kube-node-lease", node, "-o",
            "jsonpath={.spec.renewTime}", check=False,
        )  # fmt: skip
        if not renewed:
            return False
        stamp = renewed.split(".")[0].rstrip("Z")
        return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) > moment

    # Two nodes and a master from nothing, then a restore: minutes on a loaded machine.
    @pytest.mark.timeout(1200)
    def test_restore_on_another_host(self) -> None:
        for node in NODE_NAMES:
            images = self.data_dir / self.cluster / node / "images"
            images.mkdir(parents=True)
            write_busybox_archive(images / "busybox.tar")
        # A backup every 7.2 s: the periodic backups run for real, child and all.
        master = self.start(self.master, "--role", "master", "--backup-interval", "0.002",
                            "--backup-keep", "2")  # fmt: skip
        for host in self.nodes:
            self.start_node(host)
        for name in NODE_NAMES:
            wait_until(partial(self.node_ready, name), READY_TIMEOUT, 0.5, f"{name} Ready")

        self.kubectl("create", "namespace", "shop")
        self.kubectl("create", "-n", "shop", "configmap", "kept", "--from-literal=colour=blue")
        if CONFIGMAPS:
            self.add_configmaps(CONFIGMAPS)
        self.kubectl("create", "-n", "shop", "secret", "generic", "hidden",
                     "--from-literal=word=swordfish")  # fmt: skip
        template = pod("steady", "any", labels={"app": "steady"})
        del template["spec"]["nodeName"]
        deployment = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "steady", "namespace": "shop"},
            "spec": {
                "replicas": 2, "selector": {"matchLabels": {"app": "steady"}},
                "template": {"metadata": template["metadata"], "spec": template["spec"]},
            },
        }  # fmt: skip
        self.kubectl("apply", "-f", "-", stdin=json.dumps(deployment))
        wait_until(lambda: len(self.deployment_pods()) == 2, READY_TIMEOUT, 0.5,
                   "the Deployment's two pods Running")  # fmt: skip
        pods = self.deployment_pods()
        certificates = self.nodes_pki()
        periodic = wait_until(lambda: self.backup_status(self.master, self.data_dir)["last"],
                              120, 0.5, "a periodic backup")  # fmt: skip
        self.assertTrue(Path(periodic["path"]).exists())

        backup = self.data_dir / "master.hepto-backup"
        done = self.hepto(
            self.master, "backup", "--cluster", self.cluster, "--name", "master",
            "--data-dir", str(self.data_dir), "--out", str(backup),
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr)
        print(f"\nfigure: hepto backup: {done.stdout.strip()}, {done.stderr.strip()}")
        self.assertLessEqual(len(list((self.master_dir / "backups").iterdir())), 2)

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
        print(f"figure: hepto restore: {done.stdout.strip()}, {done.stderr.strip()} "
              f"(command: {time.monotonic() - restore_started:.2f} s)")  # fmt: skip

        self.master_host = self.elsewhere
        self.master_dir = self.new_data_dir / self.cluster / "master"
        started = time.time()
        started_monotonic = time.monotonic()
        restored = Agent.start(
            ["--cluster", self.cluster, "--name", "master", "--key", KEY,
             *self.where(self.elsewhere), "--bin-dir", str(BIN_DIR), "--role", "master"],
            self.new_data_dir,
            prefix=self.elsewhere.command([]),
        )  # fmt: skip
        self.addCleanup(restored.kill)

        wait_until(
            lambda: self.kubectl("get", "-n", "shop", "configmap", "kept", "-o",
                                 "jsonpath={.data.colour}", check=False) == "blue",
            READY_TIMEOUT, 0.5, "the ConfigMap on the restored master",
        )  # fmt: skip
        print(f"figure: restored master's start to its apiserver serving the ConfigMap: "
              f"{time.monotonic() - started_monotonic:.1f} s")  # fmt: skip
        word = self.kubectl("get", "-n", "shop", "secret", "hidden", "-o",
                            "jsonpath={.data.word}")  # fmt: skip
        self.assertEqual(word, "c3dvcmRmaXNo")  # base64 of swordfish
        if CONFIGMAPS:
            names = self.kubectl("get", "configmaps", "-n", "bulk", "-o", "name").splitlines()
            self.assertEqual(len(names), CONFIGMAPS + 1)  # kube-root-ca.crt too
        for name in NODE_NAMES:
            wait_until(partial(self.lease_renewed_after, name, started), READY_TIMEOUT, 0.5,
                       f"{name}'s kubelet renewing its lease with the restored master")  # fmt: skip
            wait_until(partial(self.node_ready, name), READY_TIMEOUT, 0.5, f"{name} Ready again")
        print(f"figure: restored master's start to both nodes Ready with it: "
              f"{time.monotonic() - started_monotonic:.1f} s")  # fmt: skip

        self.assertEqual(self.nodes_pki(), certificates, "a node's PKI changed")
        self.assertEqual(self.deployment_pods(), pods, "the Deployment's pods changed")
        fresh = pod("fresh", "any")
        del fresh["spec"]["nodeName"]  # through the restored scheduler
        self.kubectl("apply", "-f", "-", stdin=json.dumps(fresh))
        wait_until(lambda: self.pod_running("fresh"), READY_TIMEOUT, 0.5, "fresh Running")
        self.assertIn(self.kubectl("get", "pod", "fresh", "-o", "jsonpath={.spec.nodeName}"),
                      ("node1", "node2"))  # fmt: skip
        self.assertEqual(self.deployment_pods(), pods, "the Deployment's pods changed")
        # The restored master backs up too (the default: its first in 12 hours).
        self.assertIsNone(self.backup_status(self.elsewhere, self.new_data_dir)["last"])

    def where(self, host: Host) -> list[str]:
        """How an agent of this test case runs on ``host``: contained or not."""
        if self.CONTAINED:
            return ["--iface", "eth0"]
        return ["--no-contain", "--ip", str(host.interface)]

    def add_configmaps(self, count: int) -> None:
        self.kubectl("create", "namespace", "bulk")
        started = time.monotonic()
        for first in range(0, count, 1000):
            batch = {
                "apiVersion": "v1", "kind": "List",
                "items": [
                    {"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": f"bulk-{index}", "namespace": "bulk"},
                     "data": {"payload": base64.b64encode(os.urandom(1536)).decode()}}
                    for index in range(first, min(first + 1000, count))
                ],
            }  # fmt: skip
            self.kubectl("create", "-f", "-", "-o", "name", stdin=json.dumps(batch))
        print(
            f"\nfigure: {count} ConfigMaps of 2 KiB created in {time.monotonic() - started:.0f} s"
        )

    def backup_status(self, host: Host, data_dir: Path) -> dict[str, Any]:
        status = self.hepto(
            host, "status", "--cluster", self.cluster, "--name", "master",
            "--data-dir", str(data_dir), "--json",
        )  # fmt: skip
        if status.returncode != 0:
            return {"last": None}
        backup: dict[str, Any] = json.loads(status.stdout).get("backup", {"last": None})
        return backup


class ContainedBackupRestoreTests(BackupRestoreTests):
    """The same, every agent contained (the default of ``twistd hepto``): ``hepto backup``
    from the host reaches the etcd of a master whose loopback is its container's."""

    CONTAINED = True

    def start_node(self, host: Host) -> Agent:
        # Members meet at the master's container's address, not its host's.
        record = self.data_dir / self.cluster / "master" / "container" / "container.json"
        wait_until(record.exists, 60, 0.2, "the master's container")
        address = json.loads(record.read_text())["address"]
        return self.start(host, "--role", "node", "--anchor", address)
