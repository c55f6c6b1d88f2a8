"""The desired mesh from membership, and the changes from a device's state to it."""

from __future__ import annotations

import ipaddress
import itertools

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from twisted.trial.unittest import SynchronousTestCase

from hepto import plan
from hepto.config import Endpoint
from hepto.mesh.backend import (
    AddPeer,
    DeviceStatus,
    PeerSpec,
    PeerStatus,
    RemovePeer,
    UpdatePeer,
)
from hepto.mesh.keys import KeyPair
from hepto.mesh.reconcile import (
    DEFAULT_KEEPALIVE,
    MINIMUM_MTU,
    Candidates,
    Desired,
    Problem,
    _Claims,
    after_changes,
    concerns_mesh,
    desired_mesh,
    host_network,
    mesh_mtu,
    plan_peer_changes,
)
from hepto.state import ALIVE, DEAD, LEFT, SUSPECT, Change, Member, Record

CLUSTER = "geo"
#: What every member routes into the mesh: its /64, and the service prefix.
BASE_ROUTES = {plan.mesh_prefix(CLUSTER), plan.service_prefix(CLUSTER)}
KEYS = {name: KeyPair.generate() for name in ("me", "a", "b", "c")}


def endpoint(index: int, port: int = 51820) -> Endpoint:
    return Endpoint(ipaddress.IPv6Address(f"2001:db8:1::{index}"), port)


def member(name: str, index: int, status: str = ALIVE, **data: object) -> Member:
    value = {"public_key": KEYS[name].public_key, "endpoint": str(endpoint(index))}
    return Member(name, status, Record(name, 1, {"wireguard": value, **data}))


def pods(index: int) -> ipaddress.IPv6Network:
    return next(itertools.islice(plan.pod_prefix(CLUSTER).subnets(new_prefix=64), index, None))


def mesh_host(name: str) -> ipaddress.IPv6Network:
    return host_network(plan.mesh_address(CLUSTER, name))


def desired(*members: Member, is_master: bool = False) -> Desired:
    everyone = {"me": member("me", 9), **{m.name: m for m in members}}
    return desired_mesh(CLUSTER, "me", is_master, KEYS["me"].public_key, everyone)


class DesiredMeshTests(SynchronousTestCase):
    def test_reachable_members_with_a_key_are_peers(self) -> None:
        result = desired(member("a", 1), member("b", 2, SUSPECT))
        self.assertEqual(
            result.peers[KEYS["a"].public_key],
            PeerSpec(
                "a",
                KEYS["a"].public_key,
                endpoint(1),
                frozenset({mesh_host("a")}),
                DEFAULT_KEEPALIVE,
            ),
        )
        self.assertEqual(
            {spec.name for spec in result.peers.values()}, {"a", "b"}, "suspect stays a peer"
        )
        self.assertEqual(result.routes, frozenset(BASE_ROUTES))
        self.assertEqual(result.problems, frozenset())

    def test_dead_and_left_members_are_not_peers(self) -> None:
        result = desired(member("a", 1, DEAD), member("b", 2, LEFT), member("c", 3))
        self.assertEqual([spec.name for spec in result.peers.values()], ["c"])

    def test_member_without_wireguard_key_is_quietly_skipped(self) -> None:
        bare = Member("a", ALIVE, Record("a", 1, {"role": "node"}))
        result = desired(bare, Member("b", ALIVE, None))
        self.assertEqual(result.peers, {})
        self.assertEqual(result.problems, frozenset())

    def test_self_is_never_a_peer(self) -> None:
        self.assertEqual(desired().peers, {})

    def test_master_peer_carries_the_apiserver_address(self) -> None:
        result = desired(member("a", 1, role="master"), member("b", 2, role="full"))
        apiserver = host_network(plan.apiserver_address(CLUSTER))
        self.assertEqual(
            result.peers[KEYS["a"].public_key].allowed_ips,
            frozenset({mesh_host("a"), apiserver}),
        )
        # One address cannot sit behind two peers: the first by name keeps it.
        self.assertEqual(result.peers[KEYS["b"].public_key].allowed_ips, {mesh_host("b")})
        self.assertEqual(result.problems, {Problem("b", "overlap", f"{apiserver} overlaps a's")})

    def test_when_this_node_is_master_no_peer_gets_the_apiserver_address(self) -> None:
        result = desired(member("a", 1, role="master"), is_master=True)
        self.assertEqual(result.peers[KEYS["a"].public_key].allowed_ips, {mesh_host("a")})
        self.assertEqual(len(result.problems), 1)

    def test_pod_prefix_is_allowed_and_routed(self) -> None:
        result = desired(member("a", 1, pod_prefix=str(pods(5))))
        self.assertEqual(result.peers[KEYS["a"].public_key].allowed_ips, {mesh_host("a"), pods(5)})
        self.assertEqual(result.routes, {*BASE_ROUTES, pods(5)})

    def test_pod_prefix_outside_the_cluster_is_dropped_but_the_peer_stays(self) -> None:
        result = desired(member("a", 1, pod_prefix="::/0"))
        self.assertEqual(result.peers[KEYS["a"].public_key].allowed_ips, {mesh_host("a")})
        self.assertEqual(result.routes, BASE_ROUTES)
        (problem,) = result.problems
        self.assertIn("outside the cluster", problem.reason)

    def test_overlapping_pod_prefixes_go_to_the_first_member_by_name(self) -> None:
        result = desired(
            member("b", 2, pod_prefix=str(pods(1))), member("a", 1, pod_prefix=str(pods(1)))
        )
        self.assertIn(pods(1), result.peers[KEYS["a"].public_key].allowed_ips)
        self.assertNotIn(pods(1), result.peers[KEYS["b"].public_key].allowed_ips)

    def test_own_pod_prefix_is_never_given_to_a_peer(self) -> None:
        me = member("me", 9, pod_prefix=str(pods(3)))
        result = desired_mesh(
            CLUSTER,
            "me",
            False,
            KEYS["me"].public_key,
            {"me": me, "a": member("a", 1, pod_prefix=str(pods(3)))},
        )
        self.assertEqual(result.peers[KEYS["a"].public_key].allowed_ips, {mesh_host("a")})

    def test_malformed_records_are_reported_not_raised(self) -> None:
        broken = {
            "a": "not an object",
            "b": {"public_key": "short", "endpoint": "[2001:db8::1]:1"},
            "c": {"public_key": KEYS["c"].public_key, "endpoint": "2001:db8::1"},
        }
        members = [
            Member(name, ALIVE, Record(name, 1, {"wireguard": v})) for name, v in broken.items()
        ]
        result = desired(*members)
        self.assertEqual(result.peers, {})
        self.assertEqual({problem.member for problem in result.problems}, {"a", "b", "c"})

    def test_a_public_key_used_twice_goes_to_the_first_member_by_name(self) -> None:
        copycat = Member(
            "b",
            ALIVE,
            Record(
                "b",
                1,
                {"wireguard": {"public_key": KEYS["a"].public_key, "endpoint": "[2001:db8::2]:1"}},
            ),
        )
        result = desired(copycat, member("a", 1))
        self.assertEqual([spec.name for spec in result.peers.values()], ["a"])
        self.assertEqual(
            result.problems, {Problem("b", "duplicate_key", "public key already used by a")}
        )

    def test_a_key_bound_to_its_author_s_identity_is_taken(self) -> None:
        identity = SigningKey.generate()
        value = {
            "public_key": KeyPair.from_identity(identity).public_key,
            "endpoint": str(endpoint(1)),
        }
        signed = Member(
            "a", ALIVE, Record("a", 1, {"wireguard": value}, bytes(identity.verify_key))
        )
        self.assertEqual([spec.name for spec in desired(signed).peers.values()], ["a"])

    def test_another_member_s_key_is_refused_whatever_the_names(self) -> None:
        # The thief is first by name: under the old tie-break it kept the victim's peer.
        victim_identity, thief_identity = SigningKey.generate(), SigningKey.generate()
        stolen = KeyPair.from_identity(victim_identity).public_key
        victim = Member(
            "b",
            ALIVE,
            Record(
                "b",
                1,
                {"wireguard": {"public_key": stolen, "endpoint": str(endpoint(2))}},
                bytes(victim_identity.verify_key),
            ),
        )
        thief = Member(
            "a",
            ALIVE,
            Record(
                "a",
                1,
                {"wireguard": {"public_key": stolen, "endpoint": str(endpoint(1))}},
                bytes(thief_identity.verify_key),
            ),
        )
        result = desired(thief, victim)
        self.assertEqual([spec.name for spec in result.peers.values()], ["b"])
        self.assertEqual(result.peers[stolen].endpoint, endpoint(2))
        self.assertEqual(
            result.problems,
            {Problem("a", "foreign_key", "not the WireGuard key of its identity")},
        )

    def test_own_public_key_in_another_record_is_refused(self) -> None:
        thief = Member(
            "a",
            ALIVE,
            Record(
                "a",
                1,
                {"wireguard": {"public_key": KEYS["me"].public_key, "endpoint": "[2001:db8::2]:1"}},
            ),
        )
        self.assertEqual(desired(thief).peers, {})


_A_WIREGUARD = {"public_key": KEYS["a"].public_key, "endpoint": str(endpoint(1))}
_A_WIREGUARD = {"public_key": KEYS["a"].public_key, "endpoint": str(endpoint(1))}
#: What a member's entry can become at a step: gone, or one record among several.
_VARIANTS: list[Member | None] = [None]
for _index, _name in enumerate(("a", "b", "c")):
    _VARIANTS += [
        member(_name, _index + 1),
        member(_name, _index + 1, pod_prefix=str(pods(_index))),
        member(_name, _index + 1, pod_prefix=str(pods(7))),  # two may claim it
        member(_name, _index + 1, role="master"),
        member(_name, _index + 1, DEAD, pod_prefix=str(pods(_index))),
        member(_name, _index + 1, pod_prefix="::/0"),
        Member(_name, ALIVE, Record(_name, 2, {"wireguard": {"public_key": "nope"}})),
        # The same key as "a": a duplicate unless it is a's own.
        Member(_name, ALIVE, Record(_name, 3, {"wireguard": _A_WIREGUARD})),
    ]


class CandidatesKeptTests(SynchronousTestCase):
    """desired_mesh with what earlier passes took of each record, against one without."""

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(_VARIANTS),
                st.sampled_from([None, frozenset({"a"}), frozenset({"a", "b", "c"})]),
                st.frozensets(st.sampled_from(["a", "b", "c"])),
            ),
            min_size=1,
            max_size=12,
        )
    )
    def test_same_answer_as_from_scratch(
        self, steps: list[tuple[Member | None, frozenset[str] | None, frozenset[str]]]
    ) -> None:
        everyone = {"me": member("me", 9, pod_prefix=str(pods(8)))}
        candidates: Candidates = {}
        for variant, masters, unprompted in steps:
            if variant is not None:
                everyone[variant.name] = variant
            elif len(everyone) > 1:
                everyone.pop(sorted(everyone)[-1] if sorted(everyone)[-1] != "me" else "a", None)
            arguments = (CLUSTER, "me", False, KEYS["me"].public_key, everyone)
            kept = desired_mesh(*arguments, 25, masters, unprompted, candidates)
            self.assertEqual(kept, desired_mesh(*arguments, 25, masters, unprompted))
            self.assertLessEqual(set(candidates), set(everyone))

    def test_an_unchanged_peer_is_the_same_object(self) -> None:
        # The pass compares its result with the last one's: identical peers compare at once.
        everyone = {m.name: m for m in (member("me", 9), member("a", 1), member("b", 2))}
        candidates: Candidates = {}
        arguments = (CLUSTER, "me", False, KEYS["me"].public_key, everyone)
        first = desired_mesh(*arguments, candidates=candidates)
        everyone["b"] = member("b", 2, pod_prefix=str(pods(2)))
        second = desired_mesh(*arguments, candidates=candidates)
        a, b = KEYS["a"].public_key, KEYS["b"].public_key
        self.assertIs(second.peers[a], first.peers[a])
        self.assertIsNot(second.peers[b], first.peers[b])
        self.assertEqual(second.peers[b].allowed_ips, {mesh_host("b"), pods(2)})
        third = desired_mesh(*arguments, unprompted={"a"}, candidates=candidates)
        self.assertEqual(third.peers[a].keepalive, 0)
        self.assertIs(third.peers[b], second.peers[b])


def status(spec: PeerSpec, endpoint_text: str | None = None, **changes: object) -> PeerStatus:
    values: dict[str, object] = {
        "public_key": spec.public_key,
        "endpoint": str(spec.endpoint) if endpoint_text is None else endpoint_text,
        "allowed_ips": spec.allowed_ips,
        "keepalive": spec.keepalive,
    }
    values.update(changes)
    return PeerStatus(**values)  # type: ignore[arg-type]


def spec(name: str, index: int, *networks: ipaddress.IPv6Network) -> PeerSpec:
    return PeerSpec(
        name, KEYS[name].public_key, endpoint(index), frozenset({mesh_host(name), *networks}), 25
    )


class PlanPeerChangesTests(SynchronousTestCase):
    def test_nothing_to_do(self) -> None:
        a, b = spec("a", 1), spec("b", 2)
        desired = {a.public_key: a, b.public_key: b}
        actual = {a.public_key: status(a), b.public_key: status(b)}
        self.assertEqual(plan_peer_changes(desired, actual, desired), [])

    def test_add(self) -> None:
        a = spec("a", 1)
        self.assertEqual(plan_peer_changes({a.public_key: a}, {}, {}), [AddPeer(a)])

    def test_remove(self) -> None:
        a = spec("a", 1)
        self.assertEqual(
            plan_peer_changes({}, {a.public_key: status(a)}, {a.public_key: a}),
            [RemovePeer(a.public_key, "a")],
        )

    def test_remove_an_unknown_peer(self) -> None:
        stranger = KeyPair.generate().public_key
        self.assertEqual(
            plan_peer_changes({}, {stranger: status(spec("a", 1), public_key=stranger)}, {}),
            [RemovePeer(stranger, None)],
        )

    def test_update_allowed_ips_keeps_a_roamed_endpoint(self) -> None:
        before = spec("a", 1)
        after = spec("a", 1, ipaddress.IPv6Network("fd00:200::/64"))
        roamed = status(before, "[2001:db8:ffff::7]:4242")
        self.assertEqual(
            plan_peer_changes(
                {after.public_key: after}, {after.public_key: roamed}, {before.public_key: before}
            ),
            [UpdatePeer(after, endpoint=False)],
        )

    def test_update_keepalive(self) -> None:
        a = spec("a", 1)
        self.assertEqual(
            plan_peer_changes(
                {a.public_key: a}, {a.public_key: status(a, keepalive=0)}, {a.public_key: a}
            ),
            [UpdatePeer(a, endpoint=False)],
        )

    def test_roaming_alone_is_left_alone(self) -> None:
        a = spec("a", 1)
        roamed = status(a, "[2001:db8:ffff::7]:4242")
        self.assertEqual(
            plan_peer_changes({a.public_key: a}, {a.public_key: roamed}, {a.public_key: a}), []
        )

    def test_a_new_advertised_endpoint_is_set(self) -> None:
        before, after = spec("a", 1), spec("a", 2)
        self.assertEqual(
            plan_peer_changes(
                {after.public_key: after},
                {after.public_key: status(before)},
                {before.public_key: before},
            ),
            [UpdatePeer(after, endpoint=True)],
        )

    def test_a_peer_without_endpoint_gets_one(self) -> None:
        a = spec("a", 1)
        self.assertEqual(
            plan_peer_changes(
                {a.public_key: a}, {a.public_key: status(a, endpoint=None)}, {a.public_key: a}
            ),
            [UpdatePeer(a, endpoint=True)],
        )

    def test_first_pass_over_an_existing_device_sets_differing_endpoints(self) -> None:
        a = spec("a", 1)
        self.assertEqual(
            plan_peer_changes({a.public_key: a}, {a.public_key: status(a, "[2001:db8::99]:1")}, {}),
            [UpdatePeer(a, endpoint=True)],
        )

    def test_removals_come_first(self) -> None:
        a, b = spec("a", 1), spec("b", 2)
        changes = plan_peer_changes({b.public_key: b}, {a.public_key: status(a)}, {})
        self.assertEqual(changes, [RemovePeer(a.public_key, None), AddPeer(b)])

    @given(
        st.sets(st.sampled_from(["a", "b", "c"])),
        st.sets(st.sampled_from(["a", "b", "c"])),
    )
    def test_applying_the_plan_reaches_the_desired_peers(
        self, wanted: set[str], present: set[str]
    ) -> None:
        specs = {name: spec(name, i) for i, name in enumerate(["a", "b", "c"], 1)}
        desired = {specs[n].public_key: specs[n] for n in wanted}
        actual = {specs[n].public_key: status(specs[n], keepalive=0) for n in present}
        for change in plan_peer_changes(desired, actual, {}):
            if isinstance(change, RemovePeer):
                del actual[change.public_key]
            else:
                actual[change.spec.public_key] = status(change.spec)
        self.assertEqual(set(actual), set(desired))
        self.assertEqual(plan_peer_changes(desired, actual, desired), [])


class AfterChangesTests(SynchronousTestCase):
    """The device as a pass leaves it, for the status, without a second read."""

    def test_what_each_change_leaves(self) -> None:
        a, b, c = spec("a", 1), spec("b", 2), spec("c", 3)
        roamed = status(a, "[2001:db8:ffff::1]:4000", last_handshake=1000.0, rx_bytes=7)
        device = DeviceStatus("key", 51820, {a.public_key: roamed, b.public_key: status(b)})
        moved_a = attrs.evolve(a, allowed_ips=a.allowed_ips | {pods(1)})
        after = after_changes(
            device, [RemovePeer(b.public_key, "b"), UpdatePeer(moved_a, False), AddPeer(c)]
        )
        self.assertEqual(set(after.peers), {a.public_key, c.public_key})
        # An update keeps what the device learnt: the roamed endpoint, handshakes, bytes.
        self.assertEqual(
            after.peers[a.public_key],
            attrs.evolve(roamed, allowed_ips=moved_a.allowed_ips),
        )
        self.assertEqual(after.peers[c.public_key], status(c))
        self.assertEqual((after.private_key, after.listen_port), ("key", 51820))
        # An update that moves the endpoint sets it.
        moved = attrs.evolve(a, endpoint=endpoint(9))
        after = after_changes(device, [UpdatePeer(moved, True)])
        self.assertEqual(after.peers[a.public_key].endpoint, str(endpoint(9)))
        self.assertEqual(after.peers[a.public_key].last_handshake, 1000.0)
        # An update of a peer the device lacks changes nothing (update_only).
        self.assertEqual(after_changes(device, [UpdatePeer(c, True)]), device)


class MTUTests(SynchronousTestCase):
    def test_overhead_is_80_bytes(self) -> None:
        self.assertEqual(mesh_mtu(1500), 1420)
        self.assertEqual(mesh_mtu(1400), 1320)

    def test_never_below_ipv6_minimum(self) -> None:
        self.assertEqual(mesh_mtu(1300), MINIMUM_MTU)
        self.assertEqual(mesh_mtu(576), MINIMUM_MTU)


class ConcernsMeshTests(SynchronousTestCase):
    def test_what_the_mesh_reads(self) -> None:
        a = member("a", 1)

        def changed(old: Member | None, new: Member | None) -> bool:
            return concerns_mesh(Change("a", old, new))

        self.assertTrue(changed(None, a), "a newcomer")
        self.assertTrue(changed(a, None), "forgotten")
        self.assertFalse(changed(a, attrs.evolve(a, status=SUSPECT)), "still reachable")
        self.assertTrue(changed(a, attrs.evolve(a, status=DEAD)))
        self.assertTrue(changed(member("a", 1), member("a", 2)), "a new endpoint")
        self.assertTrue(changed(a, member("a", 1, pod_prefix=str(pods(1)))))
        self.assertTrue(changed(a, member("a", 1, role="master")))
        self.assertFalse(changed(a, member("a", 1, pki={"csr": {"kubelet": "..."}})))
        self.assertFalse(changed(Member("a", ALIVE), Member("a", SUSPECT)))
        # A joiner costs no pass until its mesh has published its key.
        keyless = Member("a", ALIVE, Record("a", 1, {"role": "node"}))
        self.assertFalse(changed(None, Member("a", ALIVE)), "a newcomer without a record")
        self.assertFalse(changed(Member("a", ALIVE), keyless), "its first record")
        self.assertFalse(changed(keyless, attrs.evolve(keyless, status=DEAD)))
        self.assertTrue(changed(keyless, a), "its key")
        # Of our own record, without a key of its own, the pod prefix counts.
        self.assertTrue(
            changed(keyless, Member("a", ALIVE, Record("a", 2, {"pod_prefix": str(pods(1))})))
        )

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def test_what_it_says_changes_nothing_changes_nothing(self, data: st.DataObject) -> None:
        """Checked against desired_mesh itself, for a peer and for this node's own record."""

        def some_member(name: str) -> Member | None:
            fields: dict[str, object] = {}
            if data.draw(st.booleans()):
                fields["wireguard"] = {
                    "public_key": KEYS[name].public_key,
                    "endpoint": str(endpoint(data.draw(st.integers(1, 2)))),
                }
            if data.draw(st.booleans()):
                fields["role"] = data.draw(st.sampled_from(["node", "master"]))
            if data.draw(st.booleans()):
                fields["pod_prefix"] = str(pods(data.draw(st.integers(1, 2))))
            if data.draw(st.booleans()):
                fields["pki"] = data.draw(st.integers(1, 2))
            status = data.draw(st.sampled_from([ALIVE, SUSPECT, DEAD]))
            if data.draw(st.integers(0, 5)) == 0:
                return None
            record = None if data.draw(st.integers(0, 5)) == 0 else Record(name, 1, fields)
            return Member(name, status, record)

        for name in ("a", "me"):
            old, new = some_member(name), some_member(name)
            # b's pod prefix may be the one our own record claims: it then loses it.
            others = {"b": member("b", 3, pod_prefix=str(pods(data.draw(st.integers(1, 2)))))}
            if name != "me":
                others["me"] = member("me", 9)

            def mesh(changed: Member | None, everyone: dict[str, Member]) -> Desired:
                if changed is not None:
                    everyone = {**everyone, changed.name: changed}
                return desired_mesh(CLUSTER, "me", False, KEYS["me"].public_key, everyone)

            if not concerns_mesh(Change(name, old, new)):
                self.assertEqual(mesh(old, others), mesh(new, others))


def _networks() -> st.SearchStrategy[ipaddress.IPv6Network]:
    # Few distinct high bits, so that overlaps are common.
    return st.builds(
        lambda high, low, length: ipaddress.IPv6Network(
            ((high << 120) | low, length), strict=False
        ),
        st.integers(0, 3),
        st.integers(0, 2**120 - 1),
        st.sampled_from([48, 56, 64, 96, 120, 127, 128]),
    )


class ClaimsTests(SynchronousTestCase):
    @given(st.lists(_networks(), max_size=30))
    def test_agrees_with_a_scan_of_every_claim(
        self, candidates: list[ipaddress.IPv6Network]
    ) -> None:
        claims = _Claims()
        claimed: dict[ipaddress.IPv6Network, str] = {}
        for index, network in enumerate(candidates):
            holders = {holder for other, holder in claimed.items() if network.overlaps(other)}
            found = claims.overlapping(network)
            if holders:
                self.assertIn(found, holders)
            else:
                self.assertIsNone(found)
                claims.add(network, f"m{index}")
                claimed[network] = f"m{index}"
