"""Whole clusters of Membership on simulated time: convergence, detection, refutation,
loss and partitions, at up to 1,000 members."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from hepto.gossip.messages import Digest, Message, Ping, Suspect
from hepto.gossip.profile import LAN
from hepto.gossip.simulation import HeapClock, Simulation, percentile
from hepto.state import ALIVE, DEAD

operations = st.lists(
    st.tuples(
        st.sampled_from(["call", "cancel", "reset", "delay", "advance"]),
        st.integers(0, 50),
        st.floats(0, 5, allow_nan=False),
    ),
    max_size=60,
)


class HeapClockTests(SynchronousTestCase):
    @settings(max_examples=300)
    @given(operations)
    def test_same_as_task_clock(self, script: list[tuple[str, int, float]]) -> None:
        """Whatever is scheduled, cancelled, reset or delayed, both clocks run the same
        calls during the same advance, each in time order and never early.  (Calls due
        at the same time may run in any order, as on a real reactor.)"""
        self.assertEqual(self.replay(Clock(), script), self.replay(HeapClock(), script))

    def replay(
        self, clock: IReactorTime, script: list[tuple[str, int, float]]
    ) -> list[tuple[int, int]]:
        ran: list[tuple[int, int]] = []
        times: list[list[float]] = [[]]
        calls: list[IDelayedCall] = []

        def run(number: int) -> None:
            call = calls[number]
            self.assertLessEqual(call.getTime(), clock.seconds())
            ran.append((len(times), number))
            times[-1].append(call.getTime())

        for operation, index, amount in script:
            live = [call for call in calls if call.active()]
            if operation == "call":
                calls.append(clock.callLater(amount, run, len(calls)))
            elif operation == "advance":
                clock.advance(amount)  # type: ignore[attr-defined]
                times.append([])
            elif live:
                call = live[index % len(live)]
                if operation == "cancel":
                    call.cancel()
                elif operation == "reset":
                    call.reset(amount)
                else:
                    call.delay(amount)
        clock.advance(100)  # type: ignore[attr-defined]
        for during in times:
            self.assertEqual(during, sorted(during))
        return sorted(ran)

    def test_getDelayedCalls(self) -> None:
        clock = HeapClock()
        first = clock.callLater(1, lambda: None)
        second = clock.callLater(2, lambda: None)
        first.cancel()
        self.assertEqual(clock.getDelayedCalls(), [second])
        clock.advance(2)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(clock.seconds(), 2)


class NetworkTests(SynchronousTestCase):
    def test_loss_latency_partition(self) -> None:
        simulation = Simulation(3, loss=0.25, latency=0.05, push_pull=False)
        network = simulation.network
        a, b, c = (simulation.endpoints[name] for name in simulation.names)
        received: list[float] = []
        simulation.members["m00001"].receive = lambda sender, messages: received.append(  # type: ignore[method-assign]
            simulation.clock.seconds()
        )
        for _ in range(1000):
            network.send(a, b, [Ping(1, "m00001", "m00000")])
        simulation.run(1)
        self.assertTrue(700 < len(received) < 800, len(received))
        self.assertEqual(set(received), {0.05})
        self.assertEqual(network.sent[a].datagrams, 1000)
        self.assertEqual(network.sent[a].lost, 1000 - len(received))
        simulation.partition(["m00000"], ["m00001", "m00002"])
        self.assertFalse(network.connected(a, b))
        self.assertTrue(network.connected(b, c))
        simulation.heal()
        self.assertTrue(network.connected(a, b))

    def test_percentile(self) -> None:
        values = [float(value) for value in range(1, 101)]
        self.assertEqual(percentile(values, 0.5), 50.0)
        self.assertEqual(percentile(values, 0.99), 99.0)
        self.assertEqual(percentile([3.0], 0.99), 3.0)


class ScenarioTests(SynchronousTestCase):
    def assertClean(self, simulation: Simulation) -> None:
        self.assertEqual(simulation.false_deaths, [])
        self.assertEqual(simulation.traffic().oversized, 0)

    def run_until(self, simulation: Simulation, done: Callable[[], bool], limit: float) -> float:
        start = simulation.clock.seconds()
        self.assertTrue(simulation.run_until(done, limit, step=0.5), f"not within {limit}s")
        return simulation.clock.seconds() - start

    def test_join_of_1000(self) -> None:
        """1,000 members join through one anchor within ten seconds; everyone ends up
        knowing everyone alive."""
        simulation = Simulation(1000, seed=11, converged=False, latency=0.005, jitter=0.01)
        simulation.start(["m00000"])

        def arrive(name: str) -> None:
            simulation.start([name])
            simulation.join(name, "m00000")

        for name in simulation.names[1:]:
            simulation.clock.callLater(simulation.rng.uniform(0, 10), arrive, name)
        self.assertTrue(simulation.run_until(simulation.converged, 120, step=5))
        self.assertClean(simulation)

    def test_killed_member_dead_to_all_then_forgotten(self) -> None:
        profile = attrs.evolve(LAN, reap_after=60.0)
        simulation = Simulation(200, profile=profile, seed=12, latency=0.005, jitter=0.01)
        simulation.start()
        simulation.run(5)
        simulation.kill("m00042")
        took = self.run_until(simulation, lambda: len(simulation.deaths["m00042"]) == 199, limit=30)
        # Detection, then the shortest suspicion timeout (confirmed by many), then gossip.
        shortest, _ = LAN.suspicion_timeouts(200)
        self.assertGreater(took, shortest)
        self.assertEqual(simulation.statuses("m00042"), {DEAD: 199})
        # The first accuser's suspicion ran a whole timeout before the first death.
        suspected = min(simulation.suspicions["m00042"])
        first_death = min(simulation.deaths["m00042"].values())
        self.assertGreaterEqual(first_death - suspected, shortest - 0.01)
        # News of a fate goes out in rounds of its own, not at the ticks: everyone hears
        # of the suspicion, then of the death, within a few transits.
        self.assertLess(max(simulation.suspicions["m00042"]) - suspected, 0.4)
        self.assertLess(max(simulation.deaths["m00042"].values()) - first_death, 0.4)
        self.run_until(simulation, lambda: simulation.statuses("m00042") == {"unknown": 199}, 80)
        self.assertClean(simulation)

    def test_false_suspicion_refuted(self) -> None:
        simulation = Simulation(50, seed=13, latency=0.005, jitter=0.01)
        simulation.start()
        simulation.run(5)
        accuser = simulation.members["m00001"]
        accuser.receive(simulation.endpoints["m00002"], [Suspect("m00007", 0, "m00002")])
        self.assertEqual(accuser.member("m00007").status, "suspect")  # type: ignore[union-attr]
        simulation.run(60)
        self.assertEqual(simulation.members["m00007"].incarnation, 1)
        self.assertEqual(simulation.statuses("m00007"), {ALIVE: 49})
        self.assertNotIn("m00007", simulation.deaths)
        self.assertClean(simulation)

    def test_no_false_death_at_ten_percent_loss(self) -> None:
        """Lifeguard's promise: 50 members, 10 minutes of 10 % loss, nobody dies."""
        simulation = Simulation(50, seed=14, loss=0.10, latency=0.01, jitter=0.02)
        simulation.start()
        simulation.run(600)
        self.assertClean(simulation)
        self.assertTrue(simulation.converged())
        # The loss was real, and it did cause suspicions that were refuted.
        self.assertGreater(simulation.traffic().lost, 0.09 * simulation.traffic().datagrams)
        self.assertGreater(max(member.incarnation for member in simulation.members.values()), 0)

    def test_partition_and_heal(self) -> None:
        """Longer than gossip to the dead: push/pull with the dead reunites the sides."""
        simulation = Simulation(20, seed=15, latency=0.005)
        simulation.start()
        simulation.run(5)
        left, right = simulation.names[:10], simulation.names[10:]
        simulation.partition(left, right)
        simulation.run(120)
        for name in left:
            self.assertEqual(simulation.statuses(name), {ALIVE: 9, DEAD: 10})
        simulation.heal()
        self.run_until(simulation, simulation.converged, limit=300)
        self.assertEqual(simulation.traffic().oversized, 0)

    def test_short_partition_heals_by_gossip(self) -> None:
        """Within gossip_to_the_dead, the dead hear that they are dead, and refute."""
        simulation = Simulation(20, seed=16, latency=0.005, push_pull=False)
        simulation.start()
        simulation.run(5)
        simulation.partition(simulation.names[:5], simulation.names[5:])
        simulation.run(25)
        self.assertEqual(simulation.statuses("m00000")[DEAD], 15)
        simulation.heal()
        self.run_until(simulation, simulation.converged, limit=30)

    def test_record_reaches_everyone(self) -> None:
        simulation = Simulation(300, seed=17, latency=0.005, jitter=0.01)
        simulation.start()
        simulation.run(3)
        simulation.publish("m00000", 1)
        took = self.run_until(
            simulation, lambda: len(simulation.record_arrivals["m00000", 1]) == 300, limit=10
        )
        self.assertLess(took, 3)

    def test_an_arrival_spreads_in_rounds_of_news(self) -> None:
        """A join into a quiet cluster travels a network transit per hop, not a gossip
        interval, for the same datagrams."""
        figures = {}
        for fast in (True, False):
            profile = attrs.evolve(LAN, join_news=fast)
            simulation = Simulation(101, profile, seed=19, latency=0.005, jitter=0.01, absent=1)
            simulation.start()
            simulation.run(5)

            def seen(simulation: Simulation = simulation) -> bool:
                return simulation.statuses("m00100")["alive"] == 100

            simulation.arrive("m00100", "m00000")
            simulation.publish("m00100", 1)
            begun = simulation.clock.seconds()
            self.assertTrue(simulation.run_until(seen, 10, step=0.01))
            figures[fast] = simulation.clock.seconds() - begun
        self.assertLess(figures[True], figures[False] / 2)

    def test_an_arrival_brings_its_record_without_digests(self) -> None:
        """Each member fetches a newcomer's record from whoever told it of the newcomer:
        its owner's are the only digests of it."""
        simulation = Simulation(101, seed=19, latency=0.005, jitter=0.01, absent=1)
        simulation.start()
        simulation.run(5)
        senders: list[object] = []

        def tap(source: object, to: object, messages: Sequence[Message]) -> None:
            if any(type(m) is Digest and m.name == "m00100" for m in messages):
                senders.append(source)

        simulation.network.tap = tap
        simulation.arrive("m00100", "m00000")
        simulation.publish("m00100", 1)
        self.run_until(
            simulation, lambda: len(simulation.record_arrivals["m00100", 1]) == 101, limit=1
        )
        self.assertEqual(set(senders), {simulation.endpoints["m00100"]})

    def test_a_digest_heard_counts_as_sent(self) -> None:
        """A new version's digest, heard from others, spares most of its second share."""
        digests = {}
        for feedback in (True, False):
            profile = attrs.evolve(LAN, digest_feedback=feedback)
            simulation = Simulation(100, profile, seed=19, latency=0.005, jitter=0.01)
            simulation.start()
            simulation.run(5)
            sent: list[Message] = []

            def tap(
                source: object, to: object, messages: Sequence[Message], sent: list[Message] = sent
            ) -> None:
                sent.extend(message for message in messages if type(message) is Digest)

            simulation.network.tap = tap
            simulation.publish("m00042", 1)
            simulation.run(10)
            self.assertEqual(len(simulation.record_arrivals["m00042", 1]), 100)
            digests[feedback] = len(sent)
        self.assertLess(digests[True], digests[False] * 0.75)

    def test_deterministic(self) -> None:
        def run() -> tuple[int, int, list[int]]:
            simulation = Simulation(30, seed=18, loss=0.2, latency=0.01, jitter=0.01)
            simulation.start()
            simulation.run(60)
            traffic = simulation.traffic()
            return traffic.bytes, traffic.lost, [m.incarnation for m in simulation.members.values()]

        self.assertEqual(run(), run())
