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
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

from agent import KEY, Agent, program
from hepto import plan
from hepto.programs import BUNDLE_BIN_DIR
from images import BUSYBOX_IMAGE, write_busybox_archive
from netlab import Host, Lab, missing_requirements, wait_until

BIN_DIR = Path(os.environ.get("HEPTO_TEST_BIN_DIR", BUNDLE_BIN_DIR))
#: Each test its own cluster name, hence its own cgroups (``/hepto/<cluster>/<node>``):
#: a run beside this one, or the sweeper of an agent a previous test killed, never meets
#: it.
CLUSTER = f"nodetest-{secrets.token_hex(3)}"
#: Two contended cores running a master and two nodes.
READY_TIMEOUT = 300.0
CGROUP_ROOT = Path("/sys/fs/cgroup")


#: Prints the address of every TCP client, one a line.
_RECORDER = """
import socket, sys
server = socket.socket(socket.AF_INET6)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("::", int(sys.argv[1])))
server.listen()
while True:
    client, address = server.accept()
    print(address[0], flush=True)
    client.close()
"""


def pod(
    name: str,
    node: str,
    image: str = BUSYBOX_IMAGE,
    loop: str = "sleep 1",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A busybox pod that says hello, then runs ``loop`` forever; SIGTERM ends it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "command": [
                        "sh",
                        "-c",
                        "trap 'exit 0' TERM; echo hello from $(hostname);"
                        f" while true; do {loop}; done",
                    ],
                }
            ],
        },
    }


def service(name: str, selector: dict[str, str]) -> dict[str, Any]:
    """Port 80 of a ClusterIP (and a NodePort) to port 8080 of the pods selected."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "type": "NodePort",
            "selector": selector,
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    }


def node_processes(cluster: str, name: str) -> dict[int, str]:
    """Every process in the node's cgroups, by pid, with its command name."""
    found = {}
    cgroup = f"/hepto/{cluster}/{name}"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            lines = (entry / "cgroup").read_text().splitlines()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        paths = {line.split(":", 2)[2] for line in lines if line.count(":") >= 2}
        if any(path == cgroup or path.startswith(f"{cgroup}/") for path in paths):
            found[int(entry.name)] = comm
    return found


class NodeAgentTests(SynchronousTestCase):
    def setUp(self) -> None:
        why = missing_requirements("wireguard-go", "setpriv", "runc")
        if why is None and not (BIN_DIR / "kubelet").exists():
            why = f"needs the bundle in {BIN_DIR} (tools/build-bundle)"
        if why is None and not (CGROUP_ROOT / "freezer").is_dir():
            why = "needs cgroup v1 hierarchies at /sys/fs/cgroup (this test reads the freezer)"
        if why:
            self.skipTest(why)
        self.lab = Lab("hn")
        self.addCleanup(self.lab.close)
        self.master = self.lab.add_host("master")
        self.nodes = [self.lab.add_host("node1"), self.lab.add_host("node2")]
        # Not a member: stands for the rest of the world.
        self.outside = self.lab.add_host("outside")
        self.data_dir = Path(tempfile.mkdtemp(prefix="hepto-nodes-"))
        self.addCleanup(shutil.rmtree, self.data_dir, ignore_errors=True)
        self.agents: dict[str, Agent] = {}

    def start(self, host: Host, *argv: str) -> Agent:
        agent = Agent.start(
            ["--cluster", CLUSTER, "--name", host.name, "--key", KEY, "--no-contain",
             "--ip", str(host.interface), "--bin-dir", str(BIN_DIR), *argv],
            self.data_dir,
            prefix=host.command([]),
        )  # fmt: skip
        self.addCleanup(self.sweep, host.name)
        self.addCleanup(agent.kill)
        self.agents[host.name] = agent
        return agent

    def start_node(self, host: Host) -> Agent:
        return self.start(host, "--role", "node", "--anchor", str(self.master.address))

    def sweep(self, name: str) -> None:
        """Whatever a failed test left of a node: its sweeper knows how to remove it."""
        script = self.data_dir / CLUSTER / name / "runtime" / "sweeper.sh"
        if script.exists() and node_processes(CLUSTER, name):
            subprocess.run(["sh", str(script), "sweep"], capture_output=True, check=False)

    @property
    def kubeconfig(self) -> Path:
        return self.data_dir / CLUSTER / "master" / "kubeconfig"

    def kubectl(self, *argv: str, stdin: str | None = None, check: bool = True) -> str:
        done = subprocess.run(
            self.master.command(
                [str(BIN_DIR / "kubectl"), "--kubeconfig", str(self.kubeconfig),
                 "--request-timeout=10s", *argv]
            ),
            input=stdin,
            capture_output=True,
            text=True,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout.strip()

    def node_ready(self, name: str) -> bool:
        if not self.kubeconfig.exists():
            return False
        out = self.kubectl(
            "get", "node", name, "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}', check=False,
        )  # fmt: skip
        return out == "True"

    def pod_phase(self, name: str) -> str:
        return self.kubectl("get", "pod", name, "-o", "jsonpath={.status.phase}", check=False)

    def pod_started_at(self, name: str) -> str:
        return self.kubectl(
            "get", "pod", name, "-o",
            "jsonpath={.status.containerStatuses[0].state.running.startedAt}", check=False,
        )  # fmt: skip

    def waiting_reason(self, name: str) -> str:
        return self.kubectl(
            "get", "pod", name, "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}", check=False,
        )  # fmt: skip

    def outside_listens(self, port: int) -> bool:
        listening = self.outside.run(["ss", "-Htln", f"sport = :{port}"]).stdout
        return bool(listening.strip())

    def pod_running(self, name: str) -> bool:
        return self.pod_phase(name) == "Running"

    def logged(self, name: str, words: str) -> bool:
        return words in self.kubectl("logs", name, check=False)

    @staticmethod
    def replaced(host: Host, program: str, pid: int) -> set[int]:
        return host.processes_named(program) - {pid}

    def exec_works(self, name: str) -> bool:
        return self.kubectl("exec", name, "--", "echo", "inside", check=False) == "inside"

    @pytest.mark.timeout(1200)
    def test_nodes_run_pods(self) -> None:
        started = time.monotonic()
        node1 = self.nodes[0]
        # node1 imports the image from its folder at start; node2 through the CLI below.
        images = self.data_dir / CLUSTER / "node1" / "images"
        images.mkdir(parents=True)
        write_busybox_archive(images / "busybox.tar")
        archive = self.data_dir / "busybox.tar"
        write_busybox_archive(archive)

        self.start(self.master, "--role", "master")
        for host in self.nodes:
            self.start_node(host)
        for host in self.nodes:
            wait_until(
                partial(self.node_ready, host.name), READY_TIMEOUT, 0.5, f"{host.name} Ready"
            )
        print(f"\nfigure: agents' start to both nodes Ready: {time.monotonic() - started:.1f} s")

        # Unix sockets know no network namespace: any shell of the host will do.
        imported = subprocess.run(
            [program("hepto"), "images", "import", "--cluster", CLUSTER, "--name", "node2",
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
            self.assertEqual(addresses["InternalIP"], str(plan.mesh_address(CLUSTER, host.name)))
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
        for address in (neighbour, str(plan.mesh_address(CLUSTER, "node1"))):
            answer = self.kubectl("exec", "bb1", "--", "ping", "-c", "1", "-W", "5", address)
            self.assertIn("1 packets received", answer, address)

        # Pods on different nodes, over the mesh: each node's /64 is its peers' to route.
        far = self.kubectl("get", "pod", "bb2", "-o", "jsonpath={.status.podIP}")
        answer = self.kubectl("exec", "bb1", "--", "ping", "-c", "1", "-W", "5", far)
        self.assertIn("1 packets received", answer)
        # And the apiserver, from a pod's own address (not masqueraded).
        apiserver = str(plan.apiserver_address(CLUSTER))
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
        self.assertIn(ipaddress.IPv6Address(cluster_ip), plan.service_prefix(CLUSTER))
        wait_until(partial(self.pod_running, "web"), 120, 0.2, "web Running")
        from_pod = ["exec", "bb1", "--", "nc", "-w", "5", cluster_ip, "80"]
        wait_until(
            lambda: self.kubectl(*from_pod, check=False) == "hello-web", 60, 0.5, "web from bb1"
        )
        # The kubernetes Service: the apiserver on the master, through kube-proxy.
        kubernetes = str(plan.kubernetes_service_address(CLUSTER))
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
        self.assertNotEqual(node_processes(CLUSTER, "node1"), {})
        self.assertEqual(self.agents["node1"].stop(), 0)
        self.assertEqual(node_processes(CLUSTER, "node1"), {})
        for name in ("containerd", "kubelet", "containerd-shim"):
            self.assertEqual(node1.processes_named(name), set(), name)
        self.assertFalse((CGROUP_ROOT / "freezer/hepto" / CLUSTER / "node1").exists())
        self.assertNotIn("hepto", node1.run(["nft", "list", "tables"]).stdout)
        self.assertNotIn("hepto-pods", node1.run(["ip", "-o", "link"]).stdout)

        # kill -9 of an agent: its sweeper removes the node all the same.
        self.assertNotEqual(node_processes(CLUSTER, "node2"), {})
        self.agents["node2"].kill()
        wait_until(lambda: not node_processes(CLUSTER, "node2"), 60, 0.5, "node2 swept")
        wait_until(
            lambda: not (CGROUP_ROOT / "freezer/hepto" / CLUSTER / "node2").exists(),
            30,
            0.5,
            "node2's cgroups removed",
        )

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
        self.assertEqual(node_processes(CLUSTER, "node1"), {})

    @pytest.mark.timeout(600)
    def test_a_full_node_runs_pods_beside_its_control_plane(self) -> None:
        images = self.data_dir / CLUSTER / "master" / "images"
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
        self.assertEqual(node_processes(CLUSTER, "master"), {})
        for name in ("etcd", "kube-apiserver", "containerd", "kubelet", "containerd-shim"):
            self.assertEqual(self.master.processes_named(name), set(), name)
