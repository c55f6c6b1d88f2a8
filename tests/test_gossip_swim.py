"""SWIM with Lifeguard, one member at a time, on task.Clock with a scripted network."""

from __future__ import annotations

import ipaddress
import itertools
import math
import random
from collections.abc import Generator, Iterable
from typing import Any, TypeVar

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hepto.config import Endpoint
from hepto.gossip import codec
from hepto.gossip.awareness import Awareness
from hepto.gossip.broadcast import BroadcastQueue
from hepto.gossip.messages import (
    MAX_PLAINTEXT,
    Ack,
    Alive,
    Dead,
    Digest,
    Message,
    Nack,
    Ping,
    PingReq,
    Suspect,
)
from hepto.gossip.profile import LAN, WAN, Profile
from hepto.gossip.proofs import Notary, statement
from hepto.gossip.simulation import CLUSTER, identity_of
from hepto.gossip.suspicion import LAST_LOOK_PROBES, MAX_POSTPONEMENTS, Suspicion, suspicion_timeout
from hepto.gossip.swim import Membership
from hepto.gossip.table import MemberState, ProbeOrder, Snapshot
from hepto.gossip.trust import INCARNATION_CEILING, INCARNATION_SLACK
from hepto.state import ALIVE, DEAD, LEFT, SUSPECT

PEERS = ("b", "c", "d", "e")
AnyMessage = TypeVar("AnyMessage", bound=Message)


def endpoint(index: int) -> Endpoint:
    return Endpoint(ipaddress.IPv6Address(f"2001:db8::{index}"), 7946)


def notary(name: str, unpinned: Iterable[str] = ()) -> Notary:
    """``name``'s notary, to which every member's identity is pinned but ``unpinned``'s."""
    unknown = frozenset(unpinned)

    def pinned(other: str) -> bytes | None:
        return None if other in unknown else identity_of(other).public_key

    return Notary(CLUSTER, name, identity_of(name), pinned)


def alive(
    name: str, incarnation: int, address: Endpoint, role: str, signer: str | None = None
) -> Alive:
    """An Alive signed by ``signer``'s identity: the member's own unless said."""
    said = statement(CLUSTER, name, incarnation, address, role)
    return Alive(name, incarnation, address, role, identity_of(signer or name).sign(said))


def state(name: str, index: int, status: str = ALIVE, incarnation: int = 0) -> MemberState:
    proof = alive(name, incarnation, endpoint(index), "node").proof
    return MemberState(name, endpoint(index), "node", incarnation, status, 0.0, proof)


class ScriptedPeers:
    """Everyone but the member under test: responsive peers ack its pings and serve its
    ping-reqs (acking for a responsive target, nacking otherwise), as real ones would."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.membership: Membership | None = None
        self.sent: list[tuple[float, Endpoint, list[Message]]] = []
        #: Who answers at each endpoint.
        self.responsive: dict[Endpoint, str] = {}
        #: Endpoints whose direct pings from us are lost, though relays get through.
        self.blocked: set[Endpoint] = set()
        self.streams: list[tuple[Endpoint, Deferred[bool]]] = []
        self.cancelled: list[Deferred[bool]] = []
        self.stream_answer: bool | None = None

    def send(self, to: Endpoint, messages: Iterable[Message]) -> None:
        messages = list(messages)
        self.sent.append((self.clock.seconds(), to, messages))
        name = self.responsive.get(to)
        if name is None:
            return
        for message in messages:
            if isinstance(message, Ping) and message.target == name and to not in self.blocked:
                self._reply(0.01, to, Ack(message.seq, name))
            elif isinstance(message, PingReq):
                if self.responsive.get(message.target_address) == message.target:
                    self._reply(0.02, to, Ack(message.seq, message.target))
                else:
                    self._reply(LAN.nack_timeout, to, Nack(message.seq, name))

    def _reply(self, delay: float, sender: Endpoint, message: Message) -> None:
        assert self.membership is not None
        self.clock.callLater(delay, self.membership.receive, sender, [message])

    def ping_stream(self, to: Endpoint, ping: Ping) -> Deferred[bool]:
        if self.stream_answer is not None:
            return succeed(self.stream_answer)
        pending: Deferred[bool] = Deferred(self.cancelled.append)
        self.streams.append((to, pending))
        return pending

    def messages(self, kind: type[AnyMessage], to: Endpoint | None = None) -> list[AnyMessage]:
        return [
            message
            for _, destination, datagram in self.sent
            for message in datagram
            if isinstance(message, kind) and (to is None or destination == to)
        ]

    def probes(self) -> list[tuple[float, Endpoint, Ping]]:
        """Pings that open a datagram: our own probes (relayed pings are for others)."""
        return [
            (when, to, first)
            for when, to, (first, *_) in self.sent
            if isinstance(first, Ping) and first.source == "a"
        ]


class MembershipTestCase(SynchronousTestCase):
    profile = LAN

    clock: Clock
    network: ScriptedPeers

    def make(
        self,
        peers: Iterable[str] = PEERS,
        profile: Profile | None = None,
        start: bool = True,
        unpinned: Iterable[str] = (),
    ) -> Membership:
        """Member "a" knowing ``peers`` (all responsive), on self.clock and self.network;
        it knows the identity of every member but ``unpinned``'s."""
        clock = self.clock = Clock()
        network = self.network = ScriptedPeers(clock)
        member = Membership(
            "a",
            endpoint(1),
            "node",
            clock,
            network,
            profile or self.profile,
            # Helpers are found by a bounded number of random draws (memberlist's
            # kRandomNodes): among four peers, some seeds find two of the three, and the
            # tests that count helpers need one that finds them all.
            random.Random(1),
            notary=notary("a", unpinned),
        )
        network.membership = member
        states = [state(name, index) for index, name in enumerate(peers, start=2)]
        member.merge_state(states)
        network.responsive = {peer.address: peer.name for peer in states}
        if start:
            member.start()
        self.addCleanup(member.stop)
        return member

    def status(self, member: Membership, name: str) -> str | None:
        known = member.member(name)
        return None if known is None else known.status

    def run_until_probed(self, target: Endpoint) -> Ping:
        for _ in range(10_000):
            for _, to, ping in self.network.probes():
                if to == target:
                    return ping
            self.clock.advance(0.01)
        self.fail(f"{target} never probed")


class PingTests(MembershipTestCase):
    def test_answers_ping_with_news(self) -> None:
        member = self.make()
        self.network.sent.clear()
        member.receive(endpoint(2), [Ping(7, "a", "b")])
        (_, to, datagram) = self.network.sent[-1]
        self.assertEqual(to, endpoint(2))
        self.assertEqual(datagram[0], Ack(7, "a"))
        # The ack carries queued news along: here, our own Alive and our peers'.
        self.assertIn(alive("a", 0, endpoint(1), "node"), datagram)

    def test_ping_for_another_member(self) -> None:
        """A stale address (someone else lives there now) gets no ack: the prober must
        not take it for the member it meant."""
        member = self.make()
        self.network.sent.clear()
        member.receive(endpoint(2), [Ping(7, "z", "b")])
        self.assertEqual(self.network.sent, [])
        self.assertEqual(member.drops["ping for another member"], 1)

    def test_stopped_member_ignores(self) -> None:
        member = self.make()
        member.stop()
        self.network.sent.clear()
        member.receive(endpoint(2), [Ping(7, "a", "b")])
        self.assertEqual(self.network.sent, [])


class ProbeTests(MembershipTestCase):
    def test_round_robin(self) -> None:
        """Without the schedule (memberlist's way), each round of a member's own round
        robin probes every peer once, in a fresh random order."""
        member = self.make(profile=attrs.evolve(LAN, scheduled_probes=False))
        self.clock.pump([0.1] * 400)
        targets = [to for _, to, _ in self.network.probes()]
        self.assertGreaterEqual(len(targets), 32)
        peers = {endpoint(index) for index in range(2, 6)}
        rounds = [tuple(targets[start : start + 4]) for start in range(0, 32, 4)]
        for probe_round in rounds:
            self.assertEqual(set(probe_round), peers)
        self.assertGreater(len(set(rounds)), 3)
        self.assertEqual([self.status(member, peer) for peer in PEERS], [ALIVE] * 4)
        self.assertEqual(member.health, 0)

    def test_unanswered_probe(self) -> None:
        """No ack: ask the others and try TCP; when they all fail, suspect."""
        member = self.make()
        del self.network.responsive[endpoint(5)]
        ping = self.run_until_probed(endpoint(5))
        self.clock.advance(LAN.probe_timeout)
        requests = self.network.messages(PingReq)
        self.assertEqual(len(requests), 3)
        self.assertEqual({request.target for request in requests}, {"e"})
        self.assertEqual({request.seq for request in requests}, {ping.seq})
        self.assertNotIn(endpoint(5), [to for _, to, datagram in self.network.sent[-3:]])
        ((stream_to, stream),) = self.network.streams
        self.assertEqual(stream_to, endpoint(5))
        self.assertEqual(self.status(member, "e"), ALIVE)
        self.clock.advance(LAN.probe_interval - LAN.probe_timeout + 0.01)
        self.assertEqual(self.status(member, "e"), SUSPECT)
        # The helpers all nacked: our own self.network is fine, our health with it.
        self.assertEqual(member.health, 0)
        # The TCP attempt that did not finish in time was abandoned.
        self.assertEqual(self.network.cancelled, [stream])

    def test_silent_helpers_hurt_health(self) -> None:
        """Lifeguard: when even the helpers stay silent, the problem is likely ours, so
        we probe less often and wait longer."""
        member = self.make()
        self.network.responsive.clear()
        self.clock.pump([0.05] * 800)
        rounds = sorted(
            {math.floor(when / LAN.probe_interval) for when, _, _ in self.network.probes()}
        )
        limit = Awareness(8).limit
        self.assertEqual(member.health, limit - 1)
        # Healthy at first, it took its turn every round; later, as its health sank, it
        # sat out more and more rounds of the schedule, down to one round in eight.
        self.assertEqual(rounds[:3], [0, 1, 2])
        self.assertEqual(rounds[-1] - rounds[-2], limit)

    def test_direct_ack_restores_health(self) -> None:
        member = self.make()
        member._awareness.apply(3)
        self.clock.pump([0.1] * 100)
        self.assertEqual(member.health, 0)

    def test_relayed_ack(self) -> None:
        """A peer we cannot reach directly, but others can, stays alive."""
        member = self.make()
        self.network.blocked.add(endpoint(5))
        self.clock.pump([0.1] * 100)
        self.assertGreater(len(self.network.messages(PingReq)), 0)
        self.assertEqual(self.status(member, "e"), ALIVE)
        self.assertEqual(member.health, 0)

    def test_tcp_fallback(self) -> None:
        member = self.make()
        del self.network.responsive[endpoint(5)]
        self.network.stream_answer = True
        self.clock.pump([0.1] * 100)
        self.assertGreater(len(self.network.messages(PingReq)), 0)
        self.assertEqual(self.status(member, "e"), ALIVE)

    def test_ack_from_the_wrong_member(self) -> None:
        member = self.make()
        del self.network.responsive[endpoint(5)]
        ping = self.run_until_probed(endpoint(5))
        member.receive(endpoint(5), [Ack(ping.seq, "d")])
        self.assertEqual(member.drops["ack from the wrong member"], 1)
        self.clock.advance(1.01)
        self.assertEqual(self.status(member, "e"), SUSPECT)

    def test_buddy_system(self) -> None:
        """A suspect we probe learns of the suspicion in the same datagram."""
        member = self.make()
        member.receive(endpoint(3), [Suspect("b", 0, "c")])
        self.network.sent.clear()
        self.run_until_probed(endpoint(2))
        datagram = next(
            d for _, to, d in self.network.sent if to == endpoint(2) and isinstance(d[0], Ping)
        )
        self.assertIn(Suspect("b", 0, "a"), datagram)


class RelayTests(MembershipTestCase):
    def test_relays_ack(self) -> None:
        member = self.make()
        self.network.sent.clear()
        member.receive(endpoint(3), [PingReq(9, "b", endpoint(2), "c")])
        ((_, to, datagram),) = self.network.sent
        self.assertEqual(to, endpoint(2))
        ping = datagram[0]
        assert isinstance(ping, Ping)
        self.assertEqual((ping.target, ping.source), ("b", "a"))
        self.clock.advance(0.02)
        self.assertEqual(self.network.messages(Ack, endpoint(3)), [Ack(9, "b")])
        self.clock.advance(1)
        self.assertEqual(self.network.messages(Nack), [])

    def test_nacks_when_target_is_silent(self) -> None:
        member = self.make()
        del self.network.responsive[endpoint(2)]
        member.receive(endpoint(3), [PingReq(9, "b", endpoint(2), "c")])
        self.clock.advance(LAN.probe_timeout)
        self.assertEqual(self.network.messages(Nack, endpoint(3)), [Nack(9, "a")])
        self.assertEqual(self.network.messages(Ack, endpoint(3)), [])

    def test_relay_flood(self) -> None:
        member = self.make(start=False)
        member.start()
        for seq in range(300):
            member.receive(endpoint(3), [PingReq(seq, "b", endpoint(2), "c")])
        self.assertEqual(member.drops["too many ping-req relays"], 300 - 256)


class SuspicionTests(MembershipTestCase):
    def test_formula_matches_memberlist(self) -> None:
        """memberlist's suspicion_test.go: remaining time after n of k confirmations."""
        for confirmations, elapsed, remaining in [(0, 0, 30), (1, 2, 14), (2, 3, 4.81), (3, 4, -2)]:
            total = suspicion_timeout(confirmations, 3, 2.0, 30.0)
            self.assertLess(abs(total - elapsed - remaining), 0.01)
        self.assertEqual(suspicion_timeout(5, 0, 2.0, 30.0), 2.0)

    def test_confirmations_shorten(self) -> None:
        peers = [f"p{index}" for index in range(9)]
        member = self.make(peers)
        del self.network.responsive[endpoint(10)]
        shortest, longest = LAN.suspicion_timeouts(10)
        self.assertEqual((shortest, longest), (3.0, 24.0))
        member.receive(endpoint(2), [Suspect("p8", 0, "p0")])
        start = self.clock.seconds()
        self.clock.advance(1)
        member.receive(endpoint(3), [Suspect("p8", 0, "p0")])  # the same accuser again
        member.receive(endpoint(3), [Suspect("p8", 0, "p1")])
        expected = suspicion_timeout(1, 2, shortest, longest)
        self.clock.advance(expected - 1 - 0.05)
        self.assertEqual(self.status(member, "p8"), SUSPECT)
        self.clock.advance(0.1)
        self.assertEqual(self.status(member, "p8"), DEAD)
        self.assertLess(abs(self.clock.seconds() - start - expected), 0.1)
        self.assertEqual(member._queue.get("p8"), Dead("p8", 0, "a"))

    def test_enough_confirmations_give_shortest(self) -> None:
        peers = [f"p{index}" for index in range(9)]
        member = self.make(peers)
        del self.network.responsive[endpoint(10)]
        for accuser in ("p0", "p1", "p2"):
            member.receive(endpoint(2), [Suspect("p8", 0, accuser)])
        self.assertEqual(LAN.suspicion_timeouts(10)[0], 3.0)
        self.clock.advance(2.9)
        self.assertEqual(self.status(member, "p8"), SUSPECT)
        self.clock.advance(0.2)
        self.assertEqual(self.status(member, "p8"), DEAD)

    def test_the_dead_do_not_count(self) -> None:
        """N is the members that could confirm: half the cluster dead, shorter timeouts."""
        member = self.make([f"p{index}" for index in range(29)])
        for index in range(14):
            member.receive(endpoint(3), [Dead(f"p{index}", 0, "p20")])
        self.assertEqual((member.size, member.live_size), (30, 16))
        shortest = LAN.suspicion_timeouts(16)[0]
        self.assertLess(shortest, LAN.suspicion_timeouts(30)[0] - 0.5)
        del self.network.responsive[endpoint(30)]
        for accuser in ("p20", "p21", "p22"):
            member.receive(endpoint(2), [Suspect("p28", 0, accuser)])
        self.clock.advance(shortest - 0.1)
        self.assertEqual(self.status(member, "p28"), SUSPECT)
        self.clock.advance(0.2)
        self.assertEqual(self.status(member, "p28"), DEAD)

    def test_small_cluster(self) -> None:
        """Too few members to confirm: the shortest timeout at once."""
        member = self.make(["b", "c"])
        del self.network.responsive[endpoint(3)]
        member.receive(endpoint(2), [Suspect("c", 0, "b")])
        self.clock.advance(LAN.suspicion_timeouts(3)[0] - 0.1)
        self.assertEqual(self.status(member, "c"), SUSPECT)
        self.clock.advance(0.2)
        self.assertEqual(self.status(member, "c"), DEAD)
        # What the metrics count: one suspicion, one death, no refutation of ours.
        self.assertEqual((member.entered["suspect"], member.entered["dead"]), (1, 1))
        self.assertEqual(member.refutations, 0)

    def test_last_look(self) -> None:
        """Before declaring a suspect dead, we probe it ourselves, suspicion attached: a
        live one that refuted long ago (and we missed it) answers with its Alive."""
        member = self.make()
        member.receive(endpoint(3), [Suspect("e", 0, "c")])
        deadline = member._suspicions["e"].deadline
        lead = LAST_LOOK_PROBES * LAN.probe_interval
        self.clock.pump([0.01] * round((deadline - lead - 0.01) / 0.01))
        self.network.sent.clear()
        self.clock.pump([0.01] * 102)
        # The look comes at the start of the round, before anyone's turn in it.
        (_, to, ping), *turns = self.network.probes()
        self.assertEqual(to, endpoint(5))
        self.assertLessEqual(len(turns), 1)
        datagram = next(sent[2] for sent in self.network.sent if sent[2][0] is ping)
        self.assertIn(Suspect("e", 0, "a"), datagram)
        member.receive(endpoint(5), [alive("e", 1, endpoint(5), "node"), Ack(ping.seq, "e")])
        self.clock.advance(30)
        self.assertEqual(self.status(member, "e"), ALIVE)

    def test_answering_suspect(self) -> None:
        """A suspect that answers our last look is alive: while its refutation keeps
        getting lost, it gets a few more looks, not for ever."""
        member = self.make()
        member.receive(endpoint(3), [Suspect("e", 0, "c")])
        deadline = member._suspicions["e"].deadline
        self.clock.pump([0.05] * round((deadline - self.clock.seconds() + 0.1) / 0.05))
        self.assertEqual(self.status(member, "e"), SUSPECT)
        lead = LAST_LOOK_PROBES * LAN.probe_interval
        self.clock.pump([0.05] * round(MAX_POSTPONEMENTS * lead / 0.05))
        self.assertEqual(self.status(member, "e"), DEAD)
        looks = [ping for _, to, ping in self.network.probes() if to == endpoint(5)]
        self.assertGreaterEqual(len(looks), 1 + MAX_POSTPONEMENTS)

    def test_suspicion_object(self) -> None:
        clock = Clock()
        expired: list[int] = []
        looks: list[float] = []
        suspicion = Suspicion(
            clock, "x", 2, 4.0, 24.0, expired.append, lambda: looks.append(clock.seconds()), 2.0
        )
        self.assertFalse(suspicion.confirm("x"))
        self.assertTrue(suspicion.confirm("y"))
        self.assertTrue(suspicion.confirm("z"))
        self.assertFalse(suspicion.confirm("w"))
        clock.pump([0.5] * 8)
        self.assertEqual((expired, looks), ([2], [2.0]))
        suspicion.cancel()


class RefutationTests(MembershipTestCase):
    def test_refutes_suspicion(self) -> None:
        member = self.make()
        member.receive(endpoint(2), [Suspect("a", 0, "b")])
        self.assertEqual(member.incarnation, 1)
        self.assertEqual(self.status(member, "a"), ALIVE)
        self.assertEqual(member.health, 1)
        self.assertEqual((member.refutations, member.entered["suspect"]), (1, 0))
        member.receive(endpoint(2), [Ping(3, "a", "b")])
        self.assertIn(alive("a", 1, endpoint(1), "node"), self.network.sent[-1][2])

    def test_refutes_death_above_accusation(self) -> None:
        member = self.make()
        member.receive(endpoint(2), [Dead("a", 5, "b")])
        self.assertEqual(member.incarnation, 6)

    def test_refutation_rides_on_the_ack(self) -> None:
        """News is handled before the ping it came with, so the ack carries the answer."""
        member = self.make()
        self.clock.advance(5)
        self.network.sent.clear()
        member.receive(endpoint(2), [Ping(3, "a", "b"), Suspect("a", 0, "b")])
        datagram = self.network.sent[-1][2]
        self.assertEqual(datagram[0], Ack(3, "a"))
        self.assertEqual(datagram[1], alive("a", 1, endpoint(1), "node"))

    def test_stale_accusation_repeats_refutation(self) -> None:
        member = self.make()
        member.receive(endpoint(2), [Suspect("a", 0, "b")])
        self.clock.pump([0.1] * 50)
        self.assertEqual(member.queued(), 0)
        member.receive(endpoint(3), [Ping(4, "a", "c"), Suspect("a", 0, "c")])
        self.assertIn(alive("a", 1, endpoint(1), "node"), self.network.sent[-1][2])
        self.assertEqual(member.incarnation, 1)

    def test_stale_accusation_of_another(self) -> None:
        """Whoever still accuses a member at an older incarnation is told directly."""
        member = self.make()
        member.receive(endpoint(2), [alive("b", 2, endpoint(2), "node")])
        self.network.sent.clear()
        member.receive(endpoint(3), [Suspect("b", 1, "c")])
        member.receive(endpoint(4), [Dead("b", 0, "d")])
        firsts = [(to, datagram[0]) for _, to, datagram in self.network.sent]
        told = alive("b", 2, endpoint(2), "node")
        self.assertEqual(firsts, [(endpoint(3), told), (endpoint(4), told)])
        self.assertEqual(self.status(member, "b"), ALIVE)

    def test_alive_about_us(self) -> None:
        """Someone thinks we are at a newer incarnation, or have another role: correct it."""
        member = self.make()
        member.receive(endpoint(2), [alive("a", 3, endpoint(1), "node")])
        self.assertEqual(member.incarnation, 4)
        member.receive(endpoint(2), [alive("a", 4, endpoint(1), "master")])
        self.assertEqual(member.incarnation, 5)
        self.assertEqual(member.member("a").role, "node")  # type: ignore[union-attr]
        member.receive(endpoint(2), [alive("a", 5, endpoint(1), "node")])
        self.assertEqual(member.incarnation, 5)

    def test_news_revives(self) -> None:
        member = self.make()
        member.receive(endpoint(3), [Dead("b", 0, "c")])
        self.assertEqual(self.status(member, "b"), DEAD)
        member.receive(endpoint(3), [alive("b", 0, endpoint(2), "node")])
        self.assertEqual(self.status(member, "b"), DEAD)
        member.receive(endpoint(3), [alive("b", 1, endpoint(2), "node")])
        self.assertEqual(self.status(member, "b"), ALIVE)


class IncarnationSanityTests(MembershipTestCase):
    def test_jump_in_accusation(self) -> None:
        member = self.make()
        member.receive(endpoint(3), [Suspect("b", INCARNATION_SLACK + 1, "c")])
        member.receive(endpoint(3), [Dead("b", INCARNATION_SLACK + 1, "c")])
        self.assertEqual(self.status(member, "b"), ALIVE)
        self.assertEqual(member.drops["incarnation jump"], 2)
        member.receive(endpoint(3), [Suspect("b", INCARNATION_SLACK, "c")])
        self.assertEqual(self.status(member, "b"), SUSPECT)

    def test_accusation_of_us(self) -> None:
        """An absurd accusation of us is dropped; refuting it would cost us our future."""
        member = self.make()
        member.receive(endpoint(3), [Dead("a", 2**63, "c")])
        member.receive(endpoint(3), [Suspect("a", INCARNATION_SLACK + 1, "c")])
        self.assertEqual(member.incarnation, 0)
        self.assertEqual(member.drops["absurd incarnation"], 1)
        self.assertEqual(member.drops["incarnation jump"], 1)

    def test_jump_in_alive(self) -> None:
        """Only the member itself may jump ahead (say, after losing its saved state):
        from its own address while its identity is unknown, with its proof after."""
        member = self.make(unpinned=["b"])
        jump = alive("b", INCARNATION_SLACK + 5, endpoint(2), "node")
        member.receive(endpoint(3), [jump])
        self.assertEqual(member.member("b").incarnation, 0)  # type: ignore[union-attr]
        member.receive(endpoint(2), [jump])
        self.assertEqual(member.member("b").incarnation, jump.incarnation)  # type: ignore[union-attr]

    def test_proven_jump_in_alive(self) -> None:
        member = self.make()
        jump = alive("b", INCARNATION_SLACK + 5, endpoint(2), "node")
        member.receive(endpoint(3), [jump])
        self.assertEqual(member.member("b").incarnation, jump.incarnation)  # type: ignore[union-attr]

    def test_ceiling(self) -> None:
        member = self.make()
        member.receive(endpoint(9), [alive("z", INCARNATION_CEILING + 1, endpoint(9), "node")])
        self.assertIsNone(member.member("z"))
        member.receive(endpoint(9), [alive("z", INCARNATION_CEILING, endpoint(9), "node")])
        self.assertEqual(self.status(member, "z"), ALIVE)


class ConflictTests(MembershipTestCase):
    def test_address_conflict(self) -> None:
        """Before its identity is known, a live member keeps its address (memberlist)."""
        member = self.make(unpinned=["b"])
        member.receive(endpoint(3), [alive("b", 1, endpoint(9), "node")])
        self.assertEqual(member.member("b").address, endpoint(2))  # type: ignore[union-attr]
        self.assertEqual(member.drops["address conflict"], 1)
        member.receive(endpoint(3), [Dead("b", 0, "c")])
        member.receive(endpoint(3), [alive("b", 1, endpoint(9), "node")])
        self.assertEqual(member.member("b").address, endpoint(9))  # type: ignore[union-attr]
        self.assertEqual(self.status(member, "b"), ALIVE)

    def test_a_member_moves_on_its_own_word(self) -> None:
        """A restart at a new address need not wait for the old one's death."""
        member = self.make()
        member.receive(endpoint(3), [alive("b", 1, endpoint(9), "node")])
        self.assertEqual(member.member("b").address, endpoint(9))  # type: ignore[union-attr]
        self.assertEqual(member.drops["address conflict"], 0)

    def test_a_forged_alive_moves_no_one(self) -> None:
        """The hijack: a forged Dead, then an Alive at the forger's address."""
        member = self.make()
        forged = alive("b", 2, endpoint(9), "node", signer="c")
        member.receive(endpoint(9), [Dead("b", 0, "c"), forged])
        self.assertEqual(member.member("b").address, endpoint(2))  # type: ignore[union-attr]
        self.assertEqual(self.status(member, "b"), DEAD)
        self.assertEqual(member.drops["forged alive"], 1)
        # The member itself, refuting where it is, is believed.
        member.receive(endpoint(2), [alive("b", 3, endpoint(2), "node")])
        self.assertEqual(self.status(member, "b"), ALIVE)
        self.assertEqual(member.member("b").address, endpoint(2))  # type: ignore[union-attr]

    def test_a_forged_alive_revives_no_one(self) -> None:
        """A dead member stays dead when someone else says it is alive where it was."""
        member = self.make()
        member.receive(endpoint(3), [Dead("b", 0, "c")])
        member.receive(endpoint(9), [alive("b", 7, endpoint(2), "node", signer="c")])
        self.assertEqual(self.status(member, "b"), DEAD)
        self.assertEqual(member.member("b").incarnation, 0)  # type: ignore[union-attr]
        self.assertEqual(member.drops["forged alive"], 1)

    def test_a_proof_of_other_news_proves_nothing(self) -> None:
        """The member's own proof, moved onto other news (a replay with new fields)."""
        member = self.make()
        genuine = alive("b", 1, endpoint(2), "node")
        for altered in (
            attrs.evolve(genuine, incarnation=2),
            attrs.evolve(genuine, address=endpoint(9)),
            attrs.evolve(genuine, role="master"),
            attrs.evolve(genuine, name="c"),
            attrs.evolve(genuine, proof=genuine.proof[:-1]),
            attrs.evolve(genuine, proof=b""),
        ):
            member.receive(endpoint(9), [altered])
        self.assertEqual(member.drops["forged alive"], 6)
        self.assertEqual(member.member("b"), state("b", 2))
        member.receive(endpoint(9), [genuine])
        self.assertEqual(member.member("b").incarnation, 1)  # type: ignore[union-attr]

    def test_another_cluster_s_proof_proves_nothing(self) -> None:
        member = self.make()
        said = statement("elsewhere", "b", 1, endpoint(2), "node")
        elsewhere = Alive("b", 1, endpoint(2), "node", identity_of("b").sign(said))
        member.receive(endpoint(2), [elsewhere])
        self.assertEqual(member.drops["forged alive"], 1)
        self.assertEqual(member.member("b").incarnation, 0)  # type: ignore[union-attr]

    def test_merged_state_cannot_move_a_member_either(self) -> None:
        member = self.make()
        member.receive(endpoint(9), [Dead("b", 0, "c")])
        forged = attrs.evolve(
            state("b", 9, incarnation=5),
            proof=alive("b", 5, endpoint(9), "node", signer="c").proof,
        )
        member.merge_state([forged])
        self.assertEqual(member.member("b").address, endpoint(2))  # type: ignore[union-attr]
        self.assertEqual(member.drops["forged alive"], 1)

    def test_an_unknown_member_cannot_be_forged(self) -> None:
        """Once its identity is pinned (its record seen), even a first Alive is checked."""
        member = self.make()
        member.receive(endpoint(9), [alive("z", 1, endpoint(9), "node", signer="c")])
        self.assertIsNone(member.member("z"))
        member.receive(endpoint(9), [alive("z", 1, endpoint(8), "node")])
        self.assertEqual(member.member("z").address, endpoint(8))  # type: ignore[union-attr]

    def test_taken_on_trust_until_an_identity_is_pinned(self) -> None:
        """Before its record, a member is where its first Alive says; once its identity
        is pinned, a forged first Alive makes it a suspect, which the real one refutes."""
        member = self.make(unpinned=["z"])
        member.receive(endpoint(9), [alive("z", 40, endpoint(9), "node", signer="c")])
        self.assertEqual(self.status(member, "z"), ALIVE)
        self.pin(member, "z")  # its record is in
        self.assertEqual(self.status(member, "z"), SUSPECT)
        self.assertEqual(member.drops["forged alive"], 1)
        self.clock.advance(self.profile.gossip_interval)
        self.assertIn(Suspect("z", 40, "a"), self.network.messages(Suspect))
        # The real one refutes, where it really is.
        member.receive(endpoint(8), [alive("z", 41, endpoint(8), "node")])
        self.assertEqual(self.status(member, "z"), ALIVE)
        self.assertEqual(member.member("z").address, endpoint(8))  # type: ignore[union-attr]

    def test_a_genuine_alive_taken_on_trust_stays(self) -> None:
        member = self.make(unpinned=["z"])
        member.receive(endpoint(8), [alive("z", 1, endpoint(8), "node")])
        self.pin(member, "z")
        self.assertEqual(self.status(member, "z"), ALIVE)
        self.assertEqual(member.drops["forged alive"], 0)
        member.identity_pinned("z")  # checked once: nothing more to do
        self.assertEqual(self.status(member, "z"), ALIVE)

    def pin(self, member: Membership, name: str) -> None:
        """What the gossip service does when ``name``'s record comes in."""
        member.notary = notary("a")
        member.identity_pinned(name)

    def test_our_name_elsewhere(self) -> None:
        member = self.make()
        member.receive(endpoint(3), [alive("a", 9, endpoint(9), "node")])
        self.assertEqual(member.incarnation, 0)
        self.assertEqual(member.member("a").address, endpoint(1))  # type: ignore[union-attr]


class LeaveTests(MembershipTestCase):
    def test_leave(self) -> None:
        # The queue's transmissions alone (recent news has tests of its own).
        member = self.make(profile=attrs.evolve(LAN, recent_news_periods=0))
        left = member.leave()
        self.assertEqual(self.status(member, "a"), LEFT)
        self.assertNoResult(left)
        self.clock.pump([0.1] * 10)
        self.successResultOf(left)
        limit = LAN.retransmit_limit(5)
        self.assertEqual(len(self.network.messages(Dead)), limit)
        self.assertEqual(set(self.network.messages(Dead)), {Dead("a", 0, "a")})
        # A departed member does not argue any more.
        member.receive(endpoint(2), [Suspect("a", 0, "b"), alive("a", 3, endpoint(1), "node")])
        self.assertEqual(member.incarnation, 0)
        self.successResultOf(member.leave())

    def test_alone(self) -> None:
        """With nobody to tell, leaving is done at once, and nothing is sent."""
        member = self.make([])
        self.assertIsNone(self.successResultOf(member.leave()))
        self.assertEqual(self.network.messages(Dead), [])

    def test_timeout(self) -> None:
        member = self.make(profile=attrs.evolve(LAN, retransmit_mult=1000))
        left = member.leave()
        self.clock.advance(LAN.leave_timeout - 0.1)
        self.assertNoResult(left)
        self.clock.advance(0.2)
        self.successResultOf(left)

    def test_stop_while_leaving(self) -> None:
        member = self.make(profile=attrs.evolve(LAN, retransmit_mult=1000))
        left = member.leave()
        self.assertNoResult(left)
        member.stop()
        self.assertIsNone(self.successResultOf(left))

    def test_others_leave(self) -> None:
        member = self.make()
        member.receive(endpoint(2), [Dead("b", 0, "b")])
        self.assertEqual(self.status(member, "b"), LEFT)


class ReapTests(MembershipTestCase):
    def test_reap(self) -> None:
        profile = attrs.evolve(LAN, gossip_to_the_dead=10.0, reap_after=20.0)
        member = self.make(profile=profile)
        reaped: list[MemberState] = []
        member.on_reap = reaped.append
        member.receive(endpoint(3), [Dead("b", 0, "c")])
        self.clock.pump([0.5] * 38)
        self.assertEqual(self.status(member, "b"), DEAD)
        self.clock.pump([0.5] * 6)
        self.assertIsNone(member.member("b"))
        self.assertEqual([(gone.name, gone.status) for gone in reaped], [("b", DEAD)])
        self.assertNotIn("b", member._roster.order)
        # Forgotten means forgotten: it can come back, as new.
        member.receive(endpoint(2), [alive("b", 0, endpoint(2), "node")])
        self.assertEqual(self.status(member, "b"), ALIVE)

    def test_gossip_to_the_dead(self) -> None:
        profile = attrs.evolve(LAN, gossip_to_the_dead=10.0)
        member = self.make(profile=profile)
        member.receive(endpoint(3), [Dead("b", 0, "c")])
        died = self.clock.seconds()
        for version in range(1, 200):
            member.broadcast_digest("a", version)
            self.clock.advance(0.1)

        def gossip_to_b(start: float, end: float) -> list[Message]:
            return [
                datagram[0]
                for when, to, datagram in self.network.sent
                if to == endpoint(2) and start <= when < end and not isinstance(datagram[0], Ping)
            ]

        # With the gossip, the dead learn that they are thought dead: one that is not
        # refutes.
        self.assertEqual(set(gossip_to_b(died, died + 10)), {Dead("b", 0, "a")})
        self.assertEqual(gossip_to_b(died + 10.1, died + 20), [])

    def test_the_dead_hear_it_without_other_news(self) -> None:
        member = self.make(profile=attrs.evolve(LAN, gossip_to_the_dead=10.0))
        member.receive(endpoint(3), [Dead("b", 0, "c")])
        self.clock.pump([0.1] * 20)
        self.assertEqual(member.queued(), 0)
        self.network.sent.clear()
        self.clock.pump([0.1] * 20)
        self.assertEqual(
            [datagram for _, to, datagram in self.network.sent if to == endpoint(2)][:1],
            [[Dead("b", 0, "a")]],
        )


class StateExchangeTests(MembershipTestCase):
    def test_merge(self) -> None:
        member = self.make()
        member.merge_state(
            [
                state("b", 2, DEAD),
                state("c", 3, LEFT),
                state("f", 7),
                state("x", 8, SUSPECT),
                state("y", 9, "confused"),
            ]
        )
        # Their dead is our suspect: it gets its chance to refute.
        self.assertEqual(self.status(member, "b"), SUSPECT)
        self.assertEqual(self.status(member, "c"), LEFT)
        self.assertEqual(self.status(member, "f"), ALIVE)
        self.assertIsNone(member.member("x"))
        self.assertEqual(member.drops["unknown status in merged state"], 1)
        names = {known.name for known in member.local_state()}
        self.assertEqual(names, {"a", "b", "c", "d", "e", "f"})
        self.assertEqual(set(member.members()), names)

    def test_push_pull_interval(self) -> None:
        """Soon again while push/pull finds news; memberlist's scaled interval once not."""
        member = self.make()
        # The join (make's merge) brought news: the next exchange comes once gossip
        # had time to spread, to catch members that joined meanwhile.
        settle = LAN.gossip_interval * LAN.retransmit_limit(5)
        self.assertEqual(member.push_pull_interval(), settle)
        member.merge_state(member.local_state())
        self.assertEqual(member.push_pull_interval(), LAN.push_pull_interval)
        others = [state(f"p{index}", index + 10) for index in range(95)]
        member.merge_state(others)
        self.assertEqual(member.push_pull_interval(), LAN.gossip_interval * 12)
        member.merge_state(others)
        self.assertEqual(member.push_pull_interval(), 3 * LAN.push_pull_interval)
        # Being told we are dead is news, but only about us: no hurry.
        member.merge_state([attrs.evolve(member.local_state()[0], status=DEAD)])
        self.assertEqual(member.incarnation, 1)
        self.assertEqual(member.push_pull_interval(), 3 * LAN.push_pull_interval)

    def test_push_pull_target(self) -> None:
        member = self.make()
        member.receive(endpoint(2), [Dead("b", 0, "b")])
        member.receive(endpoint(2), [Dead("c", 0, "d")])
        targets = {member.push_pull_target().name for _ in range(500)}  # type: ignore[union-attr]
        # The dead, but not the departed: that is how partitions heal.
        self.assertEqual(targets, {"c", "d", "e"})

    def test_observers(self) -> None:
        member = self.make()
        seen: list[tuple[str | None, str]] = []

        def broken(old: MemberState | None, new: MemberState) -> None:
            raise ZeroDivisionError()

        member.subscribe(broken)
        unsubscribe = member.subscribe(
            lambda old, new: seen.append((None if old is None else old.status, new.status))
        )
        member.receive(endpoint(3), [Suspect("b", 0, "c"), alive("f", 0, endpoint(7), "node")])
        self.assertEqual(seen, [(ALIVE, SUSPECT), (None, ALIVE)])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        unsubscribe()
        member.receive(endpoint(3), [Dead("b", 0, "c")])
        self.assertEqual(len(seen), 2)
        self.flushLoggedErrors(ZeroDivisionError)


class DigestTests(MembershipTestCase):
    def test_heard(self) -> None:
        member = self.make()
        heard: list[tuple[str, str, int]] = []
        member.on_digest = lambda holder, name, version: heard.append((holder.name, name, version))
        member.receive(endpoint(2), [Digest("c", 3)])
        member.receive(endpoint(99), [Digest("c", 4)])
        self.assertEqual(heard, [("b", "c", 3)])
        self.assertEqual(member.drops["digest from an unknown sender"], 1)

    def test_sent_twice_as_often(self) -> None:
        """Digests are small and rare, and a member that misses one waits for push/pull
        (or, within a while, for its prober's recent news: not counted here)."""
        member = self.make(profile=attrs.evolve(LAN, recent_news_periods=0))
        self.clock.pump([0.1] * 20)
        self.network.sent.clear()
        member.broadcast_digest("a", 1)
        member.receive(endpoint(3), [Suspect("b", 0, "c")])
        self.clock.pump([0.1] * 20)
        limit = LAN.retransmit_limit(5)
        self.assertEqual(len(self.network.messages(Digest)), 2 * limit)
        relayed = [message for message in self.network.messages(Suspect) if message.source == "c"]
        self.assertEqual(len(relayed), limit)

    def test_a_digest_heard_counts_as_one_sent(self) -> None:
        """Copies heard from others end our share sooner: the record has spread."""
        limit = LAN.retransmit_limit(5)
        for feedback, expected in ((True, 2 * limit - 5), (False, 2 * limit)):
            member = self.make(
                profile=attrs.evolve(LAN, digest_feedback=feedback, recent_news_periods=0)
            )
            self.clock.pump([0.1] * 20)
            self.network.sent.clear()
            member.broadcast_digest("a", 2)
            for _ in range(5):
                member.receive(endpoint(3), [Digest("a", 2)])
            # Another version, or another record, is not a copy of ours.
            member.receive(endpoint(3), [Digest("a", 1), Digest("a", 3), Digest("b", 2)])
            self.clock.pump([0.1] * 40)
            sent = [message for message in self.network.messages(Digest) if message.name == "a"]
            self.assertEqual(len(sent), expected, f"feedback {feedback}")

    def test_newest_wins(self) -> None:
        member = self.make(start=False)
        member.broadcast_digest("a", 2)
        member.broadcast_digest("a", 1)
        member.broadcast_digest("b", 1)
        self.assertEqual(member._queue.get(("digest", "a")), Digest("a", 2))
        member.broadcast_digest("a", 3)
        self.assertEqual(member._queue.get(("digest", "a")), Digest("a", 3))
        self.assertEqual(member._queue.get(("digest", "b")), Digest("b", 1))


class ArrivalTests(MembershipTestCase):
    """A member new to us is told to the record store with who told us of it: the store
    fetches the newcomer's record from that member."""

    def told(self, member: Membership) -> list[tuple[str, str]]:
        told: list[tuple[str, str]] = []
        member.on_arrival = lambda teller, name: told.append((teller.name, name))
        return told

    def test_a_newcomer_is_told_with_its_teller(self) -> None:
        member = self.make()
        told = self.told(member)
        member.receive(endpoint(2), [alive("z", 0, endpoint(9), "node")])
        # Old news, and news of a member we know, tell nothing.
        member.receive(endpoint(3), [alive("z", 0, endpoint(9), "node")])
        member.receive(endpoint(3), [alive("c", 1, endpoint(3), "node")])
        self.assertEqual(told, [("b", "z")])

    def test_a_newcomer_may_tell_of_itself(self) -> None:
        member = self.make()
        told = self.told(member)
        member.receive(endpoint(9), [alive("z", 0, endpoint(9), "node")])
        self.assertEqual(told, [("z", "z")])

    def test_newcomers_of_a_push_pull_or_an_unknown_sender_are_not_told(self) -> None:
        member = self.make()
        told = self.told(member)
        member.merge_state([state("y", 8)])
        member.receive(endpoint(99), [alive("z", 0, endpoint(9), "node")])
        self.assertIsNotNone(member.member("y"))
        self.assertIsNotNone(member.member("z"))
        self.assertEqual(told, [])

    def test_a_failing_handler_is_logged_not_raised(self) -> None:
        member = self.make()

        def fail(teller: MemberState, name: str) -> None:
            raise RuntimeError("boom")

        member.on_arrival = fail
        member.receive(endpoint(2), [alive("z", 0, endpoint(9), "node")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIsNotNone(member.member("z"))


class AliveFeedbackTests(MembershipTestCase):
    """An arrival's Alive heard again counts as one of our own sends of it: where it has
    spread, copies arrive and our share ends sooner (``Profile.alive_feedback``)."""

    def sends(self, feedback: bool, recent_news_periods: float = 0.001) -> int:
        """Our sends of a newcomer's Alive, of which we heard two copies.  Recent news
        lingers a millisecond by default: long enough to be on, too short to ride a probe
        and be counted here."""
        member = self.make(
            profile=attrs.evolve(
                LAN, alive_feedback=feedback, recent_news_periods=recent_news_periods
            )
        )
        self.network.responsive[endpoint(9)] = "z"
        self.clock.pump([0.1] * 20)
        self.network.sent.clear()
        news = alive("z", 0, endpoint(9), "node")
        member.receive(endpoint(2), [news])
        member.receive(endpoint(3), [news])
        member.receive(endpoint(4), [news, alive("c", 0, endpoint(3), "node")])
        # A copy that no member sent us (a push/pull's) says nothing of the spread.
        member.merge_state([state("z", 9)])
        self.clock.pump([0.1] * 60)
        return len([message for message in self.network.messages(Alive) if message.name == "z"])

    def test_copies_heard_end_the_share_sooner(self) -> None:
        limit = LAN.retransmit_limit(6)
        self.assertEqual(self.sends(False), limit)
        self.assertEqual(self.sends(True), limit - 2)

    def test_not_without_recent_news(self) -> None:
        """Without recent news, the members that the copies spared would have reached
        wait for a push/pull: every copy is sent."""
        self.assertEqual(self.sends(True, recent_news_periods=0), LAN.retransmit_limit(6))


class PackingTests(MembershipTestCase):
    def test_datagrams_fit(self) -> None:
        """Whatever is queued, every datagram encodes within the budget."""
        member = self.make()
        member.merge_state(
            [state(f"member-{index:04d}-" + "x" * 50, index + 10) for index in range(300)]
        )
        for version in range(50):
            member.broadcast_digest(f"record-{version}-" + "y" * 200, version)
        self.clock.pump([0.1] * 50)
        self.assertGreater(len(self.network.sent), 50)
        sizes = [len(codec.encode(datagram)) for _, _, datagram in self.network.sent]
        self.assertLessEqual(max(sizes), MAX_PLAINTEXT)
        self.assertGreater(max(sizes), MAX_PLAINTEXT - 300)

    def test_stop_leaves_nothing_behind(self) -> None:
        member = self.make()
        del self.network.responsive[endpoint(5)]
        self.run_until_probed(endpoint(5))
        self.clock.advance(LAN.probe_timeout)
        member.receive(endpoint(3), [Suspect("b", 0, "c")])
        member.receive(endpoint(3), [PingReq(9, "c", endpoint(3), "d")])
        ((_, stream),) = self.network.streams
        member.stop()
        self.assertEqual(self.network.cancelled, [stream])
        # Only the scripted peers' answers are still on their way.
        self.assertEqual(
            [
                call
                for call in self.clock.getDelayedCalls()
                if getattr(call, "func", None) != member.receive
            ],
            [],
        )


class QuietTicksTests(MembershipTestCase):
    """The gossip interval ticks only while there is something to spread."""

    def quiet(self, member: Membership) -> None:
        """Until no gossip tick is due: our own start's news and whatever followed it
        are spent, or there is nobody to tell."""
        for _ in range(1000):
            self.clock.advance(0.1)
            if member._gossip.next_tick is None:
                return
        self.fail("never quiet")

    def tick_due(self, member: Membership) -> bool:
        return any(
            getattr(call, "func", None) == member._gossip._tick
            for call in self.clock.getDelayedCalls()
        )

    def test_a_quiet_member_is_not_woken_by_the_interval(self) -> None:
        member = self.make()
        self.assertTrue(self.tick_due(member))  # our own arrival, to spread
        self.quiet(member)
        self.assertEqual(member.queued(), 0)
        self.clock.pump([0.1] * 100)
        self.assertFalse(self.tick_due(member))

    def test_news_waits_for_someone_to_tell(self) -> None:
        """Alone, a member's news stays queued without ticks; an arrival wakes them."""
        member = self.make(peers=())
        self.quiet(member)
        self.assertEqual(member.queued(), 1)  # our own arrival
        self.assertEqual(self.network.sent, [])
        member.receive(endpoint(2), [alive("b", 0, endpoint(2), "node")])
        self.clock.pump([0.1] * 3)
        self.assertIn(
            alive("a", 0, endpoint(1), "node"),
            [message for _, to, datagram in self.network.sent for message in datagram],
        )

    def test_news_wakes_the_ticks_on_their_grid(self) -> None:
        """Rounds come at the phase they had before the ticks stopped."""
        member = self.make()
        first = member._gossip.next_tick
        assert first is not None
        self.quiet(member)
        self.clock.advance(1.234)
        member.broadcast_digest("z", 1)
        tick = member._gossip.next_tick
        assert tick is not None
        interval = LAN.gossip_interval
        self.assertTrue(0 < tick - self.clock.seconds() <= interval)
        intervals = (tick - first) / interval
        self.assertAlmostEqual(intervals, round(intervals), places=6)
        self.clock.advance(tick - self.clock.seconds())
        self.assertEqual(
            [when for when, _, datagram in self.network.sent if Digest("z", 1) in datagram],
            [tick] * LAN.gossip_nodes,
        )
        self.quiet(member)

    def test_the_recently_departed_keep_the_ticks(self) -> None:
        """The recently dead hear that they are, news or not, until the horizon."""
        member = self.make(peers=["b", "c", "d"])
        self.quiet(member)
        member.receive(endpoint(3), [Dead("b", 0, "c")])
        since = self.clock.seconds()
        self.clock.pump([0.1] * int(LAN.gossip_to_the_dead * 10 / 2))
        self.assertEqual(member.queued(), 0)  # the news of b's death is spent...
        self.assertTrue(self.tick_due(member))  # ... but b still hears of it
        notices = [
            when
            for when, to, datagram in self.network.sent
            if to == endpoint(2) and when > since + 10
        ]
        self.assertGreater(len(notices), 5)
        self.clock.advance(since + LAN.gossip_to_the_dead + 1 - self.clock.seconds())
        self.clock.pump([0.1] * 10)
        self.assertFalse(self.tick_due(member))


class NewsRoundTests(MembershipTestCase):
    """News of a member's fate goes out in a gossip round of its own, not at the next tick."""

    def just_after_a_tick(self, member: Membership) -> None:
        """Past a gossip tick by a news round's spacing: the next tick is far enough (a
        member with nothing to say has no tick due: then just past the spacing)."""
        if member._gossip.next_tick is not None:
            self.clock.advance(member._gossip.next_tick - self.clock.seconds())
        self.clock.advance(LAN.news_round_spacing)
        self.network.sent.clear()

    def carrying(self, message: Message) -> list[tuple[float, Endpoint]]:
        return [(when, to) for when, to, datagram in self.network.sent if message in datagram]

    def test_suspicion_goes_out_at_once(self) -> None:
        member = self.make()
        self.just_after_a_tick(member)
        now = self.clock.seconds()
        member.receive(endpoint(3), [Suspect("e", 0, "c")])
        self.assertEqual(self.carrying(Suspect("e", 0, "c")), [])
        self.clock.advance(0)
        sent = self.carrying(Suspect("e", 0, "c"))
        self.assertEqual(len(sent), LAN.gossip_nodes)
        self.assertEqual({when for when, _ in sent}, {now})

    def test_death_and_refutation_too(self) -> None:
        member = self.make(peers=[f"p{index}" for index in range(9)])
        self.just_after_a_tick(member)
        member.receive(endpoint(3), [Dead("p4", 0, "p1")])
        self.clock.advance(0)
        self.assertEqual(len(self.carrying(Dead("p4", 0, "p1"))), LAN.gossip_nodes)
        self.just_after_a_tick(member)
        member.receive(endpoint(3), [Suspect("a", 0, "p1")])
        self.clock.advance(0)
        self.assertEqual(len(self.carrying(alive("a", 1, endpoint(1), "node"))), LAN.gossip_nodes)

    def test_rounds_are_spaced(self) -> None:
        """A burst of news costs a few rounds, not one per item; the tick takes the rest."""
        member = self.make(peers=[f"p{index}" for index in range(9)])
        self.just_after_a_tick(member)
        for name in ["p1", "p2", "p3", "p4", "p5"]:
            member.receive(endpoint(3), [Suspect(name, 0, "p0")])
            self.clock.pump([0.01, 0.01])
        self.clock.pump([0.01] * 4)  # the next tick is still to come
        self.assertGreater(member._gossip.next_tick, self.clock.seconds())  # type: ignore[arg-type]
        rounds = sorted(
            {
                when
                for when, _, datagram in self.network.sent
                if datagram and isinstance(datagram[0], Suspect)
            }
        )
        self.assertIn(len(rounds), (2, 3))
        for earlier, later in itertools.pairwise(rounds):
            self.assertGreaterEqual(later - earlier, LAN.news_round_spacing)
        self.assertEqual(len(self.carrying(Suspect("p5", 0, "p0"))), LAN.gossip_nodes)

    def test_an_arrival_goes_out_at_once(self) -> None:
        member = self.make()
        self.clock.pump([0.1] * 30)  # our own start's news, sent
        self.assertEqual(member.queued(), 0)
        self.just_after_a_tick(member)
        member.receive(endpoint(6), [alive("f", 0, endpoint(6), "node")])
        self.clock.advance(0)
        self.assertEqual(len(self.carrying(alive("f", 0, endpoint(6), "node"))), LAN.gossip_nodes)

    def test_arrivals_among_other_news_keep_to_the_tick(self) -> None:
        """In a join storm, the ticks' datagrams are full: rounds of news would add
        datagrams, not speed."""
        member = self.make()
        self.clock.pump([0.1] * 30)
        member.broadcast_digest("a", 1)
        self.just_after_a_tick(member)
        member.receive(endpoint(6), [alive("f", 0, endpoint(6), "node")])
        self.clock.advance(LAN.gossip_interval / 2)
        self.assertEqual(self.carrying(alive("f", 0, endpoint(6), "node")), [])

    def test_arrivals_can_keep_to_the_tick(self) -> None:
        member = self.make(profile=attrs.evolve(LAN, join_news=False))
        self.just_after_a_tick(member)
        member.receive(endpoint(6), [alive("f", 0, endpoint(6), "node")])
        self.clock.advance(LAN.gossip_interval / 2)
        self.assertEqual(self.carrying(alive("f", 0, endpoint(6), "node")), [])

    def test_a_joiner_catching_up_is_no_news(self) -> None:
        """The members a joiner learns from its anchor are old news to everyone else."""
        member = self.make(peers=())
        self.just_after_a_tick(member)
        member.merge_state([state(name, index) for index, name in enumerate(PEERS, start=2)])
        self.clock.advance(LAN.gossip_interval / 2)
        self.assertEqual(self.network.sent, [])
        self.assertEqual(member.size, len(PEERS) + 1)

    def test_can_be_turned_off(self) -> None:
        member = self.make(profile=attrs.evolve(LAN, news_rounds=False))
        self.just_after_a_tick(member)
        member.receive(endpoint(3), [Suspect("e", 0, "c")])
        self.clock.advance(LAN.gossip_interval / 2)
        self.assertEqual(self.carrying(Suspect("e", 0, "c")), [])


class BroadcastQueueTests(SynchronousTestCase):
    def test_limit_and_invalidation(self) -> None:
        done: list[str] = []
        queue = BroadcastQueue(lambda: 2)
        queue.put("x", Digest("x", 1), on_done=lambda: done.append("x1"))
        queue.put("x", Digest("x", 2), on_done=lambda: done.append("x2"))
        self.assertEqual(done, ["x1"])
        self.assertEqual(queue.take(1000), [Digest("x", 2)])
        self.assertEqual(queue.take(1000), [Digest("x", 2)])
        self.assertEqual(done, ["x1", "x2"])
        self.assertEqual(queue.take(1000), [])

    def test_weight(self) -> None:
        queue = BroadcastQueue(lambda: 2)
        queue.put("digest", Digest("x", 1), weight=2)
        queue.put("member", Dead("y", 0, "z"))
        sent = [queue.take(1000) for _ in range(5)]
        self.assertEqual([len(datagram) for datagram in sent], [2, 2, 1, 1, 0])

    def test_a_copy_heard_counts_as_sent(self) -> None:
        done: list[str] = []
        queue = BroadcastQueue(lambda: 2)
        queue.put("x", Digest("x", 1), on_done=lambda: done.append("x"), weight=2)
        queue.put("y", Digest("y", 1), weight=2)
        queue.heard("x", Digest("x", 1))
        queue.heard("x", Digest("x", 2))  # not what we queued
        queue.heard("z", Digest("z", 1))  # not queued at all
        # x counts one transmission, so it goes after y, which has none.
        self.assertEqual(queue.take(codec.encoded_size(Digest("x", 1))), [Digest("y", 1)])
        self.assertEqual(queue.take(1000), [Digest("y", 1), Digest("x", 1)])
        # Two transmissions of x's four so far, one of them heard: two more copies end it.
        queue.heard("x", Digest("x", 1))
        self.assertEqual(done, [])
        queue.heard("x", Digest("x", 1))
        self.assertEqual(done, ["x"])
        self.assertEqual(queue.take(1000), [Digest("y", 1)])
        self.assertEqual(queue.take(1000), [Digest("y", 1)])
        self.assertEqual(queue.take(1000), [])

    def test_fewest_sent_then_newest_first(self) -> None:
        queue = BroadcastQueue(lambda: 10)
        size = codec.encoded_size(Digest("a", 1))
        queue.put("a", Digest("a", 1))
        self.assertEqual(queue.take(size), [Digest("a", 1)])
        queue.put("b", Digest("b", 1))
        queue.put("c", Digest("c", 1))
        self.assertEqual(queue.take(size), [Digest("c", 1)])
        self.assertEqual(queue.take(size), [Digest("b", 1)])
        # All sent once now: the latest to get there goes first.
        self.assertEqual(queue.take(3 * size), [Digest("b", 1), Digest("c", 1), Digest("a", 1)])

    def test_skips_what_does_not_fit(self) -> None:
        queue = BroadcastQueue(lambda: 10)
        big, small = Digest("b" * 100, 1), Digest("s", 1)
        queue.put("small", small)
        queue.put("big", big)
        self.assertEqual(queue.take(codec.encoded_size(small) + 5), [small])
        self.assertEqual(queue.take(codec.MIN_MESSAGE_SIZE - 1), [])
        self.assertEqual(len(queue), 2)
        queue.clear()
        self.assertEqual(len(queue), 0)


class RecentNewsQueueTests(SynchronousTestCase):
    """News sent often enough stays recent for the queue's linger, for the probes."""

    def make(self, linger: float = 3.0) -> tuple[BroadcastQueue, Clock]:
        clock = Clock()
        return BroadcastQueue(lambda: 2, linger=linger, now=clock.seconds), clock

    def test_recent_once_sent_often_enough_until_it_lingered(self) -> None:
        queue, clock = self.make()
        queue.put("x", Digest("x", 1))
        self.assertEqual(queue.take(1000), [Digest("x", 1)])
        # Its last transmission, counted: this take retires it, and gives it once.
        self.assertEqual(queue.take(1000, recent=True), [Digest("x", 1)])
        self.assertEqual(queue.take(1000), [])
        clock.advance(2.9)
        # Given as often as asked, and never counted.
        self.assertEqual(queue.take(1000, recent=True), [Digest("x", 1)])
        self.assertEqual(queue.take(1000, recent=True), [Digest("x", 1)])
        self.assertEqual(len(queue), 0)
        clock.advance(0.2)
        self.assertEqual(queue.take(1000, recent=True), [])

    def test_a_copy_heard_ends_it_as_recent_too(self) -> None:
        queue, _ = self.make()
        queue.put("x", Digest("x", 1))
        queue.heard("x", Digest("x", 1))
        queue.heard("x", Digest("x", 1))
        self.assertEqual(queue.take(1000), [])
        self.assertEqual(queue.take(1000, recent=True), [Digest("x", 1)])

    def test_a_newer_word_replaces_it(self) -> None:
        queue, _ = self.make()
        queue.put("x", Digest("x", 1))
        queue.take(1000)
        queue.take(1000)
        queue.put("x", Digest("x", 2))
        # The newer word, queued; the older one is no recent news any more.
        self.assertEqual(queue.take(1000, recent=True), [Digest("x", 2)])
        queue.discard("x")
        self.assertEqual(queue.take(1000, recent=True), [])

    def test_discarded_or_cleared_it_is_forgotten(self) -> None:
        queue, _ = self.make()
        for key in "xy":
            queue.put(key, Digest(key, 1))
        queue.take(1000)
        queue.take(1000)
        queue.discard("x")
        self.assertEqual(queue.take(1000, recent=True), [Digest("y", 1)])
        queue.clear()
        self.assertEqual(queue.take(1000, recent=True), [])

    def test_queued_news_first_then_recent_in_the_room_left(self) -> None:
        queue, _ = self.make()
        size = codec.encoded_size(Digest("a", 1))
        queue.put("a", Digest("a", 1))
        queue.take(1000)
        queue.take(1000)
        queue.put("b", Digest("b", 1))
        self.assertEqual(queue.take(2 * size, recent=True), [Digest("b", 1), Digest("a", 1)])
        # No room left after the queued news: it is counted, the recent waits.
        self.assertEqual(queue.take(size, recent=True), [Digest("b", 1)])
        self.assertEqual(queue.take(size, recent=True), [Digest("b", 1)])

    def test_newest_first_as_far_as_room_is_left(self) -> None:
        queue, clock = self.make()
        size = codec.encoded_size(Digest("a", 1))
        for name in "abc":
            queue.put(name, Digest(name, 1))
            queue.take(1000)
            queue.take(1000)
            clock.advance(1)
        # a retired at 0 and lingered until 3: gone; c is the newest.
        self.assertEqual(queue.take(size, recent=True), [Digest("c", 1)])
        self.assertEqual(queue.take(3 * size, recent=True), [Digest("c", 1), Digest("b", 1)])
        self.assertEqual(queue.take(codec.MIN_MESSAGE_SIZE - 1, recent=True), [])

    def test_no_linger_no_recent_news(self) -> None:
        queue = BroadcastQueue(lambda: 1)
        queue.put("x", Digest("x", 1))
        queue.take(1000)
        self.assertEqual(queue.take(1000, recent=True), [])
        with self.assertRaises(ValueError):
            BroadcastQueue(lambda: 1, linger=1.0)


class RecentNewsProbeTests(MembershipTestCase):
    """A member that no copy of some news reached hears it from its next prober."""

    def spread(self, member: Membership) -> Alive:
        """News of a newcomer, sent until every copy is out: no datagram carries it any
        more but a probe."""
        news = alive("z", 0, endpoint(9), "node")
        member.receive(endpoint(2), [news])
        self.clock.pump([LAN.gossip_interval / 4] * 12)
        self.assertIsNotNone(member.member("z"))
        member.receive(endpoint(4), [Ping(7, "a", "d")])
        (_, _, ack) = self.network.sent[-1]
        self.assertEqual(ack[0], Ack(7, "a"))
        self.assertNotIn(news, ack)
        return news

    def next_probe(self) -> list[Message]:
        self.network.sent.clear()
        for _ in range(200):
            self.clock.advance(0.01)
            for _, _, datagram in self.network.sent:
                if isinstance(datagram[0], Ping) and datagram[0].source == "a":
                    return datagram
        self.fail("no probe within two intervals")

    def test_a_probe_carries_news_that_ran_its_course(self) -> None:
        member = self.make()
        news = self.spread(member)
        self.assertIn(news, self.next_probe())
        self.assertIn(news, self.next_probe())

    def test_not_after_its_time(self) -> None:
        member = self.make()
        news = self.spread(member)
        self.clock.advance(LAN.recent_news_linger)
        self.assertNotIn(news, self.next_probe())

    def test_can_be_turned_off(self) -> None:
        member = self.make(profile=attrs.evolve(LAN, recent_news_periods=0))
        news = self.spread(member)
        self.assertNotIn(news, self.next_probe())


class ProfileTests(SynchronousTestCase):
    def test_figures_at_100_members(self) -> None:
        """docs/gossip.rst repeats them: memberlist's retransmits and longest suspicion,
        and a confirmed suspicion of 6 s where memberlist's takes 8 s."""
        self.assertEqual(LAN.retransmit_limit(100), 12)
        self.assertEqual(LAN.suspicion_timeouts(100), (6.0, 48.0))
        memberlist = attrs.evolve(LAN, shortest_suspicion_mult=LAN.suspicion_mult)
        self.assertEqual(memberlist.suspicion_timeouts(100), (8.0, 48.0))
        self.assertEqual(WAN.suspicion_timeouts(1), (30.0, 180.0))

    def test_validation(self) -> None:
        self.assertRaises(ValueError, Profile, probe_interval=1.0, probe_timeout=1.0)
        self.assertRaises(ValueError, Profile, gossip_to_the_dead=60.0, reap_after=30.0)
        self.assertRaises(ValueError, Profile, gossip_interval=0)
        self.assertRaises(ValueError, Profile, gossip_nodes=0)
        self.assertRaises(ValueError, Profile, shortest_suspicion_mult=0)
        self.assertRaises(ValueError, Profile, suspicion_mult=3, shortest_suspicion_mult=3.5)


class AwarenessTests(SynchronousTestCase):
    def test_bounds(self) -> None:
        awareness = Awareness(8)
        awareness.apply(-3)
        self.assertEqual(awareness.score, 0)
        awareness.apply(20)
        self.assertEqual(awareness.score, 7)
        self.assertEqual(awareness.scale(0.5), 4.0)


class ProbeOrderTests(SynchronousTestCase):
    @settings(max_examples=300)
    @given(
        st.lists(st.text("abcdefgh", min_size=1, max_size=2), unique=True, max_size=8),
        st.lists(
            st.tuples(st.sampled_from(["add", "remove", "draw"]), st.text("abcdefghij", max_size=2))
        ),
        st.integers(0, 2**32),
    )
    def test_model(self, base: list[str], actions: list[tuple[str, str]], seed: int) -> None:
        """Against a set: same contents, and a round without changes visits each once."""
        order = ProbeOrder(random.Random(seed), base, {name: i for i, name in enumerate(base)})
        model = set(base)
        for action, name in actions:
            if action == "add" and name:
                order.add(name)
                model.add(name)
            elif action == "remove":
                order.remove(name)
                model.discard(name)
            else:
                drawn = order.draw()
                self.assertTrue(drawn in model if model else drawn is None)
            self.assertEqual(sorted(order), sorted(model))
            self.assertEqual(len(order), len(model))
        # Finish the current round, then one full round must visit each name once.
        for _ in range(len(model)):
            if order._next >= len(order):
                break
            order.draw()
        self.assertEqual(sorted(order.draw() or "" for _ in model), sorted(model))

    def test_snapshot_shared(self) -> None:
        """Members started from one snapshot do not copy it."""
        states = [state(f"m{index}", index + 2) for index in range(100)]
        snapshot = Snapshot(states)
        clock = Clock()
        members = [
            Membership(
                known.name,
                known.address,
                "node",
                clock,
                ScriptedPeers(clock),
                LAN,
                random.Random(index),
                notary=notary(known.name),
                snapshot=snapshot,
            )
            for index, known in enumerate(states[:3])
        ]
        for member in members:
            self.assertEqual(len(member.members()), 100)
            self.assertEqual(len(member._roster.order), 99)
            self.assertNotIn(member.name, member._roster.order)
            self.assertEqual(member._roster.table._changed.keys(), {member.name})


class LoopbackNetwork(DatagramProtocol):
    """Plain UDP on ::1 with the real codec (sealing is the transport's business)."""

    def __init__(self) -> None:
        self.membership: Membership | None = None
        self.undecodable = 0

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            messages = codec.decode(data)
        except codec.DecodeError:
            self.undecodable += 1
            return
        assert self.membership is not None
        self.membership.receive(Endpoint(ipaddress.IPv6Address(addr[0]), addr[1]), messages)

    def send(self, to: Endpoint, messages: Iterable[Message]) -> None:
        assert self.transport is not None
        self.transport.write(codec.encode(list(messages)), (str(to.host), to.port))

    def ping_stream(self, to: Endpoint, ping: Ping) -> Deferred[bool]:
        return succeed(False)


class RealUDPTests(TestCase):
    """Three members on the real reactor over real UDP: the logic is not tied to fakes."""

    timeout = 60
    profile = attrs.evolve(LAN, probe_interval=0.2, probe_timeout=0.1, gossip_interval=0.05)

    def member(self, name: str) -> Membership:
        network = LoopbackNetwork()
        port = reactor.listenUDP(0, network, interface="::1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        address = Endpoint(ipaddress.IPv6Address("::1"), port.getHost().port)
        member = Membership(
            name,
            address,
            "node",
            reactor,
            network,
            self.profile,
            random.Random(name),
            notary=notary(name),
        )
        network.membership = member
        self.addCleanup(member.stop)
        return member

    def sees(self, member: Membership, expected: dict[str, str]) -> Deferred[None]:
        """Fires once ``member`` sees each named member in the expected status."""
        reached: Deferred[None] = Deferred()

        def check(old: MemberState | None = None, new: MemberState | None = None) -> None:
            view = {name: state.status for name, state in member.members().items()}
            if not reached.called and all(view.get(n) == s for n, s in expected.items()):
                unsubscribe()
                reached.callback(None)

        unsubscribe = member.subscribe(check)
        check()
        return reached

    @inlineCallbacks
    def test_join_and_detect(self) -> Generator[Deferred[Any], Any, None]:
        a, b, c = (self.member(name) for name in "abc")
        for member in (a, b, c):
            member.start()
        joined = gatherResults(
            [self.sees(member, dict.fromkeys("abc", ALIVE)) for member in (a, b, c)]
        )
        # b and c join through a, as the gossip service does: by push/pull.
        for joiner in (b, c):
            joiner.merge_state(a.local_state())
            a.merge_state(joiner.local_state())
        yield joined
        # c dies without a word; a and b find out on their own.
        network = c._network
        assert isinstance(network, LoopbackNetwork) and network.transport is not None
        c.stop()
        yield maybeDeferred(network.transport.stopListening)
        yield gatherResults([self.sees(member, {"c": DEAD}) for member in (a, b)])
        self.assertEqual((a.drops, b.drops), ({}, {}))
