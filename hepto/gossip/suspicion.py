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
"""

from __future__ import annotations

import math
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

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
