"""The probe schedule every member follows: whom to probe in which protocol period.

SWIM with a randomized round robin (memberlist's, and hepto's before) lets each member
pick its own target: in one period a member may be probed by several others or by none,
so the wait from a member's death to its first probe has an exponential tail.  Here the
members agree instead, without talking, on one permutation per period:

* the *round* is the period number on the shared clock, ``round(now / interval)``: the
  hosts run NTP, so every member computes the same number, and each probes at the start
  of the round (:func:`round_at`, :func:`next_round_in`); clock skew only shifts when a
  member probes, never which round it believes it is in;
* the *view* is the names of the members alive or suspected, ourselves included, in
  name order: a ring;
* in round ``r`` the member of rank ``i`` on a ring of ``n`` probes the member of rank
  ``(i + offset(r, n)) mod n``, where ``offset = 1 + floor(f(r) * (n - 1))`` and
  ``f(r)`` is a hash of the round in [0, 1): a rotation of the ring, never by 0.  In a
  view all members share, every member probes exactly one other and is probed by exactly
  one other, every round, and the prober changes from round to round.

Views disagree while news spreads (a member not yet heard of, one just declared dead):
the offset is a *fraction* of the ring, so a view of one member more or less rotates by
the same offset or one more, and a member whose arc from itself to its target crosses a
disputed member lands one place off.  A member is then probed by none, one or two of
the rotated probers around it, at most one more per disputed member, never by many,
and the next round draws a new offset, so the member missed in one round is probed by
someone else in the next, as likely as in an agreed view.  ``docs/gossip.rst`` gives
the rationale and the simulated figures.

Pure functions of numbers and names: :class:`~hepto.gossip.table.Roster` keeps the
sorted view and :class:`~hepto.gossip.swim.Membership` the time.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence


def round_at(now: float, interval: float) -> int:
    """The round whose start is nearest to ``now``: a tick that fires a little late (or a
    little early, from float arithmetic) still belongs to the round it was meant for."""
    return math.floor(now / interval + 0.5)


def next_round_in(now: float, interval: float, rounds: int = 1) -> float:
    """Seconds from ``now`` until the start of the ``rounds``-th round after the one at
    ``now`` (with ``rounds=0``, the start of the next round not yet begun)."""
    if rounds == 0:
        return max(0.0, math.ceil(now / interval) * interval - now)
    return max(0.0, (round_at(now, interval) + rounds) * interval - now)


def fraction(round_number: int) -> float:
    """A number in [0, 1) that looks random and that every member computes alike (the
    hash keys nothing secret; its personalization keeps it apart from other uses)."""
    digest = hashlib.blake2b(
        round_number.to_bytes(16, "big", signed=True), digest_size=8, person=b"hepto-probe"
    ).digest()
    return int.from_bytes(digest, "big") / 2**64


def phase(name: str) -> float:
    """When in each round ``name`` is probed, as a fraction of the round: the same in
    every round and for every prober, so that each member is probed exactly once per
    probe interval, and different members at different moments of the round."""
    digest = hashlib.blake2b(name.encode(), digest_size=8, person=b"hepto-phase").digest()
    return int.from_bytes(digest, "big") / 2**64


def offset(round_number: int, size: int) -> int:
    """How far round ``round_number`` rotates a ring of ``size`` (≥ 2): 1 to size - 1."""
    return 1 + math.floor(fraction(round_number) * (size - 1))


def target_rank(rank: int, present: bool, size: int, round_number: int) -> int | None:
    """The rank of the member that the member of rank ``rank`` probes in a round, on a
    ring of ``size`` names; None if there is nobody to probe.

    ``present`` is whether the prober is on the ring itself (it is not while it leaves):
    then ``rank`` is where it would be, and it takes the turn of that virtual place.
    """
    if present:
        if size < 2:
            return None
        return (rank + offset(round_number, size)) % size
    if size < 1:
        return None
    virtual = (rank + offset(round_number, size + 1)) % (size + 1)
    return virtual - 1 if virtual > rank else virtual


def target(view: Sequence[str], own: str, round_number: int) -> str | None:
    """Whom ``own`` probes in round ``round_number``, given ``view``, the sorted names of
    the members alive or suspected (``own`` among them, unless it is leaving)."""
    rank = bisect.bisect_left(view, own)
    present = rank < len(view) and view[rank] == own
    chosen = target_rank(rank, present, len(view), round_number)
    return None if chosen is None else view[chosen]
