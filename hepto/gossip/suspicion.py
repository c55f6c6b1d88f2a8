"""Lifeguard's dynamic suspicion timeout, after memberlist's ``suspicion.go``.

A suspected member gets the longest timeout at first; each *independent* confirmation
(a Suspect from a member we had not heard accuse it yet) shortens what is left, down to
the shortest once ``expected`` confirmations arrived.  Many accusers make a quick death;
one confused accuser (often the one with the bad network) cannot.

hepto adds a last look: ``lead`` seconds before the deadline, ``on_last_look`` runs once
so that the member can probe the suspect itself before declaring it dead.  Confirmations
only count accusers, and on a lossy network they may all predate a refutation we missed.
A suspect that answers that probe is evidently alive: :meth:`Suspicion.postpone` gives
it a few more looks for its refutation to get through.

:class:`Suspicions` holds one member's suspicions of the others: it times each for the
cluster's size, hands the suspects due a last look to the member's next probe, and tells
the member of those whose time ran out, for it to declare them dead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from hepto.gossip.awareness import Awareness
from hepto.gossip.profile import Profile
from hepto.gossip.table import MemberState
from hepto.state import SUSPECT

#: Probe intervals before its deadline at which a member probes a suspect itself: up to
#: one to reach the next probe tick, one for the probe, and one to spare so that the
#: probe's outcome is in before the deadline.
LAST_LOOK_PROBES: Final = 3
#: How many times a suspect that answers our probes (but whose refutation keeps getting
#: lost) gets another look before it is declared dead anyway.
MAX_POSTPONEMENTS = 3


def suspicion_timeout(confirmations: int, expected: int, shortest: float, longest: float) -> float:
    """The total timeout after ``confirmations`` of ``expected``: from longest to shortest
    on a logarithmic curve, so that the first confirmations count most."""
    if expected < 1:
        return shortest
    fraction = math.log(confirmations + 1) / math.log(expected + 1)
    return max(shortest, longest - fraction * (longest - shortest))


class Suspicion:
    """The timers of one suspected member; ``on_timeout`` gets the confirmations seen."""

    def __init__(
        self,
        clock: IReactorTime,
        accuser: str,
        expected: int,
        shortest: float,
        longest: float,
        on_timeout: Callable[[int], None],
        on_last_look: Callable[[], None] | None = None,
        lead: float = 0.0,
    ) -> None:
        self._clock = clock
        # The first accuser is not a confirmation of its own accusation.
        self._accusers = {accuser}
        self._expected = expected
        self._shortest = shortest
        self._longest = longest
        self._on_timeout = on_timeout
        self._on_last_look = on_last_look
        self._lead = lead
        self._started = clock.seconds()
        self._postponements = 0
        timeout = suspicion_timeout(0, expected, shortest, longest)
        self._call: IDelayedCall = clock.callLater(timeout, self._expire)
        self._look: IDelayedCall | None = (
            None
            if on_last_look is None
            else clock.callLater(max(0.0, timeout - lead), self._last_look)
        )

    @property
    def confirmations(self) -> int:
        return len(self._accusers) - 1

    @property
    def deadline(self) -> float:
        return self._call.getTime()

    def confirm(self, accuser: str) -> bool:
        """Count a new independent accuser; False if it adds nothing (then don't re-gossip)."""
        if self.confirmations >= self._expected or accuser in self._accusers:
            return False
        self._accusers.add(accuser)
        if self._call.active():
            total = suspicion_timeout(
                self.confirmations, self._expected, self._shortest, self._longest
            )
            remaining = max(0.0, total - (self._clock.seconds() - self._started))
            self._call.reset(remaining)
            if self._look is not None and self._look.active():
                self._look.reset(max(0.0, remaining - self._lead))
        return True

    def postpone(self, delay: float) -> bool:
        """After expiry, expire again ``delay`` from now (``on_last_look`` just before);
        False once :data:`MAX_POSTPONEMENTS` were granted."""
        if self._postponements >= MAX_POSTPONEMENTS or self._call.active():
            return False
        self._postponements += 1
        self._call = self._clock.callLater(delay, self._expire)
        return True

    def cancel(self) -> None:
        for call in (self._call, self._look):
            if call is not None and call.active():
                call.cancel()

    def _last_look(self) -> None:
        if self._on_last_look is not None:
            self._on_last_look()

    def _expire(self) -> None:
        if self._look is not None and self._look.active():
            self._look.cancel()
        self._on_timeout(self.confirmations)


class Suspicions:
    """One member's suspicions of the others, by name.

    ``member(name)`` is how the member sees ``name`` now: a suspicion whose suspect has
    since refuted, died or been suspected anew is over.  ``timed_out(suspect,
    confirmations)`` is told of a suspect still suspected when its time ran out, for the
    member to declare it dead.
    """

    def __init__(
        self,
        clock: IReactorTime,
        profile: Profile,
        awareness: Awareness,
        *,
        member: Callable[[str], MemberState | None],
        timed_out: Callable[[MemberState, int], None],
    ) -> None:
        self._clock = clock
        self._profile = profile
        self._awareness = awareness
        self._member = member
        self._timed_out = timed_out
        self._suspicions: dict[str, Suspicion] = {}
        #: Suspects to probe before the round robin goes on.
        self._urgent: list[str] = []
        #: Suspects that answered a probe of ours during their suspicion.
        self._answering: set[str] = set()

    def get(self, name: str) -> Suspicion | None:
        """The suspicion of ``name``, if we hold one."""
        return self._suspicions.get(name)

    def __getitem__(self, name: str) -> Suspicion:
        return self._suspicions[name]

    def start(self, name: str, accuser: str, since: float, members: int) -> None:
        """Suspect ``name``, suspected since ``since`` on ``accuser``'s word; ``members``
        is how many members could confirm the suspicion."""
        # Expect confirmations from the accusers we would hear within the timeout; too
        # small a cluster to provide them gets the shortest timeout straight away.
        expected = self._profile.suspicion_mult - 2
        if members - 2 < expected:
            expected = 0
        shortest, longest = self._profile.suspicion_timeouts(members)
        self._suspicions[name] = Suspicion(
            self._clock,
            accuser,
            expected,
            shortest,
            longest,
            lambda confirmations: self._expired(name, since, confirmations),
            lambda: self._urgent.append(name),
            self._last_look_lead(),
        )

    def answered(self, target: MemberState) -> None:
        """``target`` answered a probe of ours."""
        # A suspect that answers is alive: if its suspicion runs out all the same, only its
        # refutation went missing, and it gets another look (see _expired).
        if target.name in self._suspicions:
            self._answering.add(target.name)

    def next_look(self) -> MemberState | None:
        """The next suspect due its last look, to probe out of turn; those that refuted
        or died in the meantime need no look."""
        while self._urgent:
            state = self._member(self._urgent.pop(0))
            if state is not None and state.status == SUSPECT:
                return state
        return None

    def cancel(self, name: str) -> None:
        """The suspicion of ``name`` is over: it refuted, or it is dead or left."""
        suspicion = self._suspicions.get(name)
        if suspicion is not None:
            suspicion.cancel()
        self._forget(name)

    def stop(self) -> None:
        """Drop every suspicion, silently."""
        for suspicion in self._suspicions.values():
            suspicion.cancel()
        self._suspicions.clear()
        self._urgent.clear()
        self._answering.clear()

    def _expired(self, name: str, since: float, confirmations: int) -> None:
        """The suspicion of ``name``, suspected since ``since``, ran out."""
        known = self._member(name)
        if known is None or known.status != SUSPECT or known.since != since:
            self._forget(name)
            return
        suspicion = self._suspicions.get(name)
        if (
            name in self._answering
            and suspicion is not None
            and suspicion.postpone(self._last_look_lead())
        ):
            # It answered our probe, so it is alive; only its refutation went missing.
            self._answering.discard(name)
            self._urgent.append(name)
            return
        self._forget(name)
        self._timed_out(known, confirmations)

    def _forget(self, name: str) -> None:
        self._suspicions.pop(name, None)
        self._answering.discard(name)

    def _last_look_lead(self) -> float:
        # Our probes slow down with our health (Lifeguard): so must the last look's lead.
        return LAST_LOOK_PROBES * self._awareness.scale(self._profile.probe_interval)
