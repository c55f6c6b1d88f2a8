"""Nodes run workloads, end to end: a real master and two real nodes with the bundle.

Each agent is ``twistd -n hepto --no-contain`` in its own network namespace on a bridge.
The nodes run containerd and the kubelet under their agents; the test runs pods from a
busybox image made here (no registry), reads their logs and execs into them through the
apiserver, which reaches each kubelet over the WireGuard mesh; it kills the kubelet and
containerd and sees the pod run again, and checks that neither a stop nor a ``kill -9``
of an agent leaves any process of its node behind.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial

import pytest

from agent import program
from cluster import (
    _RECORDER,
    CGROUP_ROOT,
    READY_TIMEOUT,
    ClusterTestCase,
    node_processes,
    pod,
    service,
)
from hepto import plan
from images import BUSYBOX_IMAGE, write_busybox_archive
from netlab import wait_until


class NodeAgentTests(ClusterTestCase):
    LAB = "hn"

    @pytest.mark.timeout(1200)
    def test_nodes_run_pods(self) -> None:
        started = time.monotonic()
        node1 = self.nodes[0]
        # node1 imports the image from its folder at start; node2 through the CLI below.
        images = self.data_dir / self.cluster / "node1" / "images"
        images.mkdir(parents=True)
        write_busybox_archive(images / "busybox.tar")
        archive = self.data_dir / "busybox.tar"
        write_busybox_archive(archive)

        self.start(self.master, "--role", "master")
        for host in self.nodes:
            self.start_node(host)
        self.wait_ready(self.nodes)
        print(f"\nfigure: agents' start to both nodes Ready: {time.monotonic() - started:.1f} s")

        # Unix sockets know no network namespace: any shell of the host will do.
        imported = subprocess.run(
            [program("hepto"), "images", "import", "--cluster", self.cluster, "--name", "node2",
             "--data-dir", str(self.data_dir), str(archive)],
            capture_output=True,
            text=True,
        )  # fmt: skip
        self.assertEqual(imported.returncode, 0, imported.stderr)
        self.assertIn(BUSYBOX_IMAGE, imported.stdout)

        # The Node objects: mesh address inside, public address outside, the role.
        for host in self.nodes:
            node = json.loads(self.kubectl("get", "node", host.name, "-o", "json"))
            addresses = {entry["type"]: entry["address"] for entry in node["status"]["addresses"]}
            self.assertEqual(
                addresses["InternalIP"], str(plan.mesh_address(self.cluster, host.name))
            )
            self.assertEqual(addresses["ExternalIP"], str(host.address))
            self.assertEqual(node["metadata"]["labels"]["hepto/role"], "node")
            taints = {taint["key"] for taint in node["spec"].get("taints", [])}
            self.assertNotIn("node.cloudprovider.kubernetes.io/uninitialized", taints)

        for index, host in enumerate(self.nodes, start=1):
            self.kubectl("apply", "-f", "-", stdin=json.dumps(pod(f"bb{index}", host.name)))
        applied = time.monotonic()
        for name in ("bb1", "bb2"):
            wait_until(partial(self.pod_running, name), 120, 0.2, f"{name} Running")
        print(f"figure: pods applied to both Running: {time.monotonic() - applied:.1f} s")
        for name in ("bb1", "bb2"):
            # logs and exec go from the apiserver to the kubelet, over the mesh.
            wait_until(partial(self.logged, name, "hello from"), 60, 0.5, f"logs of {name}")
            self.assertTrue(self.exec_works(name))
            pod_ip = self.kubectl("get", "pod", name, "-o", "jsonpath={.status.podIP}")
            self.assertIn(pod_ip, self.kubectl("exec", name, "--", "ip", "-6", "addr"))

        # Pods of one node reach each other, and their node, over its pod bridge.
        self.kubectl("apply", "-f", "-", stdin=json.dumps(pod("bb3", "node1")))
        wait_until(partial(self.pod_running, "bb3"), 120, 0.2, "bb3 Running")
        neighbour = self.kubectl("get", "pod", "bb3", "-o", "jsonpath={.status.podIP}")
        for address in (neighbour, str(plan.mesh_address(self.cluster, "node1"))):
            answer = self.kubectl("exec", "bb1", "--", "ping", "-c", "1", "-W", "5", address)
            self.assertIn("1 packets received", answer, address)

        # Pods on different nodes, over the mesh: each node's /64 is its peers' to route.
        far = self.kubectl("get", "pod", "bb2", "-o", "jsonpath={.status.podIP}")
        answer = self.kubectl("exec", "bb1", "--", "ping", "-c", "1", "-W", "5", far)
        self.assertIn("1 packets received", answer)
        # And the apiserver, from a pod's own address (not masqueraded).
        apiserver = str(plan.apiserver_address(self.cluster))
        script = f"nc -w 5 {apiserver} 6443 </dev/null && echo connected"
        self.assertEqual(self.kubectl("exec", "bb2", "--", "sh", "-c", script), "connected")

        # A Service whose backend is on node2, through kube-proxy on node1: from a pod,
        # from node1 itself, and as a NodePort from a host that runs no kube-proxy.
        web = pod("web", "node2", loop="nc -l -p 8080 -e echo hello-web", labels={"app": "web"})
        self.kubectl("apply", "-f", "-", stdin=json.dumps(web))
        self.kubectl("apply", "-f", "-", stdin=json.dumps(service("web", {"app": "web"})))
        cluster_ip = self.kubectl("get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")
        node_port = self.kubectl(
            "get", "service", "web", "-o", "jsonpath={.spec.ports[0].nodePort}"
        )
        self.assertIn(ipaddress.IPv6Address(cluster_ip), plan.service_prefix(self.cluster))
        wait_until(partial(self.pod_running, "web"), 120, 0.2, "web Running")
        from_pod = ["exec", "bb1", "--", "nc", "-w", "5", cluster_ip, "80"]
        wait_until(
            lambda: self.kubectl(*from_pod, check=False) == "hello-web", 60, 0.5, "web from bb1"
        )
        # The kubernetes Service: the apiserver on the master, through kube-proxy.
        kubernetes = str(plan.kubernetes_service_address(self.cluster))
        script = f"nc -w 5 {kubernetes} 443 </dev/null && echo connected"
        answer = self.kubectl("exec", "bb1", "--", "sh", "-c", script)
        self.assertEqual(answer, "connected")
        busybox_nc = ["busybox", "nc", "-w", "5"]
        for client, address, port in (
            (node1, cluster_ip, "80"),
            (node1, str(node1.address), node_port),
            (self.master, str(node1.address), node_port),
        ):
            answer = client.run([*busybox_nc, address, port], check=False).stdout.strip()
            self.assertEqual(answer, "hello-web", f"{client.name} to [{address}]:{port}")

        # The world, from the node's public address (NAT66), not the pod's ULA.
        seen = self.data_dir / "seen-from-outside"
        with seen.open("wb") as out:
            self.outside.spawn([sys.executable, "-c", _RECORDER, "8080"], stdout=out)
        wait_until(partial(self.outside_listens, 8080), 30, 0.1, "the outside's listener")
        script = f"nc -w 5 {self.outside.address} 8080 </dev/null && echo connected"
        self.assertEqual(self.kubectl("exec", "bb1", "--", "sh", "-c", script), "connected")
        wait_until(lambda: seen.read_text().strip(), 10, 0.1, "the outside to see bb1")
        self.assertEqual(seen.read_text().split(), [str(node1.address)])

        # An image nobody has: the pod says so within seconds, nothing hangs.
        self.kubectl(
            "apply", "-f", "-", stdin=json.dumps(pod("nope", "node1", "localhost/no/such:1"))
        )
        wait_until(
            lambda: self.waiting_reason("nope") in ("ErrImagePull", "ImagePullBackOff"),
            60,
            0.5,
            "nope failing to pull",
        )
        events = self.kubectl(
            "get", "events", "--field-selector", "involvedObject.name=nope", "-o",
            "jsonpath={.items[*].message}",
        )  # fmt: skip
        self.assertIn("localhost/no/such:1", events)
        self.kubectl("delete", "pod", "nope", "--wait=false")

        # kill -9 of the kubelet, then of containerd: the supervisor heals both, the pod runs.
        for victim in ("kubelet", "containerd"):
            [pid] = node1.processes_named(victim)
            os.kill(pid, signal.SIGKILL)
            wait_until(partial(self.replaced, node1, victim, pid), 120, 0.2, f"a new {victim}")
            wait_until(partial(self.node_ready, "node1"), 120, 0.5, f"node1 Ready after {victim}")
            wait_until(partial(self.exec_works, "bb1"), 120, 0.5, f"exec into bb1 after {victim}")

        # A stop: exit 0, and nothing of the node left.
        self.assertNotEqual(node_processes(self.cluster, "node1"), {})
        self.assertEqual(self.agents["node1"].stop(), 0)
        self.assertEqual(node_processes(self.cluster, "node1"), {})
        for name in ("containerd", "kubelet", "containerd-shim"):
            self.assertEqual(node1.processes_named(name), set(), name)
        self.assertFalse((CGROUP_ROOT / "freezer/hepto" / self.cluster / "node1").exists())
        self.assertNotIn("hepto", node1.run(["nft", "list", "tables"]).stdout)
        self.assertNotIn("hepto-pods", node1.run(["ip", "-o", "link"]).stdout)
        self.assertFalse(self.run_dir("node1").exists())

        # kill -9 of an agent: its sweeper removes the node all the same.
        self.assertNotEqual(node_processes(self.cluster, "node2"), {})
        self.agents["node2"].kill()
        wait_until(lambda: not node_processes(self.cluster, "node2"), 60, 0.5, "node2 swept")
        wait_until(
            lambda: not (CGROUP_ROOT / "freezer/hepto" / self.cluster / "node2").exists(),
            30,
            0.5,
            "node2's cgroups removed",
        )
        wait_until(lambda: not self.run_dir("node2").exists(), 30, 0.5, "node2's /run removed")

        # A new start: the node is Ready again and its pod runs again.
        before = self.pod_started_at("bb1")
        restarted = time.monotonic()
        self.start_node(node1)
        wait_until(partial(self.node_ready, "node1"), READY_TIMEOUT, 0.5, "node1 Ready again")
        wait_until(
            lambda: self.pod_phase("bb1") == "Running" and self.pod_started_at("bb1") != before,
            120,
            0.5,
            "bb1 running again",
        )
        wait_until(partial(self.exec_works, "bb1"), 60, 0.5, "exec into bb1 again")
        print(f"figure: node1 restarted to bb1 running: {time.monotonic() - restarted:.1f} s")
        self.assertEqual(self.agents["node1"].stop(), 0)
        self.assertEqual(node_processes(self.cluster, "node1"), {})

    @pytest.mark.timeout(600)
    def test_a_full_node_runs_pods_beside_its_control_plane(self) -> None:
        images = self.data_dir / self.cluster / "master" / "images"
        images.mkdir(parents=True)
        write_busybox_archive(images / "busybox.tar")
        agent = self.start(self.master, "--role", "full")
        wait_until(partial(self.node_ready, "master"), READY_TIMEOUT, 0.5, "master Ready")
        node = json.loads(self.kubectl("get", "node", "master", "-o", "json"))
        self.assertEqual(node["metadata"]["labels"]["hepto/role"], "full")
        self.kubectl("apply", "-f", "-", stdin=json.dumps(pod("bb", "master")))
        wait_until(partial(self.pod_running, "bb"), 120, 0.2, "bb Running")
        wait_until(partial(self.exec_works, "bb"), 60, 0.5, "exec into bb")
        self.assertEqual(agent.stop(), 0)
        self.assertEqual(node_processes(self.cluster, "master"), {})
        for name in ("etcd", "kube-apiserver", "containerd", "kubelet", "containerd-shim"):
            self.assertEqual(self.master.processes_named(name), set(), name)
