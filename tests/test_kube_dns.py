"""The cluster DNS as hepto writes it: CoreDNS's Corefile and the objects a master applies.

The real CoreDNS answering real pods is tested in ``test_node_agent.py``.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from hepto.kube import cluster_dns
from hepto.kube.api import APIError
from hepto.kube.coredns import corefile

MESH = ipaddress.IPv6Address("fd00:1:2:100::1")
UPSTREAM = (ipaddress.IPv6Address("2001:db8::53"), ipaddress.IPv6Address("2001:db8::54"))


class CorefileTests(SynchronousTestCase):
    def test_the_whole_corefile(self) -> None:
        self.assertEqual(
            corefile(MESH, "/d/pki/coredns.kubeconfig", UPSTREAM),
            ".:53 {\n"
            "    bind fd00:1:2:100::1\n"
            "    errors\n"
            "    ready [::1]:8181\n"
            "    cache 30\n"
            "    template IN A {\n"
            "        rcode NOERROR\n"
            "    }\n"
            "    kubernetes cluster.local ip6.arpa {\n"
            "        kubeconfig /d/pki/coredns.kubeconfig\n"
            "        fallthrough ip6.arpa\n"
            "        ttl 30\n"
            "    }\n"
            "    loop\n"
            "    forward . [2001:db8::53]:53 [2001:db8::54]:53\n"
            "}\n",
        )

    def test_no_upstream_no_forward(self) -> None:
        self.assertNotIn("forward", corefile(MESH, "/k", ()))


class ManifestTests(SynchronousTestCase):
    def test_the_service_has_the_dns_address_and_no_selector(self) -> None:
        manifest = cluster_dns.service(ipaddress.IPv6Address("fd00:1:2:300::a"))
        self.assertEqual(manifest.path, "/api/v1/namespaces/kube-system/services/kube-dns")
        spec = manifest.body["spec"]
        self.assertNotIn("selector", spec)
        self.assertEqual(spec["clusterIP"], "fd00:1:2:300::a")
        self.assertEqual(spec["ipFamilies"], ["IPv6"])
        self.assertEqual(
            sorted((port["protocol"], port["port"]) for port in spec["ports"]),
            [("TCP", 53), ("UDP", 53)],
        )
        self.assertEqual(manifest.body["metadata"]["labels"]["k8s-app"], "kube-dns")

    def test_the_endpoints_name_the_service_and_the_master(self) -> None:
        manifest = cluster_dns.endpoints("m1", MESH)
        self.assertEqual(
            manifest.path,
            "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices/kube-dns-m1",
        )
        body = manifest.body
        self.assertEqual(body["metadata"]["labels"]["kubernetes.io/service-name"], "kube-dns")
        # Not the endpointslice controllers' value: they would take it over or delete it.
        self.assertEqual(
            body["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
            "cluster-dns.hepto.dev",
        )
        self.assertEqual(
            body["endpoints"], [{"addresses": ["fd00:1:2:100::1"], "conditions": {"ready": True}}]
        )
        self.assertEqual(body["addressType"], "IPv6")
        # A slice's port names must be the Service's, or kube-proxy matches none.
        service_ports = cluster_dns.service(MESH).body["spec"]["ports"]
        self.assertEqual(
            [(port["name"], port["protocol"]) for port in body["ports"]],
            [(port["name"], port["protocol"]) for port in service_ports],
        )

    def test_coredns_may_read_what_it_watches_and_nothing_else(self) -> None:
        rules = cluster_dns.role().body["rules"]
        granted = {
            (group, resource, verb)
            for rule in rules
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
        self.assertEqual(
            granted,
            {
                ("", "services", "list"),
                ("", "services", "watch"),
                ("", "namespaces", "list"),
                ("", "namespaces", "watch"),
                ("discovery.k8s.io", "endpointslices", "list"),
                ("discovery.k8s.io", "endpointslices", "watch"),
            },
        )
        self.assertEqual(
            cluster_dns.binding().body["subjects"],
            [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "hepto:coredns"}],
        )


class Recording:
    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, str, str]] = []

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = ""
    ) -> Deferred[Any]:
        self.requests.append((method, path, content_type))
        answer = self.answers.pop(0) if self.answers else {}
        return fail(answer) if isinstance(answer, Exception) else succeed(answer)


def refusal(status: int, reason: str) -> APIError:
    return APIError("PATCH", "/x", status, reason, "no")


class ApplyTests(SynchronousTestCase):
    def test_server_side_apply_forced_by_hepto(self) -> None:
        api = Recording()
        self.successResultOf(cluster_dns.apply_all(api, [cluster_dns.role()], clock=Clock()))
        self.assertEqual(
            api.requests,
            [
                (
                    "PATCH",
                    "/apis/rbac.authorization.k8s.io/v1/clusterroles/hepto%3Acoredns"
                    "?fieldManager=hepto&force=true",
                    "application/apply-patch+yaml",
                )
            ],
        )

    def test_an_apiserver_not_up_yet_is_asked_again(self) -> None:
        clock = Clock()
        api = Recording(ConnectionRefusedError(), refusal(503, "ServiceUnavailable"))
        applying = cluster_dns.apply_all(
            api, [cluster_dns.role(), cluster_dns.binding()], clock=clock
        )
        self.assertNoResult(applying)
        clock.advance(1)
        self.assertNoResult(applying)
        clock.advance(2)
        self.successResultOf(applying)
        self.assertEqual(len(api.requests), 4)

    def test_a_refusal_ends_it(self) -> None:
        api = Recording(refusal(422, "Invalid"))
        applying = cluster_dns.apply_all(
            api, [cluster_dns.role(), cluster_dns.binding()], clock=Clock()
        )
        self.assertEqual(self.failureResultOf(applying, APIError).value.status, 422)
        self.assertEqual(len(api.requests), 1)
