"""What the tests of a whole cluster share: a lab of namespaces, agents, kubectl, pods.

:class:`ClusterTestCase` puts a master, its nodes and an "outside" host (not a member:
the rest of the world) in network namespaces on one bridge; each agent is
``twistd -n hepto --no-contain`` in its host's namespace (or contained, with
``CONTAINED``), with the bundle.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from agent import KEY, Agent
from hepto.kube.layout import Layout
from hepto.programs import BUNDLE_BIN_DIR
from images import BUSYBOX_IMAGE
from netlab import Host, Lab, missing_requirements, wait_until

BIN_DIR = Path(os.environ.get("HEPTO_TEST_BIN_DIR", BUNDLE_BIN_DIR))
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


class ClusterTestCase(SynchronousTestCase):
    """A master, ``NODES`` nodes and an outside host on one bridge, and ways to ask them."""

    #: The name of the lab (a prefix of its namespaces and links).
    LAB = "hc"
    NODES = 2
    #: Whether agents run contained (the default of ``twistd hepto``) on ``eth0``, or
    #: ``--no-contain`` on the host's own address.
    CONTAINED = False

    def setUp(self) -> None:
        why = missing_requirements("wireguard-go", "setpriv", "runc")
        if why is None and not (BIN_DIR / "kubelet").exists():
            why = f"needs the bundle in {BIN_DIR} (tools/build-bundle)"
        if why is None and not (CGROUP_ROOT / "freezer").is_dir():
            why = "needs cgroup v1 hierarchies at /sys/fs/cgroup (this test reads the freezer)"
        if why:
            self.skipTest(why)
        # Each test its own cluster name, hence its own cgroups (``/hepto/<cluster>/<node>``):
        # a run beside this one, or the sweeper of an agent a previous test killed, never
        # meets it.
        self.cluster = f"{self.LAB}-{secrets.token_hex(3)}"
        self.lab = Lab(self.LAB)
        self.addCleanup(self.lab.close)
        self.master = self.lab.add_host("master")
        self.nodes = [self.lab.add_host(f"node{index}") for index in range(1, self.NODES + 1)]
        # Not a member: stands for the rest of the world.
        self.outside = self.lab.add_host("outside")
        self.data_dir = Path(tempfile.mkdtemp(prefix="hepto-nodes-"))
        if not os.environ.get("HEPTO_KEEP_TEST_DATA"):  # the agents' logs, to debug
            self.addCleanup(shutil.rmtree, self.data_dir, ignore_errors=True)
        self.agents: dict[str, Agent] = {}

    def start(self, host: Host, *argv: str) -> Agent:
        where = (
            ["--iface", "eth0"] if self.CONTAINED else ["--no-contain", "--ip", str(host.interface)]
        )
        agent = Agent.start(
            ["--cluster", self.cluster, "--name", host.name, "--key", KEY, *where,
             "--bin-dir", str(BIN_DIR), *argv],
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
        """Whatever a failed test left of a node: its sweeper knows how to remove it.

        Always, and in the foreground: the guard of an agent just killed may still be at
        it when the lab kills what is left in the namespaces, cgroups unremoved.
        """
        node_dir = self.data_dir / self.cluster / name
        # A contained node's container first: its guard may be killed with the lab.
        for script in (node_dir / "container" / "cleanup.sh", node_dir / "runtime" / "sweeper.sh"):
            if script.exists():
                subprocess.run(["sh", str(script), "sweep"], capture_output=True, check=False)

    def run_dir(self, name: str) -> Path:
        """Where node ``name`` keeps its sockets and runtime state."""
        return Layout(self.data_dir / self.cluster / name, self.cluster, name).run_dir

    @property
    def kubeconfig(self) -> Path:
        return self.data_dir / self.cluster / "master" / "kubeconfig"

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

    def wait_ready(self, hosts: Sequence[Host]) -> None:
        for host in hosts:
            wait_until(
                partial(self.node_ready, host.name), READY_TIMEOUT, 0.5, f"{host.name} Ready"
            )

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
