"""Thousands of :class:`~hepto.gossip.swim.Membership` in one process, on simulated time.

A deterministic laboratory for the gossip protocol: one seeded random generator, a
heap-based clock, and an in-memory network with loss, latency and partitions.  Tests
use it to check convergence, detection and refutation at scale; ``benchmarks/simulate.py``
uses it to measure them.

Scale drives the design: ``task.Clock`` re-sorts its whole list on every ``callLater``,
which at 10,000 members (each with a probe, a gossip and several ack timers pending)
costs more than the protocol itself, so :class:`HeapClock` keeps a heap.  Members can
start from one shared, converged :class:`~hepto.gossip.table.Snapshot` instead of
10,000 private copies of 10,000 states.
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
import itertools
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import attrs
from nacl.signing import SigningKey
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import Clock
from twisted.logger import Logger
from zope.interface import implementer

from hepto.config import Endpoint
from hepto.gossip.codec import HEADER_SIZE, encoded_size
from hepto.gossip.identity import Identity
from hepto.gossip.messages import MAX_DATAGRAM, SEALING_OVERHEAD, Message, Ping
from hepto.gossip.profile import LAN, Profile
from hepto.gossip.proofs import Notary, Verdict
from hepto.gossip.swim import Membership
from hepto.gossip.table import MemberState, Snapshot
from hepto.state import ALIVE, DEAD, SUSPECT

PORT = 7946
CLUSTER = "simulation"
NETWORK = ipaddress.IPv6Network("2001:db8:5117::/48")
#: A lost SYN is retried after a second, a lost data segment after TCP's minimum RTO.
SYN_RETRY = 1.0
SEGMENT_RETRY = 0.2
#: How long a TCP connection attempt to an unreachable member hangs before failing.
CONNECT_TIMEOUT = 3.0


def identity_of(name: str) -> Identity:
    """A simulated member's identity, derived from its name: every run is the same."""
    return Identity(SigningKey(hashlib.sha256(b"hepto simulation\0" + name.encode()).digest()))


@attrs.frozen
class SharedNotary(Notary):
    """A notary whose checks every simulated member shares.

    A thousand members checking the same Alive do the same work a thousand times, in
    one process: once is enough to know the verdict (every member pins the same
    identities), and a join of 1,000 members takes a third of the time.
    """

    verdicts: dict[tuple[object, ...], Verdict] = attrs.field(eq=False, repr=False)

    def check(
        self, name: str, incarnation: int, address: Endpoint, role: str, proof: bytes
    ) -> Verdict:
        key = (name, incarnation, address, role, proof)
        verdict = self.verdicts.get(key)
        if verdict is None:
            verdict = self.verdicts[key] = Notary.check(
                self, name, incarnation, address, role, proof
            )
        return verdict


@implementer(IReactorTime)
class HeapClock:
    """``IReactorTime`` on a heap: O(log n) per call scheduled, for any number pending.

    Cancelled and rescheduled calls leave stale heap entries behind, skipped when they
    surface; postponed ones are re-queued lazily, as the reactor does.
    """

    def __init__(self, now: float = 0.0) -> None:
        self._now = now
        self._heap: list[tuple[float, int, DelayedCall]] = []
        self._order = itertools.count()

    def seconds(self) -> float:
        return self._now

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kw: object
    ) -> IDelayedCall:
        call = DelayedCall(
            self._now + delay, callable, args, kw, self._cancelled, self._push, self.seconds
        )
        self._push(call)
        return call

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:
        return [call for _, _, call in self._heap if call.active()]

    def _push(self, call: DelayedCall) -> None:
        heapq.heappush(self._heap, (call.time, next(self._order), call))

    def _cancelled(self, call: DelayedCall) -> None:
        pass

    def advance(self, seconds: float) -> None:
        self.run_until(self._now + seconds)

    def run_until(self, deadline: float) -> None:
        """Run every call due by ``deadline``, in time order, then stand at ``deadline``."""
        heap = self._heap
        while heap and heap[0][0] <= deadline:
            when, _, call = heapq.heappop(heap)
            if call.cancelled or call.called:
                continue
            if call.delayed_time:
                call.activate_delay()
                self._push(call)
                continue
            if when != call.time:
                continue  # an entry left behind by a reset to an earlier time
            self._now = when
            call.called = 1
            call.func(*call.args, **call.kw)
        self._now = max(self._now, deadline)


class _Quiet(Logger):
    """A logger for thousands of simulated members: a million events would cost more
    than the simulation."""

    def emit(self, level: Any, format: str | None = None, **kwargs: object) -> None:
        pass


QUIET = _Quiet()


@attrs.define
class Traffic:
    datagrams: int = 0
    bytes: int = 0
    lost: int = 0
    oversized: int = 0


class SimulatedNetwork:
    """Datagrams between endpoints with loss, latency and partitions.

    Sizes are counted as on the wire (frame plus the sealing envelope), so that
    :attr:`sent` gives realistic bytes per second.
    """

    def __init__(
        self,
        clock: HeapClock | Clock,
        rng: random.Random,
        loss: float = 0.0,
        latency: float = 0.005,
        jitter: float = 0.0,
    ) -> None:
        self.clock = clock
        self.rng = rng
        self.loss = loss
        self.latency = latency
        self.jitter = jitter
        self.sent: defaultdict[Endpoint, Traffic] = defaultdict(Traffic)
        self._hosts: dict[Endpoint, Membership] = {}
        self._groups: dict[Endpoint, int] = {}
        #: Endpoints detached from the network, and when each was first sent a ping since.
        self._detached: set[Endpoint] = set()
        self.first_pings: dict[Endpoint, float] = {}
        #: Told of every datagram sent: ``tap(source, destination, messages)``.
        self.tap: Callable[[Endpoint, Endpoint, Sequence[Message]], None] | None = None

    def attach(self, endpoint: Endpoint, membership: Membership) -> None:
        self._hosts[endpoint] = membership
        self._detached.discard(endpoint)
        self.first_pings.pop(endpoint, None)

    def detach(self, endpoint: Endpoint) -> None:
        self._hosts.pop(endpoint, None)
        self._detached.add(endpoint)

    def host(self, endpoint: Endpoint) -> Membership | None:
        return self._hosts.get(endpoint)

    def port(self, endpoint: Endpoint) -> Port:
        return Port(self, endpoint, self.sent[endpoint])

    def partition(self, groups: Iterable[Collection[Endpoint]]) -> None:
        """Cut the network: only endpoints of the same group (or of none) still talk."""
        self._groups = {
            endpoint: number for number, group in enumerate(groups, 1) for endpoint in group
        }

    def heal(self) -> None:
        self._groups = {}

    def connected(self, source: Endpoint, destination: Endpoint) -> bool:
        return destination in self._hosts and self._same_side(source, destination)

    def _same_side(self, source: Endpoint, destination: Endpoint) -> bool:
        groups = self._groups
        return not groups or groups.get(source, 0) == groups.get(destination, 0)

    def _delay(self) -> float:
        return self.latency + (self.rng.random() * self.jitter if self.jitter else 0.0)

    def send(
        self,
        source: Endpoint,
        destination: Endpoint,
        messages: Sequence[Message],
        traffic: Traffic | None = None,
    ) -> None:
        size = HEADER_SIZE + sum(map(encoded_size, messages)) + SEALING_OVERHEAD
        if traffic is None:
            traffic = self.sent[source]
        traffic.datagrams += 1
        traffic.bytes += size
        if size > MAX_DATAGRAM:
            traffic.oversized += 1
        if self.tap is not None:
            self.tap(source, destination, messages)
        host = self._hosts.get(destination)
        if (
            host is None
            and destination in self._detached
            and destination not in self.first_pings
            and any(type(message) is Ping for message in messages)
        ):
            # The probe that will find a dead member out: how long it waited for one.
            self.first_pings[destination] = self.clock.seconds()
        if (
            host is None
            or (self.loss and self.rng.random() < self.loss)
            or not self._same_side(source, destination)
        ):
            traffic.lost += 1
            return
        # A member killed meanwhile ignores it: Membership.receive does nothing once stopped.
        self.clock.callLater(self._delay(), host.receive, source, messages)

    def stream_delay(self, legs: int) -> float:
        """A TCP exchange of ``legs`` one-way trips, each lost one retried after its RTO."""
        delay = 0.0
        for leg in range(legs):
            delay += self._delay()
            while self.loss and self.rng.random() < self.loss:
                delay += SYN_RETRY if leg == 0 else SEGMENT_RETRY
        return delay

    def exchange(self, source: Endpoint, destination: Endpoint, legs: int) -> Deferred[bool]:
        """A TCP exchange: True once done, False if the destination cannot be reached."""
        result: Deferred[bool] = Deferred(lambda deferred: call.cancel())
        if self.connected(source, destination):
            call = self.clock.callLater(self.stream_delay(legs), result.callback, True)
        else:
            call = self.clock.callLater(CONNECT_TIMEOUT, result.callback, False)
        return result


@attrs.define
class Port:
    """One member's :class:`~hepto.gossip.swim.Network` on a :class:`SimulatedNetwork`."""

    network: SimulatedNetwork
    endpoint: Endpoint
    traffic: Traffic

    def send(self, to: Endpoint, messages: Sequence[Message]) -> None:
        self.network.send(self.endpoint, to, messages, self.traffic)

    def ping_stream(self, to: Endpoint, ping: Ping) -> Deferred[bool]:
        # Connect (SYN, SYN-ACK), ping, ack.
        return self.network.exchange(self.endpoint, to, 4)


@attrs.define(eq=False)
class SimulatedRecords:
    """What the state layer does with records, reduced to versions.

    Hearing of a newer version than it holds, in a digest, a member fetches the record
    from the holder over TCP; hearing of a member new to it, it fetches that member's
    record from the member that told it.  A holder asked for a record it is still
    fetching answers once its own fetch ends.  A member advertises a record it took
    only when it replaces one it held: a member's first record is no news, since
    everyone who learns of the member fetches it (:mod:`hepto.gossip.store`).
    """

    simulation: Simulation
    membership: Membership
    held: dict[str, int] = attrs.field(factory=dict)
    fetching: dict[str, int] = attrs.field(factory=dict)
    #: Fetches of others waiting for ours to end, by record name.
    waiting: dict[str, list[Callable[[], None]]] = attrs.field(factory=dict)

    def publish(self, version: int) -> None:
        self._hold(self.membership.name, version, advertise=True)

    def heard(self, holder: MemberState, name: str, version: int) -> None:
        self._fetch(holder.name, name, version)

    def arrived(self, teller: MemberState, name: str) -> None:
        if name not in self.held:
            self._fetch(teller.name, name, 1, fallback=name)

    def _fetch(self, holder: str, name: str, version: int, fallback: str | None = None) -> None:
        if self.held.get(name, -1) >= version or self.fetching.get(name, -1) >= version:
            return
        self.fetching[name] = version
        self.simulation.records[holder].serve(name, lambda: self._ask(holder, name, fallback))

    def serve(self, name: str, answer: Callable[[], None]) -> None:
        """Someone asks for ``name``: answered now, or once our own fetch of it ends."""
        if name in self.held or name not in self.fetching:
            answer()
            return
        self.waiting.setdefault(name, []).append(answer)

    def _ask(self, holder: str, name: str, fallback: str | None) -> None:
        # Connect, request, and a 4 KiB answer of three segments.
        fetch = self.simulation.network.exchange(
            self.membership.address, self.simulation.endpoints[holder], 5
        )
        fetch.addCallback(self._fetched, holder, name, fallback)

    def _fetched(self, done: bool, holder: str, name: str, fallback: str | None) -> None:
        wanted = self.fetching.get(name)
        if wanted is None or self.membership.name not in self.simulation.running:
            return
        version = self.simulation.records[holder].held.get(name, -1) if done else -1
        if version >= wanted:
            del self.fetching[name]
            self._hold(name, version)
        elif fallback is not None and fallback != holder:
            self.simulation.records[fallback].serve(name, lambda: self._ask(fallback, name, None))
        else:
            del self.fetching[name]
            self._release(name)

    def _hold(self, name: str, version: int, advertise: bool = False) -> None:
        if self.held.get(name, -1) >= version:
            return
        update = name in self.held
        self.held[name] = version
        self.simulation.record_arrivals[name, version][self.membership.name] = (
            self.simulation.clock.seconds()
        )
        if advertise or update:
            self.membership.broadcast_digest(name, version)
        self._release(name)

    def _release(self, name: str) -> None:
        for answer in self.waiting.pop(name, []):
            answer()


class Simulation:
    """``size`` members named ``m00000``... on a simulated network.

    With ``converged`` they start knowing each other (one shared snapshot); without, each
    knows only itself until :meth:`join`.
    """

    def __init__(
        self,
        size: int,
        profile: Profile = LAN,
        seed: int = 0,
        loss: float = 0.0,
        latency: float = 0.005,
        jitter: float = 0.0,
        converged: bool = True,
        absent: int = 0,
        quiet: bool = True,
        push_pull: bool = True,
        clock: HeapClock | Clock | None = None,
    ) -> None:
        """``clock`` is a fresh :class:`HeapClock` unless given (tests of a few members
        may prefer ``task.Clock``).  The last ``absent`` members are not running and
        unknown to the others until they :meth:`arrive`."""
        self.clock = HeapClock() if clock is None else clock
        self.push_pull = push_pull
        self.rng = random.Random(seed)
        self.profile = profile
        self.network = SimulatedNetwork(self.clock, self.rng, loss, latency, jitter)
        self.names = [f"m{index:05d}" for index in range(size)]
        self.endpoints = {
            name: Endpoint(NETWORK.network_address + index + 1, PORT)
            for index, name in enumerate(self.names)
        }
        # Every identity is pinned from the start, as records spread long before a
        # member's first Alive is news to anyone.
        identities = {name: identity_of(name) for name in self.names}
        pins = {name: identity.public_key for name, identity in identities.items()}
        verdicts: dict[tuple[object, ...], Verdict] = {}
        self.notaries = {
            name: SharedNotary(CLUSTER, name, identity, pins.get, verdicts)
            for name, identity in identities.items()
        }
        snapshot = (
            Snapshot(
                [
                    MemberState(
                        name,
                        self.endpoints[name],
                        "node",
                        0,
                        ALIVE,
                        0.0,
                        self.notaries[name].prove(0, self.endpoints[name], "node"),
                    )
                    for name in self.names[: size - absent]
                ]
            )
            if converged
            else None
        )
        self._absent = set(self.names[size - absent :])
        self.members: dict[str, Membership] = {}
        self.records: dict[str, SimulatedRecords] = {}
        #: Names of the members not killed.
        self.running: set[str] = set()
        #: When each member first held each (record name, version).
        self.record_arrivals: defaultdict[tuple[str, int], dict[str, float]] = defaultdict(dict)
        #: When each observer first saw each member dead or left: {member: {observer: t}}.
        self.deaths: defaultdict[str, dict[str, float]] = defaultdict(dict)
        #: Observers that declared a member dead while it was running: (observer, member, t).
        self.false_deaths: list[tuple[str, str, float]] = []
        #: When anyone began to suspect each member, every time: {member: [t, ...]}.
        self.suspicions: defaultdict[str, list[float]] = defaultdict(list)
        for name in self.names:
            endpoint = self.endpoints[name]
            membership = Membership(
                name,
                endpoint,
                "node",
                self.clock,
                self.network.port(endpoint),
                profile,
                self.rng,
                notary=self.notaries[name],
                snapshot=None if name in self._absent else snapshot,
            )
            if quiet:
                membership.log = QUIET
            records = SimulatedRecords(self, membership)
            if name not in self._absent and converged:
                # A converged cluster's members hold each other's records: version 0.
                records.held = dict.fromkeys(self.names[: size - absent], 0)
            membership.on_digest = records.heard
            membership.on_arrival = records.arrived
            membership.subscribe(self._observer(name))
            self.members[name] = membership
            self.records[name] = records
            self.network.attach(endpoint, membership)
            if name not in self._absent:
                self.running.add(name)

    def _observer(self, observer: str) -> Callable[[MemberState | None, MemberState], None]:
        def changed(old: MemberState | None, new: MemberState) -> None:
            if new.status == SUSPECT and (old is None or old.status != SUSPECT):
                self.suspicions[new.name].append(self.clock.seconds())
            if new.reachable or (old is not None and not old.reachable):
                return
            self.deaths[new.name].setdefault(observer, self.clock.seconds())
            if new.status == DEAD and new.name in self.running:
                self.false_deaths.append((observer, new.name, self.clock.seconds()))

        return changed

    # Driving ----------------------------------------------------------------------------

    def start(self, names: Iterable[str] | None = None) -> None:
        """Start members; with ``push_pull``, each also exchanges full state periodically
        (as the gossip service does over TCP), starting at a random phase."""
        if names is None:
            names = [name for name in self.names if name not in self._absent]
        for name in names:
            member = self.members[name]
            member.start()
            if self.push_pull and member.size > 1:
                self.clock.callLater(
                    self.rng.uniform(0, member.push_pull_interval()), self._push_pull_tick, name
                )

    def run(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def run_until(self, done: Callable[[], bool], limit: float, step: float = 0.1) -> bool:
        """Advance in steps until ``done()``; False if ``limit`` seconds passed first."""
        deadline = self.clock.seconds() + limit
        while not done():
            if self.clock.seconds() >= deadline:
                return False
            self.clock.advance(step)
        return True

    def arrive(self, name: str, anchor: str) -> None:
        """An absent member starts and joins through ``anchor``."""
        self._absent.discard(name)
        self.running.add(name)
        self.start([name])
        self.join(name, anchor)

    def join(self, name: str, anchor: str) -> None:
        """What a join through ``anchor`` does: a TCP push/pull of both views, then
        periodic ones (when ``push_pull``), as the gossip service does."""
        joined = self._push_pull(name, self.endpoints[anchor])
        if self.push_pull:
            joined.addCallback(lambda _: self._schedule_push_pull(name))

    def _push_pull(self, name: str, peer_address: Endpoint) -> Deferred[None]:
        member = self.members[name]
        exchange = self.network.exchange(member.address, peer_address, 4)

        def merge(done: bool) -> None:
            peer = self.network.host(peer_address)
            if not done or name not in self.running or peer is None:
                return
            mine, theirs = member.local_state(), peer.local_state()
            peer.merge_state(mine)
            member.merge_state(theirs)
            for one, other in ((member, peer), (peer, member)):
                holder = one.member(other.name)
                if holder is None:
                    continue
                held = self.records[other.name].held
                for record, version in held.items():
                    self.records[one.name].heard(holder, record, version)
                # Members the peer holds no record of come from their owners.
                for state in other.local_state():
                    owner = one.member(state.name)
                    if state.name not in held and owner is not None and state.status == ALIVE:
                        self.records[one.name].arrived(owner, state.name)

        return exchange.addCallback(merge)

    def _push_pull_tick(self, name: str) -> None:
        if name not in self.running:
            return
        member = self.members[name]
        target = member.push_pull_target()
        if target is None:
            self._schedule_push_pull(name)
        else:
            self._push_pull(name, target.address).addCallback(
                lambda _: self._schedule_push_pull(name)
            )

    def _schedule_push_pull(self, name: str) -> None:
        # After the exchange: its outcome decides how soon the next one is due.
        self.clock.callLater(self.members[name].push_pull_interval(), self._push_pull_tick, name)

    def kill(self, name: str) -> None:
        """Like kill -9: the member stops answering, without a word."""
        self.running.discard(name)
        self.members[name].stop()
        self.network.detach(self.endpoints[name])

    def publish(self, name: str, version: int) -> None:
        """``name`` makes a new version of its record."""
        self.records[name].publish(version)

    def partition(self, *groups: Collection[str]) -> None:
        self.network.partition([self.endpoints[name] for name in group] for group in groups)

    def heal(self) -> None:
        self.network.heal()

    # Looking ----------------------------------------------------------------------------

    def statuses(self, name: str) -> Counter[str]:
        """How the running members other than ``name`` see it (``unknown`` if not at all)."""
        seen: Counter[str] = Counter()
        for observer in self.running:
            if observer != name:
                state = self.members[observer].member(name)
                seen[state.status if state is not None else "unknown"] += 1
        return seen

    def converged(self) -> bool:
        """Every running member sees every running member alive, and no other as such."""
        expected = len(self.running)
        # Counting first is cheap, and fails fast while a join is still spreading.
        if any(self.members[name].size < expected for name in self.running):
            return False
        for name in self.running:
            alive = [
                state.name for state in self.members[name].local_state() if state.status == ALIVE
            ]
            if len(alive) != expected or not self.running.issuperset(alive):
                return False
        return True

    def traffic(self) -> Traffic:
        total = Traffic()
        for traffic in self.network.sent.values():
            total.datagrams += traffic.datagrams
            total.bytes += traffic.bytes
            total.lost += traffic.lost
            total.oversized += traffic.oversized
        return total


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]
