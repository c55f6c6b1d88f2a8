"""MeshService against MemoryCluster, a recording backend and a fake netlink, on a Clock."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from hepto import plan
from hepto.config import NodeConfig, parse_node_config
from hepto.machine import IllegalTransition
from hepto.mesh.backend import AddPeer, BackendUnavailable, RemovePeer, UpdatePeer
from hepto.mesh.greetings import GREETING_DELAY
from hepto.mesh.keys import KeyPair
from hepto.mesh.links import Links
from hepto.mesh.passes import PASSES, Passes, PassInput
from hepto.mesh.reconcile import Desired, host_network
from hepto.mesh.service import (
    PHASES,
    RESYNC_INTERVAL,
    MeshService,
    MeshSettings,
    Phase,
    PhaseInput,
    mesh_service,
)
from hepto.mesh.testing import FakeRtNetlink, RecordingBackend
from hepto.mesh.underlay import UNDERLAY_RETRY, Underlay, find_underlay
from hepto.mesh.userspace import UserspaceBackend
from hepto.observers import Observers
from hepto.state import ALIVE, DEAD, LEFT, SUSPECT, MemoryCluster, MemoryState

CLUSTER = "geo"
KEY = "5a" * 32


def wireguard(index: int, keys: KeyPair | None = None) -> dict[str, str]:
    keys = keys or KeyPair.generate()
    return {"public_key": keys.public_key, "endpoint": f"[2001:db8:1::{index}]:51820"}


class FakeReach:
    """Who reaches "me" unprompted, as the test says: a Reach without the knocking."""

    def __init__(self) -> None:
        self.unprompted: frozenset[str] = frozenset()
        self._observers: Observers[[frozenset[str]]] = Observers("reach")

    def subscribe(self, listener: Callable[[frozenset[str]], None]) -> Callable[[], None]:
        return self._observers.subscribe(listener)

    def set(self, *names: str) -> None:
        self.unprompted = frozenset(names)
        self._observers.notify(self.unprompted)


class RecordingGreeter:
    """Greetings by datagram, kept rather than sent."""

    def __init__(self) -> None:
        self.greeted: list[ipaddress.IPv6Address] = []
        self.closed = 0

    def greet(self, address: ipaddress.IPv6Address) -> None:
        self.greeted.append(address)

    def close(self) -> None:
        self.closed += 1


class Harness:
    """One node "me" of a MemoryCluster, its mesh service, and what it drives."""

    def __init__(self, case: SynchronousTestCase, is_master: bool = False, **kwargs: Any) -> None:
        self.cluster = MemoryCluster()
        self.state = self.cluster.join("me", role="master" if is_master else "node")
        self.clock = task.Clock()
        self.backend = kwargs.pop("backend", None) or RecordingBackend()
        self.ipr = FakeRtNetlink()
        self.ipr.make_link("hepto0", "wireguard", mtu=1420)
        self.underlay: Underlay | None = Underlay(ipaddress.IPv6Address("2001:db8:1::9"), 1500)
        self.identity = SigningKey.generate()
        backends = kwargs.pop("backends", None) or [lambda: self.backend]
        self.reach = FakeReach()
        self.greeter = RecordingGreeter()
        self.service = MeshService(
            MeshSettings(CLUSTER, "me", is_master),
            self.state,
            self.clock,
            keys=partial(KeyPair.from_identity, self.identity),
            backends=backends,
            links=Links(self.ipr, "hepto0"),
            underlay=lambda: self.underlay,
            reach=self.reach,
            greeter=self.greeter,  # type: ignore[arg-type]
        )
        case.addCleanup(self.stop)

    def start(self) -> None:
        self.service.startService()
        self.clock.advance(0)

    def stop(self) -> None:
        if self.service.running:
            self.service.stopService()

    def join(self, name: str, index: int, **data: Any) -> MemoryState:
        view = self.cluster.join(name, role="node", **data)
        self.clock.advance(0)
        return view

    def greeted(self) -> list[str]:
        """Whom the greeter greeted, by name, in order."""
        names = {plan.mesh_address(CLUSTER, name): name for name in self.state.members()}
        return [names[address] for address in self.greeter.greeted]

    def calls(self, kind: str) -> list[Any]:
        return [argument for name, argument in self.backend.calls if name == kind]

    def peer_names(self) -> set[str]:
        applied = self.service._applied
        assert applied is not None
        names = {key: spec.name for key, spec in applied.peers.items()}
        return {names[key] for key in self.backend.device.peers}


class StartTests(SynchronousTestCase):
    def test_start_configures_device_and_publishes_record(self) -> None:
        h = Harness(self)
        h.start()
        self.assertEqual(h.service.phase, "running")
        keys = h.service.keys
        assert keys is not None
        self.assertEqual(h.backend.device.private_key, keys.private_key)
        self.assertEqual(h.backend.device.listen_port, 51820)
        record = h.state.members()["me"].record
        assert record is not None
        self.assertEqual(
            record.get("wireguard"),
            {"public_key": keys.public_key, "endpoint": "[2001:db8:1::9]:51820"},
        )
        link = h.ipr.links[1]
        self.assertEqual(link.mtu, 1420, "1500 - 80")
        self.assertEqual(
            [entry[1] for entry in h.ipr.addresses], [str(plan.mesh_address(CLUSTER, "me"))]
        )
        self.assertIn((1, str(plan.mesh_prefix(CLUSTER).network_address), 64, 4), h.ipr.routes)

    def test_the_key_is_published_before_the_device_is_up(self) -> None:
        """A joiner's first record carries its key: each member fetches one record of
        it, not a second once wireguard-go is up."""
        pending: Deferred[None] = Deferred()

        class Slow(RecordingBackend):
            def start(self, recreated: Any) -> Deferred[None]:
                super().start(recreated)
                return pending

        h = Harness(self, backend=Slow())
        h.start()
        self.assertEqual(h.service.phase, "starting")
        record = h.state.members()["me"].record
        assert record is not None and h.service.keys is not None
        self.assertEqual(
            record.get("wireguard"),
            {"public_key": h.service.keys.public_key, "endpoint": "[2001:db8:1::9]:51820"},
        )
        version = record.version
        pending.callback(None)
        self.assertEqual(h.service.phase, "running")
        self.assertEqual(h.state.members()["me"].record.version, version)  # type: ignore[union-attr]

    def test_a_mesh_that_cannot_start_withdraws_its_key(self) -> None:
        """No device will ever answer: peers must not keep greeting one."""
        userspace = RecordingBackend(kind="userspace", unavailable="wireguard-go is missing")
        h = Harness(self, backends=[lambda: userspace])
        h.start()
        self.assertEqual(h.service.phase, "failed")
        record = h.state.members()["me"].record
        assert record is not None
        self.assertIsNone(record.get("wireguard"))

    def test_master_carries_the_apiserver_address(self) -> None:
        h = Harness(self, is_master=True)
        h.start()
        self.assertEqual(
            {entry[1] for entry in h.ipr.addresses},
            {str(plan.mesh_address(CLUSTER, "me")), str(plan.apiserver_address(CLUSTER))},
        )

    def test_restart_keeps_the_key_and_does_not_republish(self) -> None:
        h = Harness(self)
        h.start()
        version = h.state.members()["me"].record.version  # type: ignore[union-attr]
        h.stop()
        h.start()
        self.assertEqual(h.state.members()["me"].record.version, version)  # type: ignore[union-attr]

    def test_falls_back_to_the_next_backend_and_says_so(self) -> None:
        kernel = RecordingBackend(kind="kernel", unavailable="this kernel has no WireGuard")
        userspace = RecordingBackend(kind="userspace")
        with capturedLogs() as events:
            h = Harness(self, backends=[lambda: kernel, lambda: userspace], backend=userspace)
            h.start()
        self.assertEqual(h.service.backend, userspace)
        self.assertTrue(userspace.started)
        texts = [formatEvent(event) for event in events]
        self.assertIn(
            "WireGuard backend kernel unavailable (this kernel has no WireGuard); trying the next",
            texts,
        )
        self.assertIn("WireGuard backend: userspace for hepto0", texts)

    def test_no_backend_at_all_is_a_clear_failure(self) -> None:
        kernel = RecordingBackend(kind="kernel", unavailable="this kernel has no WireGuard")
        userspace = RecordingBackend(kind="userspace", unavailable="wireguard-go is missing")
        h = Harness(self, backends=[lambda: kernel, lambda: userspace])
        with capturedLogs() as events:
            h.start()
        self.assertEqual(h.service.phase, "failed")
        self.assertIn("wireguard-go is missing", h.service.error or "")
        self.assertEqual(
            [e["log_level"].name for e in events if "cannot start" in formatEvent(e)], ["critical"]
        )
        self.assertEqual(h.service.status()["error"], h.service.error)

    def test_waits_for_an_underlay_address(self) -> None:
        h = Harness(self)
        h.underlay = None
        h.start()
        self.assertEqual(h.service.phase, "starting")
        self.assertEqual(h.backend.calls, [])
        h.clock.advance(UNDERLAY_RETRY)
        self.assertEqual(h.backend.calls, [])
        h.underlay = Underlay(ipaddress.IPv6Address("2001:db8:1::9"), 1280)
        h.clock.advance(UNDERLAY_RETRY)
        self.assertEqual(h.service.phase, "running")
        self.assertEqual(h.ipr.links[1].mtu, 1280, "never below IPv6's minimum")

    def test_stop_while_starting_stops_the_backend(self) -> None:
        pending: Deferred[None] = Deferred()

        class Slow(RecordingBackend):
            def start(self, recreated: Any) -> Deferred[None]:
                super().start(recreated)
                return pending

        slow = Slow()
        h = Harness(self, backend=slow)
        h.start()
        self.assertEqual(h.service.phase, "starting")
        self.successResultOf(h.service.stopService())
        self.assertTrue(slow.stopped)
        self.assertEqual(h.service.phase, "stopped")


class ReconcileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.start()

    def test_members_become_peers(self) -> None:
        h = self.h
        a_keys = KeyPair.generate()
        h.join("a", 1, wireguard=wireguard(1, a_keys))
        h.join("b", 2, wireguard=wireguard(2))
        self.assertEqual(h.peer_names(), {"a", "b"})
        peer = h.backend.device.peers[a_keys.public_key]
        self.assertEqual(peer.endpoint, "[2001:db8:1::1]:51820")
        self.assertEqual(peer.allowed_ips, {host_network(plan.mesh_address(CLUSTER, "a"))})
        # "a" sorts before "me": it greets first, and we greet it a moment later.
        self.assertEqual(peer.keepalive, 0)
        h.clock.advance(GREETING_DELAY)
        self.assertEqual(h.backend.device.peers[a_keys.public_key].keepalive, 25)

    def keepalives(self) -> dict[str, int]:
        names = {spec.public_key: spec.name for spec in self.h.service.desired().peers.values()}
        return {names[key]: peer.keepalive for key, peer in self.h.backend.device.peers.items()}

    def test_keepalives_only_toward_who_does_not_reach_us_unprompted(self) -> None:
        h = self.h
        h.join("a", 1, wireguard=wireguard(1))
        h.join("b", 2, wireguard=wireguard(2))
        h.clock.advance(GREETING_DELAY)
        self.assertEqual(self.keepalives(), {"a": 25, "b": 25})
        # What Reach learns waits for the next pass: no pass of its own at every join.
        applied = len(h.calls("apply"))
        h.reach.set("a")
        h.clock.advance(0)
        self.assertEqual(len(h.calls("apply")), applied)
        h.clock.advance(RESYNC_INTERVAL)
        self.assertEqual(self.keepalives(), {"a": 0, "b": 25})
        # Known to reach us before it is a peer: no keepalive ever, a datagram greets it.
        h.reach.set("a", "c")
        h.join("c", 3, wireguard=wireguard(3))
        h.clock.advance(GREETING_DELAY)
        self.assertEqual(self.keepalives(), {"a": 0, "b": 25, "c": 0})
        self.assertEqual(h.greeted(), ["c"])
        h.clock.advance(RESYNC_INTERVAL)
        self.assertEqual(self.keepalives(), {"a": 0, "b": 25, "c": 0})
        h.reach.set("c")
        h.clock.advance(RESYNC_INTERVAL)
        self.assertEqual(self.keepalives(), {"a": 25, "b": 25, "c": 0})

    def test_a_burst_of_changes_makes_one_pass(self) -> None:
        h = self.h
        before = len(h.calls("apply"))
        for index, name in enumerate(("a", "b", "c"), 1):
            h.cluster.join(name, wireguard=wireguard(index))
        h.clock.advance(0)
        applied = h.calls("apply")[before:]
        self.assertEqual(len(applied), 1)
        self.assertEqual([type(change) for change in applied[0]], [AddPeer] * 3)

    def test_dead_member_loses_its_peer_and_gets_it_back(self) -> None:
        h = self.h
        h.join("a", 1, wireguard=wireguard(1))
        h.join("b", 2, wireguard=wireguard(2))
        h.cluster.set_status("a", SUSPECT)
        h.clock.advance(0)
        self.assertEqual(h.peer_names(), {"a", "b"}, "suspect is still a peer")
        h.cluster.set_status("a", DEAD)
        h.clock.advance(0)
        self.assertEqual(h.peer_names(), {"b"})
        self.assertIsInstance(h.calls("apply")[-1][0], RemovePeer)
        h.cluster.set_status("a", ALIVE)
        h.clock.advance(0)
        self.assertEqual(h.peer_names(), {"a", "b"})
        h.cluster.set_status("b", LEFT)
        h.clock.advance(0)
        self.assertEqual(h.peer_names(), {"a"})

    def test_nothing_changed_touches_nothing(self) -> None:
        h = self.h
        a = h.join("a", 1, wireguard=wireguard(1))
        calls, requests = len(h.backend.calls), len(h.ipr.requests)
        # Other services' keys, heartbeats of records: no I/O at all.
        a.publish("pki", {"csr": "..."})
        h.cluster.set_status("a", ALIVE)
        h.clock.advance(0)
        self.assertEqual(len(h.backend.calls), calls)
        self.assertEqual(len(h.ipr.requests), requests)

    def test_suspicions_and_other_keys_do_not_work_the_mesh_out_again(self) -> None:
        h = self.h
        a = h.join("a", 1, wireguard=wireguard(1))
        worked_out = []
        original = h.service.desired

        def desired() -> Desired:
            worked_out.append(1)
            return original()

        h.service.desired = desired  # type: ignore[method-assign]
        # What a lossy network does all day: suspected, cleared; certificates come and go.
        for _ in range(3):
            h.cluster.set_status("a", SUSPECT)
            h.clock.advance(0)
            h.cluster.set_status("a", ALIVE)
            h.clock.advance(0)
        a.publish("pki", {"csr": "..."})
        h.clock.advance(0)
        self.assertEqual(worked_out, [])
        h.cluster.set_status("a", DEAD)
        h.clock.advance(0)
        self.assertEqual(worked_out, [1])
        self.assertEqual(h.peer_names(), set())

    def test_resync_reads_but_changes_nothing(self) -> None:
        h = self.h
        h.join("a", 1, wireguard=wireguard(1))
        h.clock.advance(GREETING_DELAY)
        calls, requests = len(h.backend.calls), len(h.ipr.requests)
        h.clock.advance(RESYNC_INTERVAL)
        self.assertEqual(h.backend.calls[calls:], [("read", None)])
        self.assertEqual(h.ipr.requests[requests:], [])

    def test_a_new_peer_costs_no_read_and_no_look_at_the_link(self) -> None:
        """At every join, every member runs this pass: it only tells the device."""
        h = self.h
        h.join("a", 1, wireguard=wireguard(1))
        calls, dumps = len(h.backend.calls), h.ipr.dumps
        h.join("b", 2, wireguard=wireguard(2))
        self.assertEqual([name for name, _ in h.backend.calls[calls:]], ["apply"])
        self.assertEqual(h.ipr.dumps, dumps)
        # The status shows it all the same: the device holds what the pass told it.
        peers = {peer["name"]: peer for peer in h.service.status()["peers"]}
        self.assertEqual(set(peers), {"a", "b"})
        self.assertEqual(peers["b"]["endpoint"], "[2001:db8:1::2]:51820")
        self.assertEqual(peers["b"]["allowed_ips"], [f"{plan.mesh_address(CLUSTER, 'b')}/128"])

    def test_a_new_route_is_added_alone_and_the_resync_looks_at_the_link(self) -> None:
        h = self.h
        a = h.join("a", 1, wireguard=wireguard(1))
        mesh_route = (1, str(plan.mesh_prefix(CLUSTER).network_address), 64, 4)
        self.assertIn(mesh_route, h.ipr.routes)
        # Someone deletes the mesh's routes: a pass for a new peer does not notice...
        h.ipr.routes.clear()
        h.join("b", 2, wireguard=wireguard(2))
        self.assertEqual(h.ipr.routes, [])
        # ...nor does one that routes a new prefix: it adds that route, without a dump.
        pods = next(plan.pod_prefix(CLUSTER).subnets(new_prefix=64))
        dumps, requests = h.ipr.dumps, len(h.ipr.requests)
        a.publish("pod_prefix", str(pods))
        h.clock.advance(0)
        self.assertEqual(h.ipr.routes, [(1, str(pods.network_address), 64, 4)])
        self.assertEqual(h.ipr.dumps, dumps)
        self.assertEqual([name for name, _ in h.ipr.requests[requests:]], ["add_route"])
        # The resync looks at the whole link and repairs it.
        h.clock.advance(RESYNC_INTERVAL)
        self.assertIn(mesh_route, h.ipr.routes)
        self.assertIn((1, str(pods.network_address), 64, 4), h.ipr.routes)
        # A prefix that goes is removed alone; one already gone is no failure.
        h.ipr.routes.remove((1, str(pods.network_address), 64, 4))
        a.publish("pod_prefix", None)
        h.clock.advance(0)
        self.assertEqual(h.service.pass_failures, 0)
        self.assertEqual(h.ipr.requests[-1][0], "delete_route")
        self.assertIn(mesh_route, h.ipr.routes)

    def test_a_pass_of_many_changes_logs_one_line(self) -> None:
        h = self.h
        events: list[dict[str, Any]] = []
        h.service.log = Logger(observer=events.append)  # type: ignore[arg-type]
        names = [f"m{index}" for index in range(1, 11)]
        for index, name in enumerate(names, start=1):
            h.cluster.join(name, role="node", wireguard=wireguard(index))
        h.clock.advance(0)
        lines = [formatEvent(e) for e in events if e["log_format"].startswith("Mesh: ")]
        self.assertEqual(lines, [f"Mesh: added 10 peers: {', '.join(sorted(names))}"])
        del events[:]
        h.join("a", 11, wireguard=wireguard(11))
        (line,) = [formatEvent(e) for e in events if e["log_format"].startswith("Mesh: ")]
        self.assertTrue(line.startswith("Mesh: added peer a ("), line)

    def test_resync_repairs_a_hand_edit(self) -> None:
        h = self.h
        keys = KeyPair.generate()
        h.join("a", 1, wireguard=wireguard(1, keys))
        h.backend.device = type(h.backend.device)(h.backend.device.private_key, 51820, {})
        # A pass between resyncs trusts the device to hold what it was told...
        h.join("b", 2, wireguard=wireguard(2))
        self.assertNotIn(keys.public_key, h.backend.device.peers)
        # ...the resync reads it, and repairs it.
        h.clock.advance(RESYNC_INTERVAL)
        self.assertIn(keys.public_key, h.backend.device.peers)

    def test_roamed_endpoint_is_kept_while_allowed_ips_change(self) -> None:
        h = self.h
        keys = KeyPair.generate()
        a = h.join("a", 1, wireguard=wireguard(1, keys))
        h.backend.roam(keys.public_key, "[2001:db8:ffff::1]:4000")
        h.clock.advance(RESYNC_INTERVAL)
        self.assertEqual(
            h.backend.device.peers[keys.public_key].endpoint, "[2001:db8:ffff::1]:4000"
        )
        pods = next(plan.pod_prefix(CLUSTER).subnets(new_prefix=64))
        a.publish("pod_prefix", str(pods))
        h.clock.advance(0)
        (change,) = h.calls("apply")[-1]
        self.assertEqual(change, UpdatePeer(change.spec, endpoint=False))
        peer = h.backend.device.peers[keys.public_key]
        self.assertEqual(peer.endpoint, "[2001:db8:ffff::1]:4000")
        self.assertIn(pods, peer.allowed_ips)
        self.assertIn((1, str(pods.network_address), 64, 4), h.ipr.routes)

    def test_a_moved_node_gets_its_new_endpoint(self) -> None:
        h = self.h
        keys = KeyPair.generate()
        a = h.join("a", 1, wireguard=wireguard(1, keys))
        a.publish("wireguard", wireguard(7, keys))
        h.clock.advance(0)
        self.assertEqual(h.backend.device.peers[keys.public_key].endpoint, "[2001:db8:1::7]:51820")

    def test_recreated_device_is_configured_again(self) -> None:
        h = self.h
        h.join("a", 1, wireguard=wireguard(1))
        h.ipr.addresses.clear()
        h.ipr.routes.clear()
        h.backend.recreate()
        h.clock.advance(0)
        keys = h.service.keys
        assert keys is not None
        self.assertEqual(h.backend.device.private_key, keys.private_key)
        self.assertEqual(h.peer_names(), {"a"})
        self.assertEqual(len(h.ipr.addresses), 1)

    def test_failed_pass_is_retried(self) -> None:
        h = self.h
        h.backend.fail_next = OSError("socket went away")
        with capturedLogs() as events:
            h.join("a", 1, wireguard=wireguard(1))
        self.assertEqual(h.backend.device.peers, {})
        self.assertTrue(any("retrying in 1.0 s" in formatEvent(e) for e in events))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(h.service.status()["pass_failures"], 1)
        h.clock.advance(1)
        self.assertEqual(h.peer_names(), {"a"})
        self.assertEqual(h.service.status()["pass_failures"], 1)

    def test_backend_down_is_a_warning_and_a_retry(self) -> None:
        h = self.h
        h.backend.fail_next = BackendUnavailable("wireguard-go for hepto0 is not running")
        with capturedLogs() as events:
            h.join("a", 1, wireguard=wireguard(1))
        self.assertEqual(
            [formatEvent(e) for e in events if "failed" in formatEvent(e)],
            ["Mesh reconcile failed (wireguard-go for hepto0 is not running); retrying in 1.0 s"],
        )
        self.assertEqual(self.flushLoggedErrors(), [])
        h.clock.advance(1)
        self.assertEqual(h.peer_names(), {"a"})

    def test_bad_records_are_logged_once_and_counted(self) -> None:
        h = self.h
        with capturedLogs() as events:
            h.join("a", 1, wireguard={"public_key": "@@@", "endpoint": "[2001:db8::1]:1"})
            h.join("b", 2, wireguard=wireguard(2))
            h.clock.advance(RESYNC_INTERVAL * 3)
        warnings = [formatEvent(e) for e in events if "Leaving out" in formatEvent(e)]
        self.assertEqual(
            warnings, ["Leaving out of the mesh (in part) member a: public_key is not base64"]
        )
        status = h.service.status()
        self.assertEqual(status["drops"], {"bad_wireguard": 1})
        self.assertEqual(
            status["problems"],
            [{"member": "a", "kind": "bad_wireguard", "reason": "public_key is not base64"}],
        )
        self.assertEqual(h.peer_names(), {"b"})

    def test_status(self) -> None:
        h = self.h
        keys = KeyPair.generate()
        h.join("a", 1, wireguard=wireguard(1, keys))
        h.clock.advance(GREETING_DELAY)
        status = h.service.status()
        self.assertEqual(status["backend"], "recording")
        self.assertEqual(status["phase"], "running")
        self.assertEqual(status["endpoint"], "[2001:db8:1::9]:51820")
        self.assertEqual(status["mtu"], 1420)
        self.assertEqual(
            status["peers"],
            [
                {
                    "name": "a",
                    "public_key": keys.public_key,
                    "endpoint": "[2001:db8:1::1]:51820",
                    "allowed_ips": [f"{plan.mesh_address(CLUSTER, 'a')}/128"],
                    "persistent_keepalive": 25,
                    "last_handshake": None,
                    "rx_bytes": 0,
                    "tx_bytes": 0,
                }
            ],
        )
        self.assertEqual(status["as_of"], "1970-01-01T00:00:00Z")  # the read at the start
        import json

        json.dumps(status)

    def test_stop_stops_backend_and_listening(self) -> None:
        h = self.h
        self.successResultOf(defer.maybeDeferred(h.service.stopService))
        self.assertTrue(h.backend.stopped)
        calls = len(h.backend.calls)
        h.join("a", 1, wireguard=wireguard(1))
        h.clock.advance(RESYNC_INTERVAL * 2)
        self.assertEqual(len(h.backend.calls), calls)


class GreetingTests(SynchronousTestCase):
    """One end of a new tunnel greets at once, the other GREETING_DELAY later."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.start()
        self.keys: dict[str, KeyPair] = {}

    def join(self, name: str, index: int) -> None:
        self.keys[name] = KeyPair.generate()
        self.h.join(name, index, wireguard=wireguard(index, self.keys[name]))

    def keepalive(self, name: str) -> int:
        return self.h.backend.device.peers[self.keys[name].public_key].keepalive

    def test_the_end_whose_name_sorts_first_greets_as_it_adds(self) -> None:
        self.join("zed", 1)  # "me" < "zed": we greet
        self.join("ann", 2)  # "ann" < "me": ann greets, we wait
        added = {change.spec.name: change.spec.keepalive for change in self.h.calls("apply")[-1]}
        self.assertEqual(added, {"ann": 0})
        self.assertEqual((self.keepalive("zed"), self.keepalive("ann")), (25, 0))

    def test_a_peer_that_reaches_us_unprompted_is_greeted_by_a_datagram(self) -> None:
        h = self.h
        h.reach.set("zed", "ann")
        self.join("zed", 1)  # we greet first: at once, and it never gets a keepalive
        self.assertEqual(h.greeted(), ["zed"])
        self.join("ann", 2)  # ann greets first: we do a second later
        applied = len(h.calls("apply"))
        self.assertEqual((self.keepalive("zed"), self.keepalive("ann")), (0, 0))
        h.clock.advance(GREETING_DELAY * 0.99)
        self.assertEqual(h.greeted(), ["zed"])
        h.clock.advance(GREETING_DELAY * 0.01)
        self.assertEqual(h.greeted(), ["zed", "ann"])
        # No write to the device for it, now or at the next pass; no greeting is left.
        h.clock.advance(RESYNC_INTERVAL)
        self.assertEqual(len(h.calls("apply")), applied)
        self.assertEqual((self.keepalive("zed"), self.keepalive("ann")), (0, 0))
        self.assertEqual(h.greeted(), ["zed", "ann"])
        self.assertEqual(h.clock.getDelayedCalls(), [h.service._resync.call])  # type: ignore[union-attr]

    def test_the_other_end_greets_after_the_delay_with_a_keepalive(self) -> None:
        h = self.h
        self.join("ann", 1)  # not known to reach us: it keeps a keepalive, which greets
        applied = len(h.calls("apply"))
        h.clock.advance(GREETING_DELAY * 0.99)
        self.assertEqual((len(h.calls("apply")), self.keepalive("ann")), (applied, 0))
        h.clock.advance(GREETING_DELAY * 0.01)
        [[greeting]] = h.calls("apply")[applied:]
        self.assertIsInstance(greeting, UpdatePeer)
        self.assertEqual(self.keepalive("ann"), 25)
        self.assertEqual(h.greeted(), [])
        h.clock.advance(RESYNC_INTERVAL)
        self.assertEqual(self.keepalive("ann"), 25)
        self.assertEqual(h.clock.getDelayedCalls(), [h.service._resync.call])  # type: ignore[union-attr]

    def test_a_peer_that_comes_back_waits_for_its_greeting_again(self) -> None:
        h = self.h
        self.join("ann", 1)
        h.clock.advance(GREETING_DELAY)
        self.assertEqual(self.keepalive("ann"), 25)
        h.cluster.set_status("ann", DEAD)
        h.clock.advance(0)
        h.cluster.set_status("ann", ALIVE)
        h.clock.advance(0)
        self.assertEqual(self.keepalive("ann"), 0)
        h.clock.advance(GREETING_DELAY)
        self.assertEqual(self.keepalive("ann"), 25)

    def test_a_stop_forgets_the_greetings_due(self) -> None:
        h = self.h
        self.join("ann", 1)
        self.successResultOf(defer.maybeDeferred(h.service.stopService))
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(h.service._greetings.next_due(h.clock.seconds()), None)
        self.assertEqual(h.greeter.closed, 1)


def node_config(data_dir: Path, **raw: str) -> NodeConfig:
    return parse_node_config(
        {"cluster": CLUSTER, "name": "me", "key": KEY, "data-dir": str(data_dir), **raw},
        {},
        {"no-contain": True},
    )


class WiringTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ipr = FakeRtNetlink()
        eth = self.ipr.make_link("eth0", mtu=1400)
        self.ipr.addresses.append((eth.index, "2001:db8::6", 64, 0x80))
        self.data = Path(self.mktemp())

    def test_underlay_from_ip(self) -> None:
        config = node_config(self.data, ip="2001:db8::6/64")
        self.assertEqual(
            find_underlay(self.ipr, config),
            Underlay(ipaddress.IPv6Address("2001:db8::6"), 1400),
        )

    def test_underlay_from_iface(self) -> None:
        config = node_config(self.data, iface="eth0")
        if_inet6 = Path(self.mktemp())
        if_inet6.write_text("20010db8000000000000000000000006 02 40 00 80     eth0\n")
        self.assertEqual(
            find_underlay(self.ipr, config, if_inet6),
            Underlay(ipaddress.IPv6Address("2001:db8::6"), 1400),
        )
        if_inet6.write_text("fe80000000000000000000000000000a 02 40 20 80     eth0\n")
        self.assertIsNone(find_underlay(self.ipr, config, if_inet6), "no address yet")

    def test_underlay_address_on_no_link_assumes_ethernet(self) -> None:
        config = node_config(self.data, ip="2001:db8::99/64")
        with capturedLogs() as events:
            underlay = find_underlay(self.ipr, config)
        self.assertEqual(underlay, Underlay(ipaddress.IPv6Address("2001:db8::99"), 1500))
        self.assertIn("assuming 1500", formatEvent(events[0]))

    def test_mesh_service_of_a_node(self) -> None:
        config = node_config(self.data, ip="2001:db8::6/64", role="full")
        identity = SigningKey.generate()
        service = mesh_service(config, MemoryCluster().join("me"), task.Clock(), identity)
        self.assertEqual(service.name, "mesh")
        self.assertEqual(service._make_keys(), KeyPair.from_identity(identity))
        self.assertEqual(service.settings, MeshSettings(CLUSTER, "me", True))
        kinds = [make() for make in service._backend_factories]
        self.assertEqual([backend.kind for backend in kinds], ["kernel", "userspace"])
        userspace = kinds[1]
        assert isinstance(userspace, UserspaceBackend)
        self.assertEqual(userspace.socket, config.node_dir / "wireguard" / "hepto0.sock")


class HeldReads(RecordingBackend):
    """Reads that answer only when the test says: a pass that stays running."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Deferred[Any]] = []
        self.holding = False

    def read(self) -> Deferred[Any]:
        if not self.holding:
            return super().read()
        held: Deferred[Any] = Deferred()
        self.held.append(held)
        return held

    def answer(self) -> None:
        self.held.pop(0).callback(self.device)


class TransitionTests(SynchronousTestCase):
    """The tables of the mesh's phases and passes, and what they forbid."""

    def test_every_phase_and_every_pass_state_can_be_stopped_and_wished_a_pass(self) -> None:
        for phase in Phase:
            self.assertIn((phase, PhaseInput.STOP), PHASES.table, phase)
            self.assertIn((phase, PhaseInput.WANTED), PHASES.table, phase)
        for passes in Passes:
            self.assertIn((passes, PassInput.STOP), PASSES.table, passes)
            self.assertIn((passes, PassInput.WANTED), PASSES.table, passes)
            after, _ = PASSES.table[passes, PassInput.STOP]
            self.assertIn(after, (Passes.IDLE, Passes.RUNNING), "nothing timed after a stop")

    def test_starting_a_running_mesh_raises(self) -> None:
        h = Harness(self)
        h.start()
        self.assertRaises(IllegalTransition, h.service.startService)
        self.assertEqual(h.service.phase, "running")

    def pass_running(self) -> tuple[Harness, HeldReads]:
        """A running mesh whose (forced) pass waits for the device to answer."""
        backend = HeldReads()
        h = Harness(self, backend=backend)
        h.start()
        backend.holding = True
        h.service._wanted(force=True)
        h.clock.advance(0)
        self.assertEqual(len(backend.held), 1, "a pass runs, reading the device")
        return h, backend

    def test_wishes_during_a_pass_make_one_pass_after_it(self) -> None:
        h, backend = self.pass_running()
        for _ in range(3):
            h.service._wanted(force=True)
        h.clock.advance(0)
        self.assertEqual(len(backend.held), 1, "never two passes at once")
        backend.answer()
        h.clock.advance(0)
        self.assertEqual(len(backend.held), 1, "one more pass for the three wishes")
        backend.answer()
        h.clock.advance(0)
        self.assertEqual(backend.held, [])

    def test_a_pass_running_at_the_stop_asks_for_no_other(self) -> None:
        h, backend = self.pass_running()
        h.service._wanted(force=True)  # another, wanted after this one
        h.service.stopService()
        backend.answer()
        h.clock.advance(0)
        self.assertEqual(backend.held, [])
        self.assertEqual(h.clock.getDelayedCalls(), [])
