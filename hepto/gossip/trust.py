"""Which news about a member to believe: sane incarnations, and Alives of the member's own.

:class:`~hepto.gossip.swim.Membership` decides what news means for its view; this module
decides whether the news deserves belief at all.  ``docs/gossip.rst`` ("Incarnation
sanity", "Alive messages carry their member's proof") explains each rule.

Incarnation sanity (an absurd number must not evict a member for ever):

* an incarnation above :data:`INCARNATION_CEILING` (2**48) is never legitimate — a
  member refuting once a second would need nine million years — and is dropped;
* news about a known member whose incarnation jumps more than :data:`INCARNATION_SLACK`
  above the one we hold is dropped, unless it is an Alive that the member sent us itself
  (a member that lost its persisted incarnation catches up that way);
* a member always refutes with max(own, accused) + 1, which the rules above keep far
  from any overflow.

Proofs (every host holds the cluster key, so a datagram's envelope does not say which
member spoke): an Alive carries its member's signature (:mod:`hepto.gossip.proofs`),
checked against the identity pinned to the name.  A forged one is dropped; a proven one
is the member's own word, so it may move the member to a new address.  Before any
identity is pinned to a name (its record never seen) an Alive is taken on trust, as
memberlist takes them all, and checked as soon as one is.
"""

from __future__ import annotations

from typing import Final

import attrs

from hepto.config import Endpoint
from hepto.gossip.droplog import Drop
from hepto.gossip.messages import Alive
from hepto.gossip.proofs import PROOF_SIZE, Notary, Verdict
from hepto.gossip.table import MemberState
from hepto.state import ALIVE

INCARNATION_CEILING: Final = 2**48
INCARNATION_SLACK: Final = 1024


@attrs.define(eq=False)
class Trust:
    """One member's checks of the news it hears, and the Alives it took on trust.

    What fails a check is dropped (and counted) here; the caller only learns whether
    to go on.
    """

    notary: Notary
    drop: Drop
    #: Members whose state came from an Alive that no pinned identity could check.
    _unproven: set[str] = attrs.field(factory=set)

    def plausible(self, name: str, incarnation: int, known: int, direct: bool) -> bool:
        """Whether news of ``name`` at ``incarnation`` is sane, ``known`` being the
        incarnation we hold; ``direct`` if it is the member's own word."""
        if incarnation > INCARNATION_CEILING:
            self.drop("absurd incarnation", member=name, incarnation=incarnation)
            return False
        if incarnation > known + INCARNATION_SLACK and not direct:
            self.drop("incarnation jump", member=name, incarnation=incarnation, known=known)
            return False
        return True

    def verdict(self, message: Alive) -> Verdict:
        """Whose word ``message`` is; a forged one is dropped (and counted) here."""
        if len(message.proof) != PROOF_SIZE:
            verdict = Verdict.FORGED
        else:
            verdict = self.notary.check(
                message.name, message.incarnation, message.address, message.role, message.proof
            )
        if verdict is Verdict.FORGED:
            self.drop(
                "forged alive",
                member=message.name,
                incarnation=message.incarnation,
                address=message.address,
            )
        return verdict

    def same_address(
        self, message: Alive, known: MemberState, verdict: Verdict = Verdict.UNKNOWN
    ) -> bool:
        """As memberlist: a live member keeps its address; another process claiming its
        name elsewhere must wait until it is dead or left.  Unless the member itself
        says it moved (a proven Alive): a restart at a new address must not wait for
        the old one's death."""
        if message.address == known.address or not known.reachable:
            return True
        if verdict is Verdict.PROVEN:
            return True
        self.drop(
            "address conflict",
            member=message.name,
            known=known.address,
            claimed=message.address,
        )
        return False

    def believe_alive(
        self, message: Alive, known: MemberState | None, sender: Endpoint | None
    ) -> bool:
        """Whether ``message``, news of another member than ourselves, deserves belief:
        not forged, at the member's address, at a sane incarnation.  ``known`` is how we
        hold the member (None: new to us), ``sender`` where the datagram came from (None
        for merged state)."""
        verdict = self.verdict(message)
        if verdict is Verdict.FORGED:
            return False
        if known is None:
            # A member new to us may start at any sane incarnation.
            plausible = self.plausible(message.name, message.incarnation, 0, True)
        elif not self.same_address(message, known, verdict):
            return False
        else:
            # The member's own word may jump ahead (it lost its saved incarnation).
            direct = verdict is Verdict.PROVEN or sender == message.address
            plausible = self.plausible(message.name, message.incarnation, known.incarnation, direct)
        if plausible:
            self.believed(message.name, verdict)
        return plausible

    def believed(self, name: str, verdict: Verdict) -> None:
        """``name``'s state now comes from an Alive of this ``verdict``: one that nothing
        could check is checked again once an identity is pinned to the name."""
        if verdict is Verdict.UNKNOWN:
            self._unproven.add(name)
        else:
            self._unproven.discard(name)

    def forget(self, name: str) -> None:
        """``name`` is forgotten altogether (reaped)."""
        self._unproven.discard(name)

    def forged_on_trust(self, known: MemberState) -> bool:
        """An identity is now pinned to ``known``'s name: whether the Alive that we took
        on trust for its state turns out forged.  A verdict either way settles it: the
        state is not checked again."""
        name = known.name
        if name not in self._unproven:
            return False
        if known.status != ALIVE:
            # Already accused: its next Alive is news, and checked as such.
            self._unproven.discard(name)
            return False
        verdict = self.verdict(known.alive_message())
        if verdict is Verdict.UNKNOWN:
            return False
        self._unproven.discard(name)
        return verdict is Verdict.FORGED
