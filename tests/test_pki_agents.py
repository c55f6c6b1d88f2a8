"""The PKI over real gossip: a master and two nodes, each a ``twistd -n hepto`` agent in
its own network namespace.  Every node must hold certificates that OpenSSL verifies
against the master's CA within seconds of joining, and a restart of the master must
change no CA (and no certificate).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from agent import KEY, Agent, agents_lab
from hepto import plan
from hepto.pki.paths import Paths
from hepto.pki.requests import KUBELET_CLIENT, KUBELET_SERVING, master_specs
from netlab import Host, wait_until

pytestmark = pytest.mark.integration

CLUSTER = "hp"
#: Two contended cores: gossip joins in a second or two, but leave room.
START_TIMEOUT = 120.0
NODE_FILES = (KUBELET_CLIENT, KUBELET_SERVING)


def mapped_libraries(pid: int, packages: tuple[str, ...]) -> list[str]:
    """Files of these Python packages that process ``pid`` maps (imported, for a C one)."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and any(f"/{package}/" in fields[5] for package in packages):
            found.add(fields[5])
    return sorted(found)


class PKIAgentsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.lab, self.root = agents_lab(self, "hp", "openssl", "wireguard-go")
        self.agents: dict[str, Agent] = {}

    def start(self, host: Host, role: str, anchor: Host | None = None) -> Agent:
        data_dir = self.root / host.name
        data_dir.mkdir(exist_ok=True)
        argv = [
            "--cluster", CLUSTER, "--name", host.name, "--key", KEY, "--role", role,
            "--no-contain", "--ip", str(host.interface), "--components", "none",
        ]  # fmt: skip
        if anchor is not None:
            argv += ["--anchor", str(anchor.address)]
        agent = Agent.start(argv, data_dir=data_dir, prefix=host.command([]))
        self.addCleanup(agent.kill)
        self.agents[host.name] = agent
        return agent

    def paths(self, name: str) -> Paths:
        return Paths(self.root / name / CLUSTER / name)

    def holds(self, name: str, certificates: tuple[str, ...]) -> bool:
        paths = self.paths(name)
        return all(paths.certificate(certificate).exists() for certificate in certificates)

    def verify(self, authority: Path, certificate: Path, *options: str) -> None:
        result = subprocess.run(
            ["openssl", "verify", "-CAfile", str(authority), *options, str(certificate)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def snapshot(self, name: str) -> dict[str, bytes]:
        pki_dir = self.paths(name).pki_dir
        return {
            str(path.relative_to(pki_dir)): path.read_bytes()
            for path in sorted(pki_dir.rglob("*"))
            if path.is_file() and not path.name.startswith(".")
        }

    def test_master_and_two_nodes(self) -> None:
        master_host = self.lab.add_host("master")
        node_hosts = [self.lab.add_host("node-a"), self.lab.add_host("node-b")]
        started = time.monotonic()
        self.start(master_host, "master")
        master_names = tuple(spec.name for spec in master_specs(CLUSTER, "master"))
        wait_until(
            lambda: self.holds("master", master_names) and self.paths("master").trusted_ca.exists(),
            START_TIMEOUT, interval=0.1, what="the master's certificates",
        )  # fmt: skip
        print(f"\nmaster holds its certificates {time.monotonic() - started:.2f} s after start")
        authority = self.paths("master").authority_certificate("kubernetes")
        for host in node_hosts:
            joined = time.monotonic()
            self.start(host, "node", anchor=master_host)
            wait_until(
                lambda host=host: self.holds(host.name, NODE_FILES)  # type: ignore[misc]
                and self.paths(host.name).kubeconfig("kubelet").exists(),
                START_TIMEOUT, interval=0.1, what=f"{host.name}'s certificates",
            )  # fmt: skip
            print(
                f"{host.name} holds its certificates {time.monotonic() - joined:.2f} s after start"
            )
        self.assertTrue(self.paths("master").kubeconfig("admin").exists())
        for host in node_hosts:
            paths = self.paths(host.name)
            self.assertEqual(paths.trusted_ca.read_bytes(), authority.read_bytes())
            self.verify(authority, paths.certificate(KUBELET_CLIENT), "-purpose", "sslclient")
            self.verify(
                authority,
                paths.certificate(KUBELET_SERVING),
                "-purpose", "sslserver",
                "-verify_ip", str(plan.mesh_address(CLUSTER, host.name)),
            )  # fmt: skip
            self.assertFalse(paths.authority_dir.exists())
        # All of it was done by PKI workers: no agent loaded cryptography itself.
        for name, agent in self.agents.items():
            self.assertEqual(
                mapped_libraries(agent.process.pid, ("cryptography", "bcrypt")), [], name
            )

        # A restart of the master changes no CA and no certificate anywhere.
        before = {name: self.snapshot(name) for name in ("master", "node-a", "node-b")}
        self.assertEqual(self.agents["master"].stop(), 0)
        self.start(master_host, "master")
        wait_until(
            lambda: self.agents["master"].logged("hepto node master running"),
            START_TIMEOUT, interval=0.2, what="the master to run again",
        )  # fmt: skip
        # A third node joining after the restart is served from the same CA.
        late = self.lab.add_host("node-c")
        self.start(late, "node", anchor=master_host)
        wait_until(
            lambda: self.holds("node-c", NODE_FILES), START_TIMEOUT,
            interval=0.1, what="node-c's certificates",
        )  # fmt: skip
        self.verify(authority, self.paths("node-c").certificate(KUBELET_CLIENT))
        after = {name: self.snapshot(name) for name in ("master", "node-a", "node-b")}
        for name in before:
            self.assertEqual(
                {k: v for k, v in before[name].items() if k != "signed-keys.json"},
                {k: v for k, v in after[name].items() if k != "signed-keys.json"},
                name,
            )
