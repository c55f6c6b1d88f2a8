"""Knocks and reach: who reaches this node unprompted, on a task.Clock and in memory."""

from __future__ import annotations

import ipaddress
import random

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from hepto.config import Endpoint
from hepto.gossip.knocks import (
    ANSWER_SPACING,
    KNOCK_REQUEST_TOO_SOON,
    KNOCK_TIMEOUT,
    UNEXPECTED_KNOCK,
    Knocks,
)
from hepto.gossip.messages import Ack, Knock, KnockRequest, Message, Ping
from hepto.gossip.reach import RECHECK, RETRY, Reach
from hepto.gossip.table import MemberState
from hepto.state import ALIVE, DEAD, SUSPECT

GOSSIP = 7946
BOB = Endpoint(ipaddress.IPv6Address("2001:db8::b"), GOSSIP)
BOB_ASIDE = Endpoint(BOB.host, 40123)
CAROL_ASIDE = Endpoint(ipaddress.IPv6Address("2001:db8::c"), 40123)


class Wire:
    """What a Knocks sent, and what it passed on."""

    def __init__(self) -> None:
        self.sent: list[tuple[Endpoint, list[Message]]] = []
        self.aside: list[tuple[Endpoint, list[Message]]] = []
        self.passed: list[tuple[Endpoint, list[Message]]] = []
        self.drops: list[str] = []

    def knocks(self, clock: task.Clock) -> Knocks:
        return Knocks(
            "alice",
            clock,
            send=lambda to, messages: self.sent.append((to, list(messages))),
            send_aside=lambda to, messages: self.aside.append((to, list(messages))),
            passing=lambda sender, messages: self.passed.append((sender, list(messages))),
            count_drop=lambda reason, peer, detail: self.drops.append(reason),
        )


class KnocksTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.wire = Wire()
        self.knocks = self.wire.knocks(self.clock)

    def asked(self) -> tuple[Deferred[bool], int]:
        answered = self.knocks.ask("bob", BOB)
        [(to, [request])] = self.wire.sent
        self.assertEqual(to, BOB)
        assert isinstance(request, KnockRequest)
        self.assertEqual(request.source, "alice")
        return answered, request.seq

    def test_a_knock_from_another_port_proves_it(self) -> None:
        answered, seq = self.asked()
        self.knocks.receive(BOB_ASIDE, [Knock(seq, "bob")])
        self.assertTrue(self.successResultOf(answered))
        self.assertEqual(self.wire.drops, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_knock_from_the_gossip_port_proves_nothing(self) -> None:
        """Our request opened that very path: a firewall would let it through."""
        answered, seq = self.asked()
        self.knocks.receive(BOB, [Knock(seq, "bob")])
        self.assertNoResult(answered)
        self.assertEqual(self.wire.drops, [UNEXPECTED_KNOCK])
        self.clock.advance(KNOCK_TIMEOUT)
        self.assertFalse(self.successResultOf(answered))

    def test_knocks_that_answer_nothing_asked_are_dropped(self) -> None:
        answered, seq = self.asked()
        self.knocks.receive(CAROL_ASIDE, [Knock(seq, "bob")])  # from another host
        self.knocks.receive(BOB_ASIDE, [Knock(seq, "carol")])  # another member's name
        self.knocks.receive(BOB_ASIDE, [Knock(seq + 1, "bob")])  # nothing asked
        self.assertEqual(self.wire.drops, [UNEXPECTED_KNOCK] * 3)
        self.assertNoResult(answered)
        self.knocks.receive(BOB_ASIDE, [Knock(seq, "bob")])
        self.assertTrue(self.successResultOf(answered))
        self.knocks.receive(BOB_ASIDE, [Knock(seq, "bob")])  # answered already
        self.assertEqual(self.wire.drops, [UNEXPECTED_KNOCK] * 4)

    def test_unanswered(self) -> None:
        answered, _ = self.asked()
        self.clock.advance(KNOCK_TIMEOUT - 0.1)
        self.assertNoResult(answered)
        self.clock.advance(0.1)
        self.assertFalse(self.successResultOf(answered))

    def test_cancelled_and_stopped(self) -> None:
        answered, seq = self.asked()
        answered.cancel()
        self.failureResultOf(answered)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.knocks.receive(BOB_ASIDE, [Knock(seq, "bob")])
        self.assertEqual(self.wire.drops, [UNEXPECTED_KNOCK])
        pending = self.knocks.ask("bob", BOB)
        self.knocks.stop()
        self.assertFalse(self.successResultOf(pending))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_requests_answered_aside_once_a_second(self) -> None:
        self.knocks.receive(BOB, [KnockRequest(5, "bob")])
        self.assertEqual(self.wire.aside, [(BOB, [Knock(5, "alice")])])
        self.knocks.receive(BOB, [KnockRequest(6, "bob")])
        self.assertEqual(len(self.wire.aside), 1)
        self.assertEqual(self.wire.drops, [KNOCK_REQUEST_TOO_SOON])
        self.clock.advance(ANSWER_SPACING)
        self.knocks.receive(BOB, [KnockRequest(7, "bob")])
        self.assertEqual(self.wire.aside[-1], (BOB, [Knock(7, "alice")]))
        self.assertEqual(self.wire.sent, [])

    def test_everything_else_passed_on(self) -> None:
        self.knocks.receive(BOB, [Ping(1, "alice", "bob"), KnockRequest(5, "bob"), Ack(2, "b")])
        self.assertEqual(self.wire.passed, [(BOB, [Ping(1, "alice", "bob"), Ack(2, "b")])])
        self.assertEqual(len(self.wire.aside), 1)
        self.knocks.receive(BOB, [KnockRequest(6, "bob")])
        self.assertEqual(len(self.wire.passed), 1)  # nothing left to pass


def state(name: str, status: str = ALIVE, address: Endpoint = BOB) -> MemberState:
    return MemberState(name, address, "node", 1, status, 0.0)


class Asker:
    """Reach's ask: records each request, answered by hand."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, Endpoint, Deferred[bool]]] = []
        self.cancelled: list[str] = []

    def __call__(self, name: str, address: Endpoint) -> Deferred[bool]:
        answered: Deferred[bool] = Deferred(lambda _: self.cancelled.append(name))
        self.asked.append((name, address, answered))
        return answered

    def answer(self, knocked: bool) -> None:
        self.asked[-1][2].callback(knocked)


class ReachTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.asker = Asker()
        self.reach = Reach("alice", self.clock, self.asker, random.Random(1))
        self.heard: list[frozenset[str]] = []
        self.reach.subscribe(self.heard.append)

    def test_asked_once_when_seen_then_every_recheck(self) -> None:
        self.reach.member_changed(None, state("alice"))  # ourselves: never
        self.reach.member_changed(None, state("bob"))
        self.reach.member_changed(state("bob"), state("bob", SUSPECT))  # same address
        self.assertEqual([(n, a) for n, a, _ in self.asker.asked], [("bob", BOB)])
        self.assertEqual(self.reach.unprompted, frozenset())
        self.asker.answer(True)
        self.assertEqual(self.reach.unprompted, {"bob"})
        self.assertEqual(self.heard, [{"bob"}])
        self.clock.advance(RECHECK * 0.9 - 1)
        self.assertEqual(len(self.asker.asked), 1)
        self.clock.advance(RECHECK * 0.2 + 1)
        self.assertEqual(len(self.asker.asked), 2)

    def test_unanswered_twice_in_a_row_makes_it_prompted(self) -> None:
        self.reach.member_changed(None, state("bob"))
        self.asker.answer(True)
        self.clock.advance(RECHECK * 1.1)
        self.asker.answer(False)  # one may be a lost datagram
        self.assertEqual(self.reach.unprompted, {"bob"})
        self.clock.advance(RETRY.initial)
        self.assertEqual(len(self.asker.asked), 3)
        self.asker.answer(False)
        self.assertEqual(self.reach.unprompted, frozenset())
        self.assertEqual(self.heard, [{"bob"}, frozenset()])
        self.clock.advance(RETRY.initial * 2)  # and it is asked again, less often
        self.assertEqual(len(self.asker.asked), 4)
        self.asker.answer(True)
        self.assertEqual(self.reach.unprompted, {"bob"})

    def test_never_answered(self) -> None:
        self.reach.member_changed(None, state("bob"))
        for _ in range(20):
            self.asker.answer(False)
            self.clock.advance(RECHECK)
        self.assertEqual(self.reach.unprompted, frozenset())
        self.assertEqual(self.heard, [])
        self.assertEqual(len(self.asker.asked), 21)

    def test_the_dead_forgotten_and_a_new_address_asked_anew(self) -> None:
        self.reach.member_changed(None, state("bob"))
        self.asker.answer(True)
        moved = state("bob", address=Endpoint(ipaddress.IPv6Address("2001:db8::bb"), GOSSIP))
        self.reach.member_changed(state("bob"), moved)
        self.assertEqual(self.reach.unprompted, frozenset())
        self.assertEqual(self.asker.asked[-1][:2], ("bob", moved.address))
        self.asker.answer(True)
        self.assertEqual(self.reach.unprompted, {"bob"})
        self.reach.member_changed(moved, state("bob", DEAD, moved.address))
        self.assertEqual(self.reach.unprompted, frozenset())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.reach.member_changed(None, state("bob", ALIVE, moved.address))
        self.assertEqual(len(self.asker.asked), 3)

    def test_pending_requests_cancelled_when_it_dies_or_we_stop(self) -> None:
        self.reach.member_changed(None, state("bob"))
        self.reach.member_changed(state("bob"), state("bob", DEAD))
        self.assertEqual(self.asker.cancelled, ["bob"])
        self.reach.member_changed(None, state("carol", address=CAROL_ASIDE))
        self.reach.stop()
        self.assertEqual(self.asker.cancelled, ["bob", "carol"])
        self.assertEqual(self.reach.unprompted, frozenset())
        self.assertEqual(self.clock.getDelayedCalls(), [])
