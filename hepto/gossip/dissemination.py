"""SWIM's dissemination: how what is queued for broadcast reaches the other members.

:class:`Gossip` spreads the :class:`~hepto.gossip.broadcast.BroadcastQueue` that
:class:`~hepto.gossip.swim.Membership` fills (membership news, record digests): as
much of it as fits rides on every datagram we send, and every gossip interval a
gossip-only datagram goes to ``gossip_nodes`` random peers.  Beyond memberlist, news
of a member's fate does not wait for the next interval: it goes out in a round of its
own as soon as it arrives, so that a death reaches a hundred members in a few network
transits rather than in four or five gossip intervals (``docs/gossip.rst``).  And the
interval's ticks stop while there is nothing to spread: a quiet member is not woken five
times a second for nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from hepto.config import Endpoint
from hepto.gossip.broadcast import BroadcastQueue
from hepto.gossip.codec import HEADER_SIZE, encoded_size
from hepto.gossip.messages import MAX_PLAINTEXT, Dead, Message
from hepto.gossip.profile import Profile
from hepto.gossip.table import MemberState, RandomMembers
from hepto.state import DEAD

#: What one datagram may carry, its header apart.
FRAME_BUDGET: Final = MAX_PLAINTEXT - HEADER_SIZE


class Gossip:
    """Piggybacking and gossip rounds, for one member's broadcast queue."""

    def __init__(
        self,
        name: str,
        clock: IReactorTime,
        profile: Profile,
        queue: BroadcastQueue,
        *,
        send: Callable[[Endpoint, Sequence[Message]], None],
        random_members: RandomMembers,
        departed: Mapping[str, float],
        alone: Callable[[], bool],
    ) -> None:
        """``send`` sends one datagram as it is; ``departed`` is when each member we
        still remember dead or left departed (the recently dead hear of it); ``alone``
        whether no other member is alive or suspected."""
        self.name = name
        self._clock = clock
        self._profile = profile
        self._queue = queue
        self._send = send
        self._random_members = random_members
        self._departed = departed
        self._alone = alone
        self._running = False
        self._tick_call: IDelayedCall | None = None
        self._news_call: IDelayedCall | None = None
        self._last_round = -math.inf
        #: When the last tick of the interval's grid was due (or the first will be).
        self._grid = -math.inf

    @property
    def next_tick(self) -> float | None:
        """When the next gossip interval ends (None: not gossiping, or nothing to say)."""
        return None if self._tick_call is None else self._tick_call.getTime()

    def start(self, phase: float) -> None:
        """Gossip every interval, the first in ``phase`` seconds."""
        self._running = True
        self._grid = self._clock.seconds() + phase
        self._tick_call = self._clock.callLater(phase, self._tick)

    def wake(self) -> None:
        """There is something to spread: tick again, at the next tick of the grid.

        Ticks stop while nothing is queued and nobody departed recently, or while
        nobody else is alive; the queue filling up, or any change of a member (one
        arriving may be someone to tell, one departing is), calls this.  Ticks stay on the grid that
        ``start`` set, so a member's rounds come at the same phase as if it had never
        stopped."""
        if self._running and self._tick_call is None:
            self._arm()

    def stop(self) -> None:
        self._running = False
        for call in (self._tick_call, self._news_call):
            if call is not None and call.active():
                call.cancel()
        self._tick_call = self._news_call = None

    def send(self, to: Endpoint, messages: list[Message], recent: bool = False) -> None:
        """One datagram: ``messages`` first, then as much news as fits; with ``recent``
        (our probes), then as much recent news as still fits: news every member has sent
        often enough, which its target may have missed."""
        budget = FRAME_BUDGET - sum(encoded_size(message) for message in messages)
        messages.extend(self._queue.take(budget, recent))
        self._send(to, messages)

    def send_probe(self, to: Endpoint, messages: list[Message]) -> None:
        """Our probe's datagram: :meth:`send` with recent news."""
        self.send(to, messages, recent=True)

    def news(self) -> None:
        """A round of gossip soon, for news of a member's fate: at once, unless the last
        round was less than ``news_round_spacing`` ago (then when that has passed), and
        not at all if the next tick comes first.  Called while a datagram is being
        handled, the round waits for the end of it, so one round carries all its news."""
        if not (self._running and self._profile.news_rounds):
            return
        if self._news_call is not None and self._news_call.active():
            return
        now = self._clock.seconds()
        when = max(now, self._last_round + self._profile.news_round_spacing)
        if self._tick_call is not None and self._tick_call.getTime() <= when:
            return
        self._news_call = self._clock.callLater(when - now, self._news_round)

    def _arm(self) -> None:
        """The next tick at the first point of the grid after the last one due; a tick
        that came late (the reactor held up) does not shift the grid."""
        now = self._clock.seconds()
        interval = self._profile.gossip_interval
        # Half an interval of slack: a tick may run a hair before its time, as floats go.
        if now > self._grid - interval / 2:
            self._grid += interval * (math.floor((now - self._grid) / interval) + 1)
        self._tick_call = self._clock.callLater(self._grid - now, self._tick)

    def _tick(self) -> None:
        self._tick_call = None
        if self._round():
            self._arm()

    def _news_round(self) -> None:
        self._news_call = None
        self._round()

    def _round(self) -> bool:
        """Gossip to a few members, if there is anything to say and anyone to say it to;
        whether there was (a member alone keeps its news until someone arrives)."""
        self._last_round = self._clock.seconds()
        horizon = self._clock.seconds() - self._profile.gossip_to_the_dead
        recently_dead = any(since > horizon for since in self._departed.values())
        if not recently_dead and (not len(self._queue) or self._alone()):
            return False
        for target in self._random_members(
            self._profile.gossip_nodes,
            lambda state: state.reachable or (state.status == DEAD and state.since > horizon),
        ):
            messages = self._queue.take(FRAME_BUDGET - self._dead_notice_size(target))
            if not target.reachable:
                # The recently dead hear that they are dead, even when there is no other
                # news: one that was merely cut off refutes and rejoins (memberlist only
                # sends them the news it happens to have, which has often run out).
                messages.insert(0, Dead(target.name, target.incarnation, self.name))
            if messages:
                self._send(target.address, messages)
        return True

    def _dead_notice_size(self, target: MemberState) -> int:
        if target.reachable:
            return 0
        return encoded_size(Dead(target.name, target.incarnation, self.name))
