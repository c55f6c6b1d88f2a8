"""A local hepto cluster for tools: a master and nodes, real agents in network namespaces.

What ``tools/demo`` and ``tools/conformance`` share: each host a namespace on a private
bridge, each agent ``twistd -n hepto`` (contained by default, as on a real host); the
nodes' images folders filled before their agents start; waits that say what they wait
for.  Tests use :class:`cluster.ClusterTestCase` instead, which ties the same pieces to
a TestCase's cleanups.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import attrs

from agent import KEY, Agent
from netlab import Host, Lab, wait_until

#: Seconds between "still waiting" lines.
HEARTBEAT = 15


def wait_for(what: str, predicate: Callable[[], object], timeout: float, say: str = "") -> None:
    """Say what is awaited, then again every HEARTBEAT s, until it comes."""
    prefix = f"{say}: " if say else ""
    print(f"{prefix}waiting for {what} (at most {timeout:.0f} s)", flush=True)
    started = time.monotonic()
    beat = started + HEARTBEAT

    def check() -> object:
        nonlocal beat
        if time.monotonic() >= beat:
            elapsed = time.monotonic() - started
            print(f"{prefix}still waiting for {what}, {elapsed:.0f} s", flush=True)
            beat += HEARTBEAT
        return predicate()

    wait_until(check, timeout, 0.5, what)


@attrs.define
class LocalCluster:
    """``nodes`` nodes and a master named ``master``; call :meth:`close` in any case."""

    bin_dir: Path
    data_dir: Path
    cluster: str = "demo"
    nodes: int = 2
    contain: bool = True
    lab_prefix: str = "hd"
    say: str = "demo"
    lab: Lab = attrs.field(init=False)
    hosts: dict[str, Host] = attrs.field(init=False, factory=dict)
    agents: dict[str, Agent] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self.lab = Lab(self.lab_prefix)

    @property
    def names(self) -> list[str]:
        return ["master"] + [f"node{i}" for i in range(1, self.nodes + 1)]

    @property
    def master(self) -> Host:
        return self.hosts["master"]

    @property
    def kubeconfig(self) -> Path:
        return self.data_dir / self.cluster / "master" / "kubeconfig"

    def images_folder(self, name: str) -> Path:
        """The folder whose archives ``name``'s agent imports at every start."""
        return self.data_dir / self.cluster / name / "images"

    def start(self, stock_images: Callable[[Path], object]) -> None:
        """Start the master, then the nodes, each with the images ``stock_images(folder)``
        writes into its images folder; return once every agent runs."""
        anchor = ""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            host = self.lab.add_host(name)
            self.hosts[name] = host
            if name != "master":
                folder = self.images_folder(name)
                folder.mkdir(parents=True, exist_ok=True)
                stock_images(folder)
            where = (
                ["--iface", "eth0"]
                if self.contain
                else ["--no-contain", "--ip", str(host.interface)]
            )
            argv = [
                "--cluster", self.cluster, "--key", KEY, "--name", name, *where,
                "--bin-dir", str(self.bin_dir), "--role", "master" if name == "master" else "node",
            ]  # fmt: skip
            if name != "master":
                argv += ["--anchor", anchor]
            self.agents[name] = Agent.start(argv, self.data_dir, prefix=host.command([]))
            address = str(host.address)
            if self.contain:
                # A contained agent has its own address on its host's link.
                record = self.data_dir / self.cluster / name / "container" / "container.json"
                wait_for(f"{name}'s container", record.exists, 60, self.say)
                address = json.loads(record.read_text())["address"]
            if name == "master":
                anchor = address
            print(f"{self.say}: started {name} in namespace {host.netns} at {address}")
        for name, agent in self.agents.items():
            running = partial(agent.logged, f"hepto node {name} running")
            wait_for(f"{name}'s agent to run", running, 120, self.say)

    def kubectl(self, *argv: str) -> list[str]:
        """kubectl, run on the master's host (it routes the apiserver's address)."""
        return self.master.command(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *argv]
        )

    def _answer(self, *argv: str) -> str:
        done = subprocess.run(
            self.kubectl("--request-timeout=5s", *argv), capture_output=True, text=True
        )
        return done.stdout.strip()

    def wait_ready(self) -> None:
        """Until the apiserver answers and every node is Ready."""
        wait_for(
            "the apiserver to answer /readyz (etcd, then kube-apiserver)",
            lambda: self.kubeconfig.exists() and self._answer("get", "--raw", "/readyz") == "ok",
            300,
            self.say,
        )
        ready = '{.status.conditions[?(@.type=="Ready")].status}'
        wait_for(
            "every node Ready (containerd, kubelet, registration)",
            lambda: (
                self._answer(
                    "get", "nodes", "-o", f'jsonpath={{range .items[*]}}{ready}{{" "}}{{end}}'
                ).split()
                == ["True"] * self.nodes
            ),
            300,
            self.say,
        )

    def exited(self) -> str | None:
        """Which agent has exited, and where its log is; None while all run."""
        for name, agent in self.agents.items():
            if agent.process.poll() is not None:
                code = agent.process.returncode
                return f"{name} exited with {code}; see {agent.log_path}"
        return None

    def close(self) -> None:
        """Stop every agent (SIGTERM, then SIGKILL), then remove the namespaces."""
        for agent in self.agents.values():
            try:
                agent.stop(timeout=30)
            except Exception:
                agent.kill()
        self.lab.close()
