"""The addressing plan: golden values, structure, and separation of clusters."""

from __future__ import annotations

import ipaddress
import itertools
import random
import string

from twisted.trial.unittest import SynchronousTestCase

from hepto import plan


class GoldenValuesTests(SynchronousTestCase):
    """These values are a compatibility promise: changing them splits every cluster."""

    def test_mycluster(self) -> None:
        info = plan.Plan("mycluster", "node1").as_dict()
        self.assertEqual(
            info,
            {
                "cluster": "mycluster",
                "name": "node1",
                "ula_prefix": "fdeb:e90d:a592::/48",
                "mesh_prefix": "fdeb:e90d:a592:100::/64",
                "mesh_address": "fdeb:e90d:a592:100:484c:ec37:439b:f9c",
                "apiserver_address": "fdeb:e90d:a592:100:51eb:f48b:29e3:481d",
                "pod_prefix": "fdeb:e90d:a592:8000::/49",
                "node_pod_prefix_length": 64,
                "service_prefix": "fdeb:e90d:a592:300::/112",
                "kubernetes_service_address": "fdeb:e90d:a592:300::1",
                "dns_address": "fdeb:e90d:a592:300::a",
            },
        )

    def test_other_names(self) -> None:
        self.assertEqual(
            str(plan.mesh_address("mycluster", "node2")), "fdeb:e90d:a592:100:9bd7:a998:22a0:1263"
        )
        self.assertEqual(str(plan.ula_prefix("prod.example")), "fd45:a9eb:a991::/48")
        self.assertEqual(
            str(plan.mesh_address("prod.example", "master-0")),
            "fd45:a9eb:a991:100:ec14:f140:87c1:df95",
        )
        self.assertEqual(
            str(plan.apiserver_address("prod.example")), "fd45:a9eb:a991:100:35f3:9930:db1d:90de"
        )


class StructureTests(SynchronousTestCase):
    def test_layout(self) -> None:
        cluster = "layout"
        ula = plan.ula_prefix(cluster)
        self.assertTrue(ula.subnet_of(ipaddress.IPv6Network("fd00::/8")))
        for prefix in (
            plan.mesh_prefix(cluster),
            plan.pod_prefix(cluster),
            plan.service_prefix(cluster),
        ):
            self.assertTrue(prefix.subnet_of(ula))
        self.assertEqual(plan.pod_prefix(cluster).prefixlen, 49)
        # Room for 32,768 nodes, within the controller manager's 16 bits of node IPAM.
        node_bits = plan.NODE_POD_PREFIX_LENGTH - plan.pod_prefix(cluster).prefixlen
        self.assertEqual(node_bits, 15)
        self.assertEqual(plan.service_prefix(cluster).prefixlen, 112)
        self.assertIn(plan.mesh_address(cluster, "a"), plan.mesh_prefix(cluster))
        self.assertIn(plan.apiserver_address(cluster), plan.mesh_prefix(cluster))
        self.assertIn(plan.dns_address(cluster), plan.service_prefix(cluster))
        self.assertEqual(
            plan.kubernetes_service_address(cluster),
            plan.service_prefix(cluster).network_address + 1,
        )

    def test_only_mesh_address_depends_on_the_node(self) -> None:
        first = plan.Plan("c", "one").as_dict()
        second = plan.Plan("c", "two").as_dict()
        differing = {key for key in first if first[key] != second[key]}
        self.assertEqual(differing, {"name", "mesh_address"})

    def test_without_a_name(self) -> None:
        self.assertIsNone(plan.Plan("c").as_dict()["mesh_address"])

    def test_prefixes_of_one_cluster_do_not_overlap(self) -> None:
        prefixes = [plan.mesh_prefix("c"), plan.pod_prefix("c"), plan.service_prefix("c")]
        for i, first in enumerate(prefixes):
            for second in prefixes[i + 1 :]:
                self.assertFalse(first.overlaps(second), (first, second))


class SeparationTests(SynchronousTestCase):
    def test_thousand_clusters_never_overlap(self) -> None:
        rng = random.Random(4193)
        names = {
            "".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(1, 20)))
            for _ in range(1000)
        }
        ulas = sorted(plan.ula_prefix(name) for name in names)
        self.assertEqual(len(ulas), len(names))
        for first, second in itertools.pairwise(ulas):
            self.assertFalse(first.overlaps(second), (first, second))

    def test_mesh_address_conflict(self) -> None:
        self.assertFalse(plan.mesh_address_conflict("c", "a", "a"))
        self.assertFalse(plan.mesh_address_conflict("c", "a", "b"))

    def test_mesh_address_conflict_detected(self) -> None:
        """A forced collision (patched hash) is reported, not shared."""
        original = plan._interface_id
        self.patch(
            plan,
            "_interface_id",
            lambda *parts: 42 if parts[0] == "hepto/node" else original(*parts),
        )
        # Addresses are remembered: forget those derived with the real hash, before and after.
        plan.mesh_address.cache_clear()
        self.addCleanup(plan.mesh_address.cache_clear)
        self.assertTrue(plan.mesh_address_conflict("c", "a", "b"))
