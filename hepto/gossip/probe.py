"""SWIM's probes: one member's direct and indirect probes of a peer, and the ping-reqs it
relays for others.

:class:`Prober` finds out whether a target answers; what an unanswered probe means (a
suspicion) is :class:`~hepto.gossip.swim.Membership`'s business, as memberlist keeps
its probe code apart from its state merging.  A probe is a ping; without an ack after
the probe timeout, ping-reqs to a few helpers and a TCP ping in parallel; the outcome
is told back once an ack arrives or, failing that, one (health-scaled) probe interval
after the ping.  Probes may overlap: the schedule's turns and a last look at a suspect
are each a probe of their own.  Every outcome also moves the Lifeguard health score,
which the prober shares with its membership.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from hepto.config import Endpoint
from hepto.gossip.awareness import Awareness
from hepto.gossip.droplog import Drop
from hepto.gossip.messages import Ack, Message, Nack, Ping, PingReq, Suspect
from hepto.gossip.profile import Profile
from hepto.gossip.table import MemberState, RandomMembers
from hepto.state import ALIVE, SUSPECT

#: Ping-req relays in flight at once: a flood of ping-reqs must not make us a reflector.
MAX_RELAYS: Final = 256
_SEQ_MODULO: Final = 2**32


@attrs.define(eq=False)
class _Probe:
    target: MemberState
    seq: int
    timer: IDelayedCall | None = None
    #: When the probe ends, failed, if nobody acked by then.
    end: IDelayedCall | None = None
    helpers: frozenset[str] = frozenset()
    nacks: set[str] = attrs.field(factory=set)
    stream: Deferred[bool] | None = None

    @property
    def indirect(self) -> bool:
        return self.timer is None


@attrs.define(eq=False)
class _Relay:
    requester: Endpoint
    #: The requester's sequence number, which our ack or nack must carry back.
    seq: int
    target: str
    #: Ours, on the ping we send the target.
    local_seq: int
    #: When to nack, and when to stop listening for the target's ack.
    timer: IDelayedCall | None = None
    expiry: IDelayedCall | None = None


class Prober:
    """Our probes, and the relays we run for others' probes."""

    log = Logger()

    def __init__(
        self,
        name: str,
        clock: IReactorTime,
        profile: Profile,
        awareness: Awareness,
        rng: random.Random,
        *,
        send: Callable[[Endpoint, list[Message]], None],
        send_probe: Callable[[Endpoint, list[Message]], None],
        ping_stream: Callable[[Endpoint, Ping], Deferred[bool]],
        random_members: RandomMembers,
        drop: Drop,
        answered: Callable[[MemberState], None],
        unanswered: Callable[[MemberState], None],
    ) -> None:
        """``send`` sends one datagram (news rides along), ``send_probe`` our probe's
        ping (recent news too); ``answered(target)`` and ``unanswered(target)`` tell how
        each probe ended."""
        self.name = name
        self._clock = clock
        self._profile = profile
        self._awareness = awareness
        self._send = send
        self._send_probe = send_probe
        self._ping_stream = ping_stream
        self._random_members = random_members
        self._drop = drop
        self._answered = answered
        self._unanswered = unanswered
        #: Probes and relays by the sequence number of the ping we sent for them.
        self._waiting: dict[int, _Probe | _Relay] = {}
        self._seq = rng.randrange(_SEQ_MODULO)

    def probe(self, target: MemberState) -> None:
        """Probe ``target``: the probe lasts until an ack, or fails after a probe interval
        (longer while our health is poor: Lifeguard)."""
        seq = self._next_seq()
        probe = _Probe(target, seq)
        self._waiting[seq] = probe
        messages: list[Message] = [Ping(seq, target.name, self.name)]
        if target.status == SUSPECT:
            # The buddy system: tell a suspect directly, so that it refutes at once.
            messages.append(Suspect(target.name, target.incarnation, self.name))
        probe.timer = self._clock.callLater(
            self._awareness.scale(self._profile.probe_timeout), self._probe_indirectly, probe
        )
        probe.end = self._clock.callLater(
            self._awareness.scale(self._profile.probe_interval), self._probe_failed, probe
        )
        self._send_probe(target.address, messages)

    def stop(self) -> None:
        """Give up every probe and relay, silently."""
        for waiter in list(self._waiting.values()):
            self._forget(waiter)

    # Receiving --------------------------------------------------------------------------

    def receive_ping(self, sender: Endpoint, message: Message) -> None:
        assert isinstance(message, Ping)
        if message.target != self.name:
            self._drop("ping for another member", target=message.target, sender=sender)
            return
        self._send(sender, [Ack(message.seq, self.name)])

    def receive_ping_req(self, sender: Endpoint, message: Message) -> None:
        assert isinstance(message, PingReq)
        if message.target == self.name:
            self._drop("ping-req about ourselves", sender=sender)
            return
        if len(self._waiting) >= MAX_RELAYS:
            self._drop("too many ping-req relays", sender=sender)
            return
        seq = self._next_seq()
        relay = _Relay(sender, message.seq, message.target, seq)
        self._waiting[seq] = relay
        # Nack early enough to reach the requester before its probe ends, but keep
        # listening a whole interval: a late ack still saves the target.
        relay.timer = self._clock.callLater(self._profile.nack_timeout, self._nack, relay)
        relay.expiry = self._clock.callLater(
            self._profile.probe_interval, self._relay_expired, relay
        )
        self._send(message.target_address, [Ping(seq, message.target, self.name)])

    def receive_ack(self, sender: Endpoint, message: Message) -> None:
        assert isinstance(message, Ack)
        waiter = self._waiting.get(message.seq)
        if waiter is None:
            # Late: the probe already ended.  Common under loss, not worth a drop.
            return
        if isinstance(waiter, _Relay):
            if message.source != waiter.target:
                self._drop("ack from the wrong member", source=message.source)
                return
            self._forget(waiter)
            self._send(waiter.requester, [Ack(waiter.seq, waiter.target)])
            return
        if message.source != waiter.target.name:
            self._drop("ack from the wrong member", source=message.source)
            return
        # A direct ack is evidence of our own good health; a relayed one is not.
        self._probe_succeeded(waiter, 0 if waiter.indirect else -1)

    def receive_nack(self, sender: Endpoint, message: Message) -> None:
        assert isinstance(message, Nack)
        waiter = self._waiting.get(message.seq)
        if isinstance(waiter, _Probe) and message.source in waiter.helpers:
            waiter.nacks.add(message.source)

    # Probing ----------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % _SEQ_MODULO
        return self._seq

    def _probe_indirectly(self, probe: _Probe) -> None:
        probe.timer = None
        target = probe.target
        helpers = self._random_members(
            self._profile.indirect_checks,
            lambda state: state.status == ALIVE and state.name != target.name,
        )
        probe.helpers = frozenset(helper.name for helper in helpers)
        request = PingReq(probe.seq, target.name, target.address, self.name)
        for helper in helpers:
            self._send(helper.address, [request])
        # In parallel with the helpers, try TCP: it gets through where UDP is blocked.
        stream = self._ping_stream(target.address, Ping(probe.seq, target.name, self.name))
        probe.stream = stream
        stream.addCallbacks(
            self._stream_answered,
            self._stream_failed,
            callbackArgs=(probe,),
            errbackArgs=(probe,),
        )

    def _stream_answered(self, acked: bool, probe: _Probe) -> None:
        probe.stream = None
        if acked and self._waiting.get(probe.seq) is probe:
            self.log.warn(
                "{member} answered over TCP but not over UDP: is UDP blocked on the way?",
                member=probe.target.name,
            )
            self._probe_succeeded(probe, 0)

    def _stream_failed(self, failure: Failure, probe: _Probe) -> None:
        probe.stream = None
        if not failure.check(CancelledError):
            self.log.failure("TCP ping of {member} failed", failure, member=probe.target.name)

    def _probe_succeeded(self, probe: _Probe, health_delta: int) -> None:
        self._forget(probe)
        self._answered(probe.target)
        self._awareness.apply(health_delta)

    def _probe_failed(self, probe: _Probe) -> None:
        probe.end = None
        self._forget(probe)
        # Lifeguard: every helper that did not even nack points at our own network.
        if probe.helpers:
            self._awareness.apply(len(probe.helpers) - len(probe.nacks))
        else:
            self._awareness.apply(1)
        self._unanswered(probe.target)

    def _nack(self, relay: _Relay) -> None:
        relay.timer = None
        self._send(relay.requester, [Nack(relay.seq, self.name)])

    def _relay_expired(self, relay: _Relay) -> None:
        relay.expiry = None
        self._forget(relay)

    def _forget(self, waiter: _Probe | _Relay) -> None:
        """End a probe or relay: no more timers, no more interest in its acks."""
        if isinstance(waiter, _Probe):
            self._waiting.pop(waiter.seq, None)
            if waiter.stream is not None:
                stream, waiter.stream = waiter.stream, None
                stream.cancel()
            if waiter.end is not None and waiter.end.active():
                waiter.end.cancel()
            waiter.end = None
        else:
            self._waiting.pop(waiter.local_seq, None)
            if waiter.expiry is not None and waiter.expiry.active():
                waiter.expiry.cancel()
            waiter.expiry = None
        if waiter.timer is not None:
            if waiter.timer.active():
                waiter.timer.cancel()
            waiter.timer = None
