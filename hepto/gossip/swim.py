"""SWIM membership with Lifeguard, after HashiCorp memberlist, as pure protocol logic.

:class:`Membership` never touches a socket or the reactor: it is handed a clock
(``IReactorTime``), a :class:`Network` to send datagrams through, and calls to
:meth:`Membership.receive` for what arrives.  The same code runs under ``task.Clock``
with an in-memory network (unit tests, :mod:`hepto.gossip.simulation`) and on the
reactor with real UDP.

Failure detection: every probe interval a member pings one peer, the one that the probe
schedule every member follows gives it for this round (:mod:`hepto.gossip.schedule`), so
that every member is probed once a round; without an ack after the probe timeout it
asks ``indirect_checks`` others to ping the target for it (they ack, or nack so that our
Lifeguard knows they are fine) and tries a TCP ping in parallel; a target none of these
confirms by the end of the interval is suspected.  A suspected member that hears of it
refutes by raising its incarnation; one that cannot for the suspicion timeout is
declared dead.  The probes
themselves (pings, ping-reqs, acks, nacks and the relays we run for others) are
:class:`~hepto.gossip.probe.Prober`'s, the suspicion timers
:class:`~hepto.gossip.suspicion.Suspicions`'; :class:`Membership` picks the targets,
decides what an unanswered probe means, and declares the dead.

Dissemination: membership news (alive, suspect, dead) and record digests (sent and
heard by :class:`~hepto.gossip.digests.Digests`) are queued in a
:class:`~hepto.gossip.broadcast.BroadcastQueue`, which
:class:`~hepto.gossip.dissemination.Gossip` piggybacks on every datagram we send and
gossips to a few random peers every interval, and at once for news of a member's fate.

Beyond memberlist, against false deaths on lossy links: a member probes a suspect
itself shortly before declaring it dead (the last look), gives a suspect that answers
a few more looks, repeats its refutation to anyone still accusing an older incarnation,
and tells the recently dead that they are thought dead even when there is no other
news.  ``docs/gossip.rst`` explains each rule and its figures.

Beyond memberlist, against a key holder (every host holds the cluster key): an Alive
carries its member's signature.  :class:`~hepto.gossip.trust.Trust` checks it, and the
incarnation of every piece of news, before anything is believed.  An Alive taken on
trust before an identity was pinned to its name is checked as soon as one is: if it was
forged, the member is suspected, so that the real one refutes with an Alive only it can
sign.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from hepto.config import Endpoint
from hepto.gossip import schedule
from hepto.gossip.awareness import Awareness
from hepto.gossip.broadcast import BroadcastQueue
from hepto.gossip.digests import DigestHandler, Digests
from hepto.gossip.dissemination import Gossip
from hepto.gossip.droplog import DropLog
from hepto.gossip.messages import (
    PROTOCOL_MESSAGES,
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
from hepto.gossip.probe import Prober
from hepto.gossip.profile import Profile
from hepto.gossip.proofs import Notary
from hepto.gossip.suspicion import Suspicions
from hepto.gossip.table import EMPTY_SNAPSHOT, MemberState, Roster, Snapshot
from hepto.gossip.trust import Trust
from hepto.observers import Observers
from hepto.state import ALIVE, DEAD, LEFT, SUSPECT

_PROTOCOL: Final = frozenset(PROTOCOL_MESSAGES)


class Network(Protocol):
    """How :class:`Membership` reaches its peers."""

    def send(self, to: Endpoint, messages: Sequence[Message]) -> None:
        """Send one datagram holding ``messages``, best effort."""

    def ping_stream(self, to: Endpoint, ping: Ping) -> Deferred[bool]:
        """Ping over TCP; fires True if acked, False if not (may be cancelled)."""


Observer = Callable[[MemberState | None, MemberState], None]
ReapHandler = Callable[[MemberState], None]
#: Told ``(teller, name)`` of each member first heard of in a datagram, ``teller`` the
#: member that sent it (which holds the newcomer's record, or is fetching it).
ArrivalHandler = Callable[[MemberState, str], None]


class Membership:
    """One member's view of the cluster, kept current by SWIM probing and gossip."""

    log = Logger()

    def __init__(
        self,
        name: str,
        address: Endpoint,
        role: str,
        clock: IReactorTime,
        network: Network,
        profile: Profile,
        rng: random.Random,
        incarnation: int = 0,
        *,
        notary: Notary,
        snapshot: Snapshot | None = None,
    ) -> None:
        self.name = name
        self.address = address
        self.role = role
        self.profile = profile
        self.on_reap: ReapHandler | None = None
        #: The record store's: a newcomer's record is fetched from whoever told of it.
        self.on_arrival: ArrivalHandler | None = None
        self._drop = DropLog(clock, self.log)
        #: Dropped input by reason; never reset.
        self.drops: Counter[str] = self._drop.counts
        self._trust = Trust(notary, self._drop)
        self._clock = clock
        self._network = network
        self._rng = rng
        self._roster = Roster(name, rng, snapshot or EMPTY_SNAPSHOT)
        # Read once: old news is the hot path of a join storm.
        self._counts_alive_copies = profile.counts_alive_copies
        self._queue = BroadcastQueue(
            lambda: profile.retransmit_limit(len(self._roster)),
            linger=profile.recent_news_linger,
            now=clock.seconds,
        )
        self._digests = Digests(
            name,
            self._queue,
            self._roster.at,
            self._drop,
            self.log,
            feedback=profile.digest_feedback,
        )
        self._gossip = Gossip(
            name,
            clock,
            profile,
            self._queue,
            send=network.send,
            random_members=self._roster.random_members,
            departed=self._roster.departed,
            alone=lambda: self._roster.live <= 1,
        )
        self._queue.on_filled = self._gossip.wake
        self._awareness = Awareness(profile.awareness_max_multiplier)
        self._suspicions = Suspicions(
            clock,
            profile,
            self._awareness,
            member=self._roster.get,
            timed_out=self._suspicion_timed_out,
        )
        self._prober = Prober(
            name,
            clock,
            profile,
            self._awareness,
            rng,
            send=self._gossip.send,
            send_probe=self._gossip.send_probe,
            ping_stream=network.ping_stream,
            random_members=self._roster.random_members,
            drop=self._drop,
            answered=self._suspicions.answered,
            unanswered=self._probe_unanswered,
        )
        self._observers: Observers[[MemberState | None, MemberState]] = Observers(
            "Membership observer", self.log
        )
        #: The next probe tick, and our turn of this round of the schedule, if pending.
        self._probe_call: IDelayedCall | None = None
        self._turn_call: IDelayedCall | None = None
        self._running = False
        self._catching_up = False
        #: Changes of our view so far, and whether the last merge brought any.
        self._changes = 0
        #: Members seen entering each state (``suspect``, ``dead``...), and our own
        #: refutations, since start; never reset (the metrics' counters).
        self.entered: Counter[str] = Counter()
        self.refutations = 0
        self._merge_found_news = False
        self._leaving: Deferred[None] | None = None
        self._handlers: dict[type, Callable[[Endpoint, Message], None]] = {
            Alive: self._receive_alive,
            Suspect: self._receive_suspect,
            Dead: self._receive_dead,
            Digest: self._digests.receive,
            Ping: self._prober.receive_ping,
            PingReq: self._prober.receive_ping_req,
            Ack: self._prober.receive_ack,
            Nack: self._prober.receive_nack,
        }
        known = self._roster.get(name)
        if known is not None:
            incarnation = max(incarnation, known.incarnation)
        self._roster.record(self._proven_own(incarnation, clock.seconds()))

    # Reading --------------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._own.incarnation

    @property
    def notary(self) -> Notary:
        """Signs our own Alives; checks everyone else's, for our :class:`Trust`."""
        return self._trust.notary

    @notary.setter
    def notary(self, notary: Notary) -> None:
        self._trust.notary = notary

    @property
    def health(self) -> int:
        """Lifeguard's local health score: 0 is healthy; timeouts scale by health + 1."""
        return self._awareness.score

    def _proven_own(self, incarnation: int, since: float) -> MemberState:
        proof = self.notary.prove(incarnation, self.address, self.role)
        return MemberState(self.name, self.address, self.role, incarnation, ALIVE, since, proof)

    @property
    def _own(self) -> MemberState:
        own = self._roster.get(self.name)
        assert own is not None
        return own

    def members(self) -> Mapping[str, MemberState]:
        """Every known member, this one included, by name."""
        return {state.name: state for state in self._roster}

    @property
    def size(self) -> int:
        """Members known, this one and the dead included: the N of the formulas."""
        return len(self._roster)

    @property
    def live_size(self) -> int:
        """Members alive or suspected, this one included: the N of the suspicion timeout."""
        return self._roster.live

    def member(self, name: str) -> MemberState | None:
        """How we see ``name``, if we know it at all."""
        return self._roster.get(name)

    def local_state(self) -> list[MemberState]:
        """What a TCP push/pull or join sends: everything we know, the dead included."""
        return list(self._roster)

    def queued(self) -> int:
        """Broadcasts waiting to be gossiped."""
        return len(self._queue)

    def push_pull_interval(self) -> float:
        """Seconds until the next TCP push/pull: memberlist's interval, stretched in
        large clusters (:meth:`Profile.scaled_push_pull_interval`).

        While push/pull keeps finding news (the last merge changed our view: we are
        joining, others are, or a partition just healed), the next one comes as soon
        as gossip has had time to spread (``retransmit_limit`` gossip intervals):
        members that joined at the same time as us were neither in our anchor's state
        nor, since few knew us yet, in the gossip that reached us.
        """
        members = len(self._roster)
        if self._merge_found_news:
            return self.profile.gossip_interval * self.profile.retransmit_limit(members)
        return self.profile.scaled_push_pull_interval(members)

    def push_pull_target(self) -> MemberState | None:
        """Whom the next periodic push/pull should be with: a random live member or,
        as likely as any of them, a dead one not yet forgotten.  Those attempts are how
        the two sides of a healed partition find each other again (Serf's reconnect)
        once gossip to the dead has stopped."""
        return next(
            iter(self._roster.random_members(1, lambda state: state.status != LEFT)),
            None,
        )

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer(old, new)`` on every change of a member; returns an unsubscriber."""
        return self._observers.subscribe(observer)

    # Life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Announce ourselves and start probing and gossiping."""
        if self._running:
            return
        self._running = True
        self._broadcast_member(self._own.alive_message())
        interval = self.profile.probe_interval
        if self.profile.scheduled_probes:
            # Every member probes at the start of each round of the shared clock.
            first = schedule.next_round_in(self._clock.seconds(), interval, rounds=0)
        else:
            # A random phase, so that members started together do not probe in lockstep.
            first = self._rng.uniform(0, interval)
        self._probe_call = self._clock.callLater(first, self._probe_tick)
        self._gossip.start(self._rng.uniform(0, self.profile.gossip_interval))

    def stop(self) -> None:
        """Stop every timer; later datagrams are ignored."""
        self._running = False
        for call in (self._probe_call, self._turn_call):
            if call is not None and call.active():
                call.cancel()
        self._probe_call = self._turn_call = None
        self._gossip.stop()
        self._suspicions.stop()
        self._prober.stop()
        if self._leaving is not None and not self._leaving.called:
            self._leaving.callback(None)

    def leave(self) -> Deferred[None]:
        """Announce a graceful leave; fires once it was gossiped, or after leave_timeout."""
        if self._leaving is not None:
            done: Deferred[None] = Deferred()
            self._leaving.addBoth(lambda result: done.callback(None))
            return done
        leaving: Deferred[None] = Deferred()
        self._leaving = leaving
        own = self._own
        timeout = self._clock.callLater(self.profile.leave_timeout, self._left, "timed out")
        leaving.addBoth(lambda result: timeout.cancel() if timeout.active() else None)
        self._change(attrs.evolve(own, status=LEFT, since=self._clock.seconds()))
        self._queue.put(
            self.name,
            Dead(self.name, own.incarnation, self.name),
            on_done=lambda: self._left("gossiped"),
        )
        if not any(state.reachable for state in self._roster if state.name != self.name):
            self._left("alone")
        return leaving

    def _left(self, how: str) -> None:
        if self._leaving is not None and not self._leaving.called:
            self.log.info("Leave of {name} announced ({how})", name=self.name, how=how)
            self._leaving.callback(None)

    # Receiving --------------------------------------------------------------------------

    def receive(self, sender: Endpoint, messages: Sequence[Message]) -> None:
        """Handle the messages of one datagram from ``sender``.

        News is handled before protocol messages, so that an ack we send back already
        carries the refutation that a piggybacked suspicion provoked.
        """
        if not self._running:
            return
        handlers = self._handlers
        protocol = []
        for message in messages:
            if type(message) in _PROTOCOL:
                protocol.append(message)
            else:
                handlers[type(message)](sender, message)
        for message in protocol:
            handlers[type(message)](sender, message)

    def merge_state(self, states: Sequence[MemberState]) -> None:
        """Merge a peer's view (TCP push/pull or join), as memberlist does: its dead
        become suspects for us, so that they get their chance to refute.

        Unlike memberlist, a member that knew nobody (it is joining) does not
        re-broadcast what it learns: that is old news to everyone else, and a thousand
        joiners each re-gossiping a thousand members doubled the cost of a join storm.
        """
        self._catching_up = len(self._roster) == 1
        changes, before = self._changes, self.incarnation
        try:
            for remote in states:
                if remote.status == ALIVE:
                    self._alive(remote.alive_message(), None)
                elif remote.status == LEFT:
                    self._dead(Dead(remote.name, remote.incarnation, remote.name))
                elif remote.status in (SUSPECT, DEAD):
                    self._suspect(Suspect(remote.name, remote.incarnation, self.name))
                else:
                    self._drop("unknown status in merged state", status=remote.status)
        finally:
            self._catching_up = False
            # Our own refutation of what the peer said about us is not news about others.
            self._merge_found_news = self._changes > changes + (self.incarnation > before)

    def identity_pinned(self, name: str) -> None:
        """An identity is now pinned to ``name``: check what we took on trust before.

        A member we learnt of before its record held whatever its first Alive said.  If
        that Alive was forged, the member is suspected: the real one, hearing it,
        refutes with an Alive only it can sign, at its own address; a member that is
        not there (the forger made it up) is declared dead in time.
        """
        known = self._roster.get(name)
        if known is None or not self._trust.forged_on_trust(known):
            return
        self.log.warn(
            "Member {member} was taken to be at {address} (incarnation {incarnation}) on "
            "the word of someone else: suspecting it until it says so itself",
            member=name,
            address=str(known.address),
            incarnation=known.incarnation,
        )
        self._suspect(Suspect(name, known.incarnation, self.name))

    def broadcast_digest(self, name: str, version: int) -> None:
        """Tell everyone that we hold record ``name`` at ``version``."""
        self._digests.broadcast(name, version)

    @property
    def on_digest(self) -> DigestHandler | None:
        """Told of each record digest another member sends: the record store's."""
        return self._digests.handler

    @on_digest.setter
    def on_digest(self, handler: DigestHandler | None) -> None:
        self._digests.handler = handler

    def _receive_alive(self, sender: Endpoint, message: Message) -> None:
        assert isinstance(message, Alive)
        self._alive(message, sender)

    def _receive_suspect(self, sender: Endpoint, message: Message) -> None:
        assert isinstance(message, Suspect)
        self._suspect(message, sender)

    def _receive_dead(self, sender: Endpoint, message: Message) -> None:
        assert isinstance(message, Dead)
        self._dead(message, sender)

    # Membership news --------------------------------------------------------------------

    def _alive(self, message: Alive, sender: Endpoint | None) -> None:
        """``sender`` is where the datagram came from (None for merged state)."""
        known = self._roster.get(message.name)
        if known is None:
            if self._trust.believe_alive(message, None, sender):
                self._broadcast_member(message)
                self._change(MemberState.from_alive(message, self._clock.seconds()))
                if sender is not None:
                    self._arrived(message.name, sender)
            return
        if message.name == self.name:
            # Someone speaks of us with news we did not make (an old instance of us, or a
            # peer that misremembers): our own word must win.
            if (
                (message.incarnation > known.incarnation or message.role != known.role)
                and self._leaving is None
                and self._trust.same_address(message, known)
                and self._trust.plausible(
                    message.name, message.incarnation, known.incarnation, False
                )
            ):
                self._refute(message.incarnation)
            return
        # Most news is old news: this is the hot path of a join storm.
        if message.incarnation <= known.incarnation:
            if self._counts_alive_copies and sender is not None:
                self._queue.heard(message.name, message)
            return
        if not self._trust.believe_alive(message, known, sender):
            return
        self._suspicions.cancel(message.name)
        self._broadcast_member(message)
        since = known.since if known.status == ALIVE else self._clock.seconds()
        self._change(MemberState.from_alive(message, since))

    def _arrived(self, name: str, sender: Endpoint) -> None:
        """A member new to us, told of in a datagram from ``sender``: the store hears of
        it, with the teller (who may be the newcomer itself)."""
        teller = self._roster.at(sender)
        if teller is None or self.on_arrival is None:
            return
        try:
            self.on_arrival(teller, name)
        except Exception:
            self.log.failure("Arrival handler failed on {member}", member=name)

    def _accused(self, message: Suspect | Dead, sender: Endpoint | None) -> MemberState | None:
        """The member that ``message`` accuses, if the accusation is worth weighing."""
        known = self._roster.get(message.name)
        if known is None:
            return None
        if message.incarnation < known.incarnation:
            self._stale_accusation(known, sender)
            return None
        if not self._trust.plausible(message.name, message.incarnation, known.incarnation, False):
            return None
        return known

    def _suspect(self, message: Suspect, sender: Endpoint | None = None) -> None:
        known = self._accused(message, sender)
        if known is None:
            return
        suspicion = self._suspicions.get(message.name)
        if suspicion is not None:
            # Each new accuser shortens the timeout, and its word is worth passing on.
            if suspicion.confirm(message.source):
                self._broadcast_member(message)
            return
        if known.status != ALIVE:
            return
        if message.name == self.name:
            self._refute(message.incarnation)
            return
        self._broadcast_member(message)
        now = self._clock.seconds()
        self._change(
            attrs.evolve(known, incarnation=message.incarnation, status=SUSPECT, since=now)
        )
        # N counts the members that could confirm: the dead we keep for an hour (so that
        # partitions heal) must not stretch detection, as memberlist, which forgets them
        # after gossip_to_the_dead, does not let them either.
        self._suspicions.start(message.name, message.source, now, self.live_size)

    def _suspicion_timed_out(self, suspect: MemberState, confirmations: int) -> None:
        self.log.info(
            "Member {member} declared dead after {seconds:.1f}s of suspicion "
            "({confirmations} confirmations)",
            member=suspect.name,
            seconds=self._clock.seconds() - suspect.since,
            confirmations=confirmations,
        )
        self._dead(Dead(suspect.name, suspect.incarnation, self.name))

    def _dead(self, message: Dead, sender: Endpoint | None = None) -> None:
        known = self._accused(message, sender)
        if known is None:
            return
        self._suspicions.cancel(message.name)
        if not known.reachable:
            return
        if message.name == self.name:
            # While leaving, our own state is already LEFT: only an accusation gets here.
            self._refute(message.incarnation)
            return
        self._broadcast_member(message)
        status = LEFT if message.is_leave else DEAD
        self._change(
            attrs.evolve(
                known,
                incarnation=message.incarnation,
                status=status,
                since=self._clock.seconds(),
            )
        )

    def _stale_accusation(self, known: MemberState, sender: Endpoint | None) -> None:
        """An accusation older than the incarnation we know: its sender missed the
        refutation.  If it is about us, say it again (it rides on our very next
        datagram, often the ack to the ping that carried the accusation); if about a
        live member, tell the sender directly, before its suspicion runs out."""
        if known.name == self.name:
            if self._leaving is None and self._queue.get(self.name) is None:
                self._broadcast_member(known.alive_message())
        elif sender is not None and known.status == ALIVE:
            self._gossip.send(sender, [known.alive_message()])

    def _refute(self, accused: int) -> None:
        own = self._own
        incarnation = max(own.incarnation, accused) + 1
        # Being accused is a sign that our own messages go missing (Lifeguard).
        self._awareness.apply(1)
        self.log.info(
            "Refuting an accusation of {name} at incarnation {accused}: now {incarnation}",
            name=self.name,
            accused=accused,
            incarnation=incarnation,
        )
        self.refutations += 1
        state = self._proven_own(incarnation, own.since)
        self._change(state)
        self._broadcast_member(state.alive_message())
        self._gossip.news()

    def _change(self, new: MemberState) -> None:
        self._changes += 1
        old = self._roster.record(new)
        if old is None or old.status != new.status:
            self.entered[new.status] += 1
            self.log.debug(
                "Member {member} is {status} (incarnation {incarnation})",
                member=new.name,
                status=new.status,
                incarnation=new.incarnation,
            )
        if old is None:
            # A member we did not know: news worth a round of its own when it is all we
            # have to say (a burst of arrivals, as in a join storm, fills the ticks'
            # datagrams instead), and never while we catch up on the cluster ourselves.
            if self.profile.join_news and not self._catching_up and len(self._queue) <= 1:
                self._gossip.news()
        elif old.status != new.status:
            self._gossip.news()
        # Someone new to tell what is queued, or someone departed to tell that it is.
        self._gossip.wake()
        self._observers.notify(old, new)

    def _broadcast_member(self, message: Alive | Suspect | Dead) -> None:
        if self._catching_up and message.name != self.name:
            return
        # Keyed by member: newer news about a member replaces what was queued about it.
        self._queue.put(message.name, message)

    # Probing ----------------------------------------------------------------------------

    def _probe_tick(self) -> None:
        """The start of a round of the schedule (or, without it, of our own interval)."""
        self._reap()
        interval = self.profile.probe_interval
        if self.profile.scheduled_probes:
            self._round()
            # Lifeguard: a member in poor health sits out rounds (its turns are lost for
            # those rounds; its probes also wait longer, see Prober).
            delay = schedule.next_round_in(
                self._clock.seconds(), interval, rounds=self._awareness.score + 1
            )
        else:
            # A last look at a suspect goes first, in place of the round robin's turn.
            target = self._suspicions.next_look() or self._roster.next_in_turn()
            if target is not None:
                self._prober.probe(target)
            # Lifeguard: a member in poor health probes less often and waits longer.
            delay = self._awareness.scale(interval)
        self._probe_call = self._clock.callLater(delay, self._probe_tick)

    def _round(self) -> None:
        """Our turn in this round: the last look at a suspect due one, at once (a probe
        of its own, so that it takes nobody's turn), and our target of the schedule at
        the target's own phase of the round, so that every member is probed at the same
        moment of every round, and the probes of a round spread over it."""
        suspect = self._suspicions.next_look()
        if suspect is not None:
            self._prober.probe(suspect)
        interval = self.profile.probe_interval
        if self._turn_call is not None and self._turn_call.active():
            # Our turn of the last round never came (the reactor was held up that long):
            # this round's is due now.
            self._turn_call.cancel()
        self._turn_call = None
        now = self._clock.seconds()
        number = schedule.round_at(now, interval)
        target = self._roster.scheduled(number)
        if target is not None:
            # From the round's start, not from now: a tick that fired late must not
            # push the turn past the round.
            at = (number + schedule.phase(target.name)) * interval
            self._turn_call = self._clock.callLater(
                max(0.0, at - now), self._take_turn, target.name
            )

    def _take_turn(self, name: str) -> None:
        self._turn_call = None
        # As we see it now: it may have died meanwhile, or been suspected (then the
        # probe carries the suspicion: the buddy system).
        target = self._roster.get(name)
        if target is not None and target.reachable:
            self._prober.probe(target)

    def _probe_unanswered(self, target: MemberState) -> None:
        self._suspect(Suspect(target.name, target.incarnation, self.name))

    def _reap(self) -> None:
        horizon = self._clock.seconds() - self.profile.reap_after
        for name in self._roster.departed_before(horizon):
            state = self._roster.forget(name)
            self._trust.forget(name)
            if state is not None and self.on_reap is not None:
                try:
                    self.on_reap(state)
                except Exception:
                    self.log.failure("Reap handler failed on {member}", member=name)
