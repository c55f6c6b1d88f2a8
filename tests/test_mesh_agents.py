"""The mesh with real agents: ``twistd -n hepto --no-contain --components none`` in
network namespaces on a bridge, finding each other by gossip, each with wireguard-go.

Skipped until gossip exists and the node starts the mesh; the lead finishes it then.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from agent import KEY, Agent
from hepto import plan
from hepto.gossip.identity import IDENTITY_FILE
from hepto.gossip.identity import load_or_create as load_identity
from hepto.mesh.keys import KeyPair
from netlab import Host, Lab, holds_for, missing_requirements, uapi_get, wait_until

CLUSTER = "meshagents"

#: A key holder: hepto's own gossip, joined through the master, whose record claims a
#: WireGuard key given on the command line.
_INSIDER = """
import json, sys
from twisted.internet import reactor
from hepto.config import parse_node_config
from hepto.gossip.service import GossipService

cluster, key, name, ip, anchor, data_dir, claim = sys.argv[1:8]
raw = {"cluster": cluster, "key": key, "name": name, "role": "node", "ip": ip,
       "data-dir": data_dir}
config = parse_node_config(raw, {"anchor": [anchor]}, {"no-contain": True})
config.node_dir.mkdir(mode=0o700, parents=True)
gossip = GossipService.from_config(config, reactor)
gossip.startService()

def publish():
    gossip.state.publish("wireguard", json.loads(claim))
    print("published", flush=True)

reactor.callLater(1, publish)
reactor.run()
"""
HOSTS = int(os.environ.get("HEPTO_MESH_LAB_HOSTS", "3"))
MARKER = b"hepto-mesh-agents-secret-42"
#: A stateful firewall in front of a host: UDP in only on a flow the host started.
FIREWALL = """
table inet hepto_test_fw {
    chain input {
        type filter hook input priority filter; policy accept;
        ct state established,related accept
        iifname "eth0" meta l4proto udp counter drop
    }
}
"""
#: Seconds of quiet: more than the firewall keeps a flow's state (30 s).  Past 180 s,
#: WireGuard's sessions have expired too, and every tunnel starts with a handshake, as
#: after an hour: ``HEPTO_MESH_QUIET=200`` shows that (docs/mesh.rst, "Keepalives").
QUIET = float(os.environ.get("HEPTO_MESH_QUIET", "40"))


class MeshAgentsTests(SynchronousTestCase):
    def setUp(self) -> None:
        why = missing_requirements("wireguard-go", "setpriv", "tcpdump")
        if why:
            raise self.skipTest(why)
        self.lab = Lab("hm")
        self.addCleanup(self.lab.close)
        self.hosts = [self.lab.add_host(f"a{i}") for i in range(HOSTS)]
        self.data = {host.name: Path(tempfile.mkdtemp(prefix="hepto-mesh-")) for host in self.hosts}
        for path in self.data.values():
            # Registered before any agent starts, so it runs after they are all killed.
            self.addCleanup(shutil.rmtree, path, ignore_errors=True)
        self.agents: dict[str, Agent] = {}

    def start(self, host: Host) -> Agent:
        first = self.hosts[0]
        agent = Agent.start(
            [
                "--cluster",
                CLUSTER,
                "--key",
                KEY,
                "--name",
                host.name,
                "--role",
                "master" if host is first else "node",
                "--anchor",
                str(first.address),
                "--no-contain",
                "--ip",
                str(host.interface),
                "--components",
                "none",
            ],
            data_dir=self.data[host.name],
            prefix=host.command([]),
        )
        self.addCleanup(agent.kill)
        self.agents[host.name] = agent
        return agent

    def socket_of(self, host: Host) -> Path:
        return self.data[host.name] / CLUSTER / host.name / "wireguard" / "hepto0.sock"

    def peer_keys(self, host: Host) -> set[str]:
        return set(uapi_get(self.socket_of(host)).peers)

    def public_key(self, host: Host) -> str:
        """The WireGuard key of ``host``'s agent: its identity's, once it has made one."""
        path = self.data[host.name] / CLUSTER / host.name / IDENTITY_FILE
        wait_until(path.exists, 60, 0.1, f"{host.name}'s identity")
        return KeyPair.from_identity(load_identity(path).signing_key).public_key

    def lacks(self, host: Host, key: str) -> bool:
        return key not in self.peer_keys(host)

    def pings(self, source: Host, target: ipaddress.IPv6Address) -> bool:
        argv = ["ping", "-6", "-n", "-c", "1", "-W", "1", str(target)]
        return source.run(argv, check=False).returncode == 0

    def all_pairs(self) -> bool:
        """Every pair at once: a round costs one ping timeout, not one per failing pair."""
        pings = [
            subprocess.Popen(
                source.command(["ping", "-6", "-n", "-c", "1", "-W", "1",
                                str(plan.mesh_address(CLUSTER, target.name))]),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for source in self.hosts
            for target in self.hosts
            if source is not target
        ]  # fmt: skip
        return all([ping.wait() == 0 for ping in pings])

    def test_a_key_holder_cannot_take_another_member_s_peer(self) -> None:
        master, victim, insider = self.hosts[:3]
        self.start(master)
        self.start(victim)
        stolen = self.public_key(victim)
        wait_until(partial(self.has_peer, master, stolen, victim), 120, 0.5, "the victim's peer")
        # A member first by name, with the cluster key and an identity of its own,
        # whose signed record claims the victim's WireGuard key at its own endpoint.
        data_dir = Path(tempfile.mkdtemp(prefix="hepto-insider-"))
        self.addCleanup(shutil.rmtree, data_dir, ignore_errors=True)
        claim = {"public_key": stolen, "endpoint": f"[{insider.address}]:51820"}
        process = insider.spawn(
            [sys.executable, "-c", _INSIDER, CLUSTER, KEY, "aaa-insider", str(insider.interface),
             str(master.address), str(data_dir), json.dumps(claim)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        self.addCleanup(insider.kill, process)
        assert process.stdout is not None
        self.assertEqual(process.stdout.readline().strip(), b"published")
        wait_until(
            partial(self.agents[master.name].logged, "member aaa-insider: not the WireGuard key"),
            60,
            0.5,
            "the master to refuse the insider's key",
        )
        self.assertTrue(self.has_peer(master, stolen, victim))
        self.assertTrue(self.pings(master, plan.mesh_address(CLUSTER, victim.name)))

    def test_a_member_that_only_says_master_gets_no_apiserver_address(self) -> None:
        master, node, impostor = self.hosts[:3]
        self.start(master)
        self.start(node)
        apiserver = f"{plan.apiserver_address(CLUSTER)}/128"
        real = self.public_key(master)
        wait_until(partial(self.allows, node, real, apiserver), 120, 0.5, "the master's apiserver")
        # An agent of its own PKI, CAs and all, named before the master: under a rule
        # of name order it would take the apiserver's address.
        data_dir = Path(tempfile.mkdtemp(prefix="hepto-impostor-"))
        self.addCleanup(shutil.rmtree, data_dir, ignore_errors=True)
        agent = Agent.start(
            ["--cluster", CLUSTER, "--key", KEY, "--name", "a", "--role", "master",
             "--anchor", str(master.address), "--no-contain", "--ip", str(impostor.interface),
             "--components", "none"],
            data_dir=data_dir,
            prefix=impostor.command([]),
        )  # fmt: skip
        self.addCleanup(agent.kill)
        identity = data_dir / CLUSTER / "a" / IDENTITY_FILE
        wait_until(identity.exists, 60, 0.1, "the impostor's identity")
        fake = KeyPair.from_identity(load_identity(identity).signing_key).public_key
        wait_until(partial(self.allows, node, fake, None), 60, 0.5, "the impostor's peer")
        holds_for(
            lambda: not self.allows(node, fake, apiserver) and self.allows(node, real, apiserver),
            5,
            0.2,
            "the apiserver's address with the real master only",
        )
        self.assertTrue(self.agents[node.name].logged("member a: says it is a master"))
        self.assertTrue(self.pings(node, plan.apiserver_address(CLUSTER)))

    def allows(self, host: Host, key: str, prefix: str | None) -> bool:
        """Whether ``host`` has the peer ``key``, with ``prefix`` among its allowed IPs."""
        try:
            peer = uapi_get(self.socket_of(host)).peers.get(key)
        except OSError:
            return False
        if peer is None:
            return False
        return prefix is None or prefix in {str(network) for network in peer.allowed_ips}

    def has_peer(self, host: Host, key: str, at: Host) -> bool:
        """Whether ``host``'s WireGuard has the peer ``key`` at ``at``'s endpoint."""
        try:
            peer = uapi_get(self.socket_of(host)).peers.get(key)
        except OSError:  # wireguard-go not up yet
            return False
        return peer is not None and str(at.address) in str(peer.endpoint)

    def keepalives(self, host: Host) -> dict[str, int]:
        """``host``'s persistent keepalive toward each other host, by name."""
        keys = {self.public_key(other): other.name for other in self.hosts}
        try:
            peers = uapi_get(self.socket_of(host)).peers
        except OSError:  # wireguard-go not up yet
            return {}
        return {keys[key]: peer.keepalive for key, peer in peers.items() if key in keys}

    def test_keepalives_only_where_a_firewall_needs_them(self) -> None:
        """The last host sits behind a stateful firewall: it alone keeps its tunnels
        open, and after a quiet time every pair still reaches each other at once."""
        closed = self.hosts[-1]
        # What a home router does: nothing in that nobody inside asked for.  Its UDP
        # state lasts 30 s (Linux keeps a flow that answered 120 s): the quiet below
        # outlasts it without waiting minutes.
        closed.run(["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_udp_timeout_stream=30"])
        subprocess.run(closed.command(["nft", "-f", "-"]), input=FIREWALL, text=True, check=True)
        for host in self.hosts:
            self.start(host)
        wait_until(self.all_pairs, 180, interval=0.5, what="all-pairs mesh connectivity")
        wanted = {
            host.name: {
                other.name: 25 if host is closed else 0 for other in self.hosts if other is not host
            }
            for host in self.hosts
        }
        seen: list[dict[str, dict[str, int]]] = [{}]

        def as_wanted() -> bool:
            seen[0] = {host.name: self.keepalives(host) for host in self.hosts}
            return seen[0] == wanted

        try:
            wait_until(as_wanted, 60, interval=0.5, what=f"keepalives {wanted}")
        except AssertionError as error:
            raise AssertionError(f"{error}; they are {seen[0]}") from None
        listed = closed.run(["nft", "list", "chain", "inet", "hepto_test_fw", "input"]).stdout
        # The knocks that the others sent it, at least, met the firewall.
        dropped = re.search(r"packets (\d+) bytes \d+ drop", listed)
        self.assertTrue(dropped and int(dropped.group(1)) > 0, listed)
        time.sleep(QUIET)  # Nothing said, nothing to wait for: the state must age.
        for source in self.hosts:
            for target in self.hosts:
                if source is not target:
                    address = plan.mesh_address(CLUSTER, target.name)
                    self.assertTrue(
                        self.pings(source, address), f"{source.name} reaches {target.name}"
                    )

    def test_mesh_of_agents(self) -> None:
        for host in self.hosts:
            self.start(host)
        last_start = time.monotonic()
        wait_until(self.all_pairs, 180, interval=0.5, what="all-pairs mesh connectivity")
        seconds = time.monotonic() - last_start
        print(f"\nagents mesh: {HOSTS} hosts, all pairs {seconds:.1f} s after the last start")
        first, killed = self.hosts[0], self.hosts[-1]
        self.assertTrue(self.pings(killed, plan.apiserver_address(CLUSTER)))

        # A killed agent takes its wireguard-go along; the others drop its peer.
        key = self.public_key(killed)
        self.agents[killed.name].kill()
        for host in self.hosts[:-1]:
            wait_until(partial(self.lacks, host, key), 120, what="peer removal")
        # Restarted, it comes back with the same key.
        self.start(killed)
        wait_until(self.all_pairs, 180, interval=0.5, what="connectivity after the restart")
        self.assertIn(key, self.peer_keys(first))

        # Encrypted on the wire: the marker crosses the bridge only when sent in clear.
        pcap = Path(self.mktemp()).absolute()
        tcpdump = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.lab.switch,
                "tcpdump",
                "-i",
                "br0",
                "-U",
                "-n",
                "-w",
                str(pcap),
                "udp",
            ],
            stderr=subprocess.PIPE,
        )
        self.addCleanup(tcpdump.kill)
        assert tcpdump.stderr is not None
        while b"listening on" not in tcpdump.stderr.readline():
            pass
        for destination in (plan.mesh_address(CLUSTER, killed.name), killed.address):
            first.run(
                [
                    "python3",
                    "-c",
                    "import socket;s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM);"
                    f"[s.sendto({MARKER!r},('{destination}',9)) for _ in range(5)]",
                ]
            )
        time.sleep(1)  # let the last datagrams reach the capture
        tcpdump.terminate()
        tcpdump.wait(30)
        self.assertEqual(pcap.read_bytes().count(MARKER), 5, "only the 5 sent in clear")
