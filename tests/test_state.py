"""The cluster view services consume, and its in-memory implementation."""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase

from hepto.state import ALIVE, DEAD, Change, MemoryCluster, Record


class MemoryClusterTests(SynchronousTestCase):
    def test_members_see_each_other(self) -> None:
        cluster = MemoryCluster()
        a = cluster.join("a", role="master")
        b = cluster.join("b", role="node")
        self.assertEqual(set(a.members()), {"a", "b"})
        self.assertEqual(set(b.members()), {"a", "b"})
        record = b.members()["a"].record
        assert record is not None
        self.assertEqual((record.version, record.get("role")), (1, "master"))

    def test_publish_and_subscribe(self) -> None:
        cluster = MemoryCluster()
        a, b = cluster.join("a"), cluster.join("b")
        changes: list[Change] = []
        b.subscribe(changes.append)
        a.publish("wireguard", {"public_key": "k"})
        a.publish("wireguard", None)
        versions = [c.new.record.version for c in changes if c.new and c.new.record]
        self.assertEqual(versions, [2, 3])
        last = changes[-1].new
        assert last is not None and last.record is not None
        self.assertNotIn("wireguard", last.record.data)

    def test_status_changes(self) -> None:
        cluster = MemoryCluster()
        a = cluster.join("a")
        cluster.join("b")
        cluster.set_status("b", DEAD)
        self.assertEqual(a.members()["b"].status, DEAD)
        self.assertFalse(a.members()["b"].reachable)
        self.assertTrue(a.members()["a"].reachable)

    def test_an_older_record_never_replaces_a_newer_one(self) -> None:
        cluster = MemoryCluster()
        a = cluster.join("a")
        a.publish("k", 1)
        older = attrs.evolve(a.members()["a"], record=Record("a", 1, {}))
        a._learn(older)
        record = a.members()["a"].record
        assert record is not None
        self.assertEqual(record.version, 2)


class NotifierTests(SynchronousTestCase):
    def test_a_failing_listener_does_not_stop_the_others(self) -> None:
        cluster = MemoryCluster()
        a = cluster.join("a")
        seen: list[str] = []

        def broken(change: Change) -> None:
            raise RuntimeError("a service bug")

        a.subscribe(broken)
        a.subscribe(lambda change: seen.append(change.name))
        a.publish("k", 1)
        self.assertEqual(seen, ["a"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_changes_made_by_listeners_arrive_in_order(self) -> None:
        cluster = MemoryCluster()
        a = cluster.join("a")
        order: list[int] = []

        def react(change: Change) -> None:
            assert change.new is not None and change.new.record is not None
            order.append(change.new.record.version)
            if change.new.record.version == 2:
                a.publish("k", "again")  # re-entrant: delivered after this round

        a.subscribe(react)
        a.subscribe(lambda change: order.append(-1))
        a.publish("k", "first")
        self.assertEqual(order, [2, -1, 3, -1])

    def test_unsubscribe(self) -> None:
        a = MemoryCluster().join("a")
        seen: list[Change] = []
        unsubscribe = a.subscribe(seen.append)
        unsubscribe()
        unsubscribe()
        a.publish("k", 1)
        self.assertEqual(seen, [])
        self.assertEqual(a.members()["a"].status, ALIVE)
