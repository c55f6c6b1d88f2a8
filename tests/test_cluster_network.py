"""The cluster network out of the box, end to end: a master, three nodes, the world.

Real agents in network namespaces on a bridge (:class:`cluster.ClusterTestCase`), the
master ``master``-only. Pods on every node reach pods on every other node over the mesh
(ICMPv6 and TCP); a Service whose pods are on other nodes answers through its address
and its name; names resolve through hepto's CoreDNS on the master, inside the cluster
and outside it (a DNS server on the "outside" host stands for ``--dns``); a pod reaches
the apiserver through the ``kubernetes`` Service with its service-account token; the
apiserver on the master calls an admission webhook served by a pod on a node. Then one
node's agent is killed and restarted, and its pods are reachable again; and a node that
leaves takes its pod /64 out of every peer's WireGuard allowed IPs.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from cluster import READY_TIMEOUT, ClusterTestCase, pod
from hepto import plan
from images import write_busybox_archive
from netlab import Host, uapi_get, wait_until
from webhook import SELECTOR_LABEL, build, certificates, go, manifests, write_webhook_archive

#: A name only the outside's DNS server knows, and where it points.
WORLD_NAME = "world.example.test"

#: An authoritative server for one name (AAAA and A), on port 53 of its host (UDP and TCP).
_DNS_SERVER = """
import sys
from twisted.internet import defer, reactor
from twisted.names import common, dns, error, server

name, address = sys.argv[1].encode(), sys.argv[2]

class One(common.ResolverBase):
    def _lookup(self, query, cls, kind, timeout):
        if query.lower() != name:
            return defer.fail(error.DomainError(query))
        # An A record too, which CoreDNS must not pass on: the cluster is IPv6 only.
        if kind == dns.A:
            payload = dns.Record_A("192.0.2.1")
        elif kind == dns.AAAA:
            payload = dns.Record_AAAA(address)
        else:
            return defer.succeed(([], [], []))
        record = dns.RRHeader(name, kind, dns.IN, 60, payload, auth=True)
        return defer.succeed(([record], [], []))

factory = server.DNSServerFactory(authorities=[One()])
reactor.listenUDP(53, dns.DNSDatagramProtocol(factory), interface="::")
reactor.listenTCP(53, factory, interface="::")
print("listening", flush=True)
reactor.run()
"""

#: One query, over UDP, to one server: the rcode, the answers' types and addresses.
_QUERY = """
import json, sys, time
from twisted.internet import reactor
from twisted.names import client, dns

server, name, kind = sys.argv[1], sys.argv[2], getattr(dns, sys.argv[3])
resolver = client.Resolver(servers=[(server, 53)])
started = time.monotonic()
answer = {}

def done(message):
    answer.update(
        rcode=message.rCode,
        answers=[[dns.QUERY_TYPES.get(rr.type), rr.payload.dottedQuad() if rr.type == dns.A
                  else getattr(rr.payload, "_address", None) and str(rr.payload._address)]
                 for rr in message.answers],
    )

def failed(failure):
    answer.update(error=repr(failure.value))

query = resolver.queryUDP([dns.Query(name, kind)], timeout=(5,))
query.addCallbacks(done, failed).addBoth(lambda _: reactor.stop())
reactor.run()
answer["seconds"] = time.monotonic() - started
print(json.dumps(answer))
"""


def listener(index: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """Pod ``p<index>`` on ``node<index>``: answers ``hello-<index>`` on TCP port 8080."""
    return pod(
        f"p{index}",
        f"node{index}",
        loop=f"nc -l -p 8080 -e echo hello-{index}",
        labels=labels,
    )


class ClusterNetworkTests(ClusterTestCase):
    LAB = "hw"
    NODES = 3

    def setUp(self) -> None:
        super().setUp()
        if go() is None:
            self.skipTest("needs the Go toolchain (the webhook's image is built here)")

    def pod_ip(self, name: str) -> str:
        return self.kubectl("get", "pod", name, "-o", "jsonpath={.status.podIP}")

    def exec(self, name: str, script: str) -> str:
        return self.kubectl("exec", name, "--", "sh", "-c", script, check=False)

    def reaches(self, client: str, address: str, answer: str) -> bool:
        """ICMPv6 and TCP both, from pod ``client`` to ``address``."""
        pinged = self.exec(client, f"ping -c 1 -W 5 {address} >/dev/null && echo pong")
        return pinged == "pong" and self.exec(client, f"nc -w 5 {address} 8080") == answer

    def query(self, host: Host, name: str, kind: str = "AAAA") -> dict[str, Any]:
        server = str(plan.dns_address(self.cluster))
        done = host.run([sys.executable, "-c", _QUERY, server, name, kind], check=False)
        self.assertEqual(done.returncode, 0, done.stderr)
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    def addresses(self, host: Host, name: str) -> list[str]:
        return [address for kind, address in self.query(host, name)["answers"] if kind == "AAAA"]

    def allowed_ips(self, host: Host) -> set[str]:
        """Every prefix that ``host``'s WireGuard device lets in, from any peer."""
        socket = self.data_dir / self.cluster / host.name / "wireguard" / "hepto0.sock"
        peers = uapi_get(socket).peers.values()
        return {str(network) for peer in peers for network in peer.allowed_ips}

    def lacks_allowed(self, host: Host, prefix: str) -> bool:
        return prefix not in self.allowed_ips(host)

    def answers(self, client: str, target: str, port: int, expected: tuple[str, ...]) -> bool:
        return self.exec(client, f"nc -w 5 {target} {port}") in expected

    def pod_prefix(self, node: str) -> str:
        return self.kubectl("get", "node", node, "-o", "jsonpath={.spec.podCIDR}")

    @pytest.mark.timeout(1500)
    def test_pods_services_dns_webhooks_and_departures(self) -> None:
        started = time.monotonic()
        build_dir = Path(tempfile.mkdtemp(prefix="hepto-webhook-", dir=self.data_dir))
        webhook_binary = build(build_dir / "webhook")
        for host in self.nodes:
            images = self.data_dir / self.cluster / host.name / "images"
            images.mkdir(parents=True)
            write_busybox_archive(images / "busybox.tar")
            write_webhook_archive(webhook_binary, images / "webhook.tar")

        # The outside's DNS server is the master's --dns: CoreDNS forwards to it.
        served = self.outside.spawn(
            [sys.executable, "-c", _DNS_SERVER, WORLD_NAME, str(self.outside.address)],
            stdout=(self.data_dir / "dns-server.log").open("wb"),
        )
        self.addCleanup(self.outside.kill, served)
        self.start(self.master, "--role", "master", "--dns", str(self.outside.address))
        for host in self.nodes:
            self.start_node(host)
        self.wait_ready(self.nodes)
        print(f"\nfigure: agents' start to three nodes Ready: {time.monotonic() - started:.1f} s")

        # Every pod reaches every other node's pod, over ICMPv6 and TCP.
        for index in (1, 2, 3):
            labels = {"app": "web"} if index > 1 else {}
            self.kubectl("apply", "-f", "-", stdin=json.dumps(listener(index, labels)))
        for name in ("p1", "p2", "p3"):
            wait_until(partial(self.pod_running, name), 120, 0.2, f"{name} Running")
        ips = {index: self.pod_ip(f"p{index}") for index in (1, 2, 3)}
        for index, address in ips.items():
            self.assertIn(ipaddress.IPv6Address(address), plan.pod_prefix(self.cluster))
            self.assertIn(ipaddress.IPv6Address(address), ipaddress.IPv6Network(
                self.pod_prefix(f"node{index}")))  # fmt: skip
        for client, server in itertools.permutations((1, 2, 3), 2):
            wait_until(
                partial(self.reaches, f"p{client}", ips[server], f"hello-{server}"),
                30,
                0.5,
                f"p{client} to reach p{server}",
            )

        # A Service whose pods are on node2 and node3, from node1's pod: by address and
        # by name, in its own namespace and from another.
        self.kubectl("apply", "-f", "-", stdin=json.dumps({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"},
                     "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]},
        }))  # fmt: skip
        cluster_ip = self.kubectl("get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")
        for target in (cluster_ip, "web", "web.default", "web.default.svc.cluster.local"):
            wait_until(
                partial(self.answers, "p1", target, 80, ("hello-2", "hello-3")),
                60,
                0.5,
                f"web as {target} from p1",
            )
        self.kubectl("create", "namespace", "other")
        self.kubectl("apply", "-n", "other", "-f", "-", stdin=json.dumps(pod("q1", "node1")))
        wait_until(
            lambda: self.kubectl("get", "pod", "-n", "other", "q1", "-o",
                                 "jsonpath={.status.phase}", check=False) == "Running",
            120, 0.2, "q1 Running",
        )  # fmt: skip
        answer = self.kubectl(
            "exec", "-n", "other", "q1", "--", "nc", "-w", "5", "web.default", "80", check=False
        )
        self.assertIn(answer, ("hello-2", "hello-3"))

        # The names themselves, asked of the kube-dns Service from a node: AAAA records,
        # an empty answer (not an error, not a timeout) for A.
        node1 = self.nodes[0]
        kubernetes = str(plan.kubernetes_service_address(self.cluster))
        self.assertEqual(
            self.addresses(node1, "kubernetes.default.svc.cluster.local"), [kubernetes]
        )
        self.assertEqual(self.addresses(node1, "web.default.svc.cluster.local"), [cluster_ip])
        empty = self.query(node1, "kubernetes.default.svc.cluster.local", "A")
        self.assertEqual((empty.get("rcode"), empty.get("answers")), (0, []), empty)
        self.assertLess(empty["seconds"], 2.0)
        empty = self.query(node1, WORLD_NAME, "A")
        self.assertEqual((empty.get("rcode"), empty.get("answers")), (0, []), empty)
        missing = self.query(node1, "nothing.default.svc.cluster.local")
        self.assertEqual(missing.get("rcode"), 3, missing)  # NXDOMAIN
        # Outside the cluster, through --dns; and from a pod, by its resolver.
        self.assertEqual(self.addresses(node1, WORLD_NAME), [str(self.outside.address)])
        pinged = self.exec("p1", f"ping -c 1 -W 5 {WORLD_NAME} >/dev/null && echo pong")
        self.assertEqual(pinged, "pong")

        # An admission webhook in a pod on node3, called by the apiserver of a master that
        # runs no kube-proxy.
        ca, certificate, key = certificates("webhook.default.svc")
        for manifest in manifests("node3", ca, certificate, key):
            self.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
        wait_until(
            lambda: self.kubectl("get", "pod", "webhook", "-o",
                                 'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
                                 check=False) == "True",
            120, 0.2, "the webhook's pod Ready",
        )  # fmt: skip
        label = {SELECTOR_LABEL: "yes"}
        wait_until(
            lambda: self.create_configmap("allowed-1", label) == "",
            60,
            1.0,
            "the webhook to allow allowed-1",
        )
        self.assertEqual(self.create_configmap("forbidden-2", {}), "")  # not the webhook's
        refusal = self.create_configmap("forbidden-3", label)
        self.assertIn("the test webhook refuses forbidden-3", refusal)
        logs = self.kubectl("logs", "webhook")
        self.assertIn("reviewed allowed-1", logs)
        self.assertIn("reviewed forbidden-3", logs)

        # The apiserver through the kubernetes Service, by name, as the webhook's pod's
        # service account (its token; the server checked against the cluster CA).
        ask = ["exec", "webhook", "--", "/webhook", "ask", "https://kubernetes.default.svc/api"]
        self.assertEqual(json.loads(self.kubectl(*ask))["kind"], "APIVersions")

        # kill -9 of node3's agent, and a new start: its pods are reachable again.
        node3 = self.nodes[2]
        self.agents["node3"].kill()
        restarted = time.monotonic()
        self.start_node(node3)
        wait_until(partial(self.node_ready, "node3"), READY_TIMEOUT, 0.5, "node3 Ready again")
        wait_until(partial(self.pod_running, "p3"), 120, 0.5, "p3 running again")
        wait_until(
            lambda: self.reaches("p1", self.pod_ip("p3"), "hello-3"),
            120,
            0.5,
            "p1 to reach p3 again",
        )
        print(f"figure: node3 restarted to p3 reachable: {time.monotonic() - restarted:.1f} s")

        # node3 leaves: its pod /64 leaves the allowed IPs of every member.
        prefix = self.pod_prefix("node3")
        for host in (self.master, *self.nodes[:2]):
            self.assertIn(prefix, self.allowed_ips(host), host.name)
        self.assertEqual(self.agents["node3"].stop(), 0)
        for host in (self.master, *self.nodes[:2]):
            wait_until(
                partial(self.lacks_allowed, host, prefix),
                60,
                0.5,
                f"node3's pods out of {host.name}'s allowed IPs",
            )
        self.assertEqual(self.exec("p1", f"nc -w 5 {ips[2]} 8080"), "hello-2")

    def create_configmap(self, name: str, labels: dict[str, str]) -> str:
        """Creates a ConfigMap: what kubectl says when it cannot, else nothing."""
        manifest = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "labels": labels},
        }
        try:
            self.kubectl("create", "-f", "-", stdin=json.dumps(manifest))
        except AssertionError as error:
            return str(error)
        return ""
