"""Lifeguard's local health awareness: a member that misses acks suspects itself first.

A slow or overloaded member sees its own probes fail and would accuse healthy peers.
Lifeguard (Dadgar et al., 2018) counts the evidence of our own trouble in a score and
stretches our probe intervals and timeouts by ``score + 1`` while it lasts, so that a
sick member gives its peers more time instead of spreading false suspicion.
"""

from __future__ import annotations

import attrs


@attrs.define
class Awareness:
    """A health score between 0 (healthy) and ``limit - 1``."""

    limit: int = attrs.field(validator=attrs.validators.ge(1))
    score: int = 0

    def apply(self, delta: int) -> None:
        """Raise the score for evidence of our own trouble, lower it for each success."""
        self.score = min(max(self.score + delta, 0), self.limit - 1)

    def scale(self, timeout: float) -> float:
        return timeout * (self.score + 1)
