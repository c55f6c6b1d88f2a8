"""A node's pod prefix: read from the CNI file containerd renders, published for the mesh."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from twisted.internet import inotify, task
from twisted.trial.unittest import SynchronousTestCase

from hepto import plan
from hepto.kube.pods import CNI_FILE, PodPrefixError, PodPrefixPublisher, pod_prefix_of
from hepto.mesh.reconcile import desired_mesh
from hepto.state import MemoryCluster

CLUSTER = "mycluster"
INSIDE = str(next(plan.pod_prefix(CLUSTER).subnets(new_prefix=64)))


def conflist(subnet: object) -> str:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "hepto",
            "plugins": [{"type": "bridge", "ipam": {"ranges": [[{"subnet": subnet}]]}}],
        }
    )


class ParseTests(SynchronousTestCase):
    def test_the_rendered_subnet(self) -> None:
        self.assertEqual(str(pod_prefix_of(conflist(INSIDE), CLUSTER)), INSIDE)

    def test_refusals(self) -> None:
        for text, words in (
            ("not json", "no host-local range"),
            (json.dumps({"plugins": []}), "no host-local range"),
            (conflist(42), "not a string"),
            (conflist("fd00::/64"), "outside the cluster's"),
            (conflist("{{.PodCIDR}}"), "not an IPv6 prefix"),
        ):
            error = self.assertRaises(PodPrefixError, pod_prefix_of, text, CLUSTER)
            self.assertIn(words, str(error))


class PublisherTests(SynchronousTestCase):
    def setUp(self) -> None:
        # No inotify on a fake clock: the watch looks every second instead.
        def spent(reactor: object) -> None:
            raise inotify.INotifyError("spent")

        self.patch(inotify, "INotify", spent)
        self.clock = task.Clock()
        work = Path(tempfile.mkdtemp(prefix="hk-pods-"))
        self.addCleanup(shutil.rmtree, work)
        self.directory = work / "net.d"
        self.cluster = MemoryCluster()
        self.node = self.cluster.join("node1", role="node")
        self.master = self.cluster.join("master", role="master")

    def publisher(self) -> PodPrefixPublisher:
        publisher = PodPrefixPublisher(self.node, CLUSTER, self.directory, self.clock)
        publisher.start()
        self.addCleanup(publisher.stop)
        return publisher

    def record(self, name: str) -> object:
        """``pod_prefix`` of ``name``'s record, as the master sees it."""
        member = self.master.members()[name]
        assert member.record is not None
        return member.record.get("pod_prefix")

    def test_published_once_containerd_writes_it(self) -> None:
        publisher = self.publisher()
        self.clock.advance(1)
        self.assertIsNone(self.record("node1"))
        (self.directory / CNI_FILE).write_text(conflist(INSIDE))
        self.clock.advance(1)
        self.assertEqual(self.record("node1"), INSIDE)
        self.assertEqual(str(publisher.prefix), INSIDE)

    def test_a_file_of_a_previous_run_is_read_at_once(self) -> None:
        self.directory.mkdir(parents=True)
        (self.directory / CNI_FILE).write_text(conflist(INSIDE))
        self.publisher()
        self.assertEqual(self.record("node1"), INSIDE)

    def test_a_bad_file_publishes_nothing(self) -> None:
        self.directory.mkdir(parents=True)
        (self.directory / CNI_FILE).write_text(conflist("fd00::/64"))
        publisher = self.publisher()
        self.assertIsNone(self.record("node1"))
        self.assertIsNone(publisher.prefix)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_the_mesh_routes_it(self) -> None:
        self.directory.mkdir(parents=True)
        (self.directory / CNI_FILE).write_text(conflist(INSIDE))
        self.publisher()
        self.node.publish(
            "wireguard",
            {"public_key": "A" * 43 + "=", "endpoint": "[2001:db8::2]:51820"},
        )
        desired = desired_mesh(CLUSTER, "master", True, "B" * 43 + "=", self.master.members())
        [peer] = desired.peers.values()
        self.assertIn(INSIDE, {str(network) for network in peer.allowed_ips})
        self.assertIn(INSIDE, {str(network) for network in desired.routes})
