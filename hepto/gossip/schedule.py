"""The probe schedule every member follows: whom to probe in which protocol period.

SWIM with a randomized round robin (memberlist's, and hepto's before) lets each member
pick its own target: in one period a member may be probed by several others or by none,
so the wait from a member's death to its first probe has an exponential tail.  Here the
members agree instead, without talking, on one permutation per period:

* the *round* is the period number on the shared clock, ``round(now / interval)``: the
  hosts run NTP, so every member computes the same number (:func:`round_at`,
  :func:`next_round_in`); clock skew only shifts when a member probes, never which round
  it believes it is in;
* the *ring* is the names of every member known, in name order, the dead and departed
  included until they are forgotten (an hour on LAN): deaths, refutations and
  suspicions, the news that views disagree on most often, then move nobody's place;
* in round ``r`` the member of rank ``i`` on a ring of ``n`` names looks at rank
  ``i + s``, where ``s`` (:func:`offset`) is a hash of the round scaled to the ring: a
  rotation of the ring, made one single cycle (:func:`successor`).  If the member
  there is alive or suspected, that is its target; if not, the member takes the dead
  one's turn too and looks one step further, and so on (:func:`target`).  On the
  members alive, that is again a single cycle: in a view all members share, every
  member probes exactly one other and is probed by exactly one other, every round, and
  the prober changes from round to round;
* each target is probed at its own moment of the round (:func:`phase`), the same in
  every round: every member is probed once per probe interval, whoever probes it, and
  the probes of a round spread over the round.

Views that disagree on a member's life (one declared dead by some, not yet by others)
change one member's probe: the dead one's prober, which probes it (it does not know) or
takes its turn (it does).  Views that disagree on the ring itself (a member just joined,
not yet heard of by everyone, or one just forgotten) shift ranks: the offset is a
fraction of the ring, so a ring of one member more or less rotates by about the same
offset, and a member whose arc from itself to its target crosses the disputed name
lands one place off.  A member is then probed by none, one or two, at most one more per
disputed name, and the next round draws a new offset: missed in one round, it is
probed in the next as likely as ever.  ``docs/gossip.rst`` gives the rationale and the
simulated figures.

Pure functions of numbers and names: :class:`~hepto.gossip.table.Roster` keeps the ring
and :class:`~hepto.gossip.swim.Membership` the time.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Callable
from typing import Protocol


class Ring(Protocol):
    """The sorted names of every member known: a list, or a
    :class:`~hepto.gossip.table.SortedNames`."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> str: ...


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


def _fraction(data: bytes, person: bytes) -> float:
    """A number in [0, 1) that looks random and that every member computes alike (the
    hash keys nothing secret; ``person`` keeps its uses apart)."""
    digest = hashlib.blake2b(data, digest_size=8, person=person).digest()
    return int.from_bytes(digest, "big") / 2**64


def phase(name: str) -> float:
    """When in each round ``name`` is probed, as a fraction of the round: the same in
    every round and for every prober, so that each member is probed exactly once per
    probe interval, and different members at different moments of the round."""
    return _fraction(name.encode(), b"hepto-phase")


def offset(round_number: int, size: int) -> int:
    """How far round ``round_number`` rotates a ring of ``size`` (≥ 2): 1 to size - 1, a
    fraction of the ring drawn for the round, so that rings of about the same size
    rotate by about as much."""
    drawn = _fraction(round_number.to_bytes(16, "big", signed=True), b"hepto-probe")
    return 1 + math.floor(drawn * (size - 1))


def successor(place: int, step: int, size: int) -> int:
    """The place after ``place`` in round whose offset is ``step``: ``step`` further on,
    except that where the rotation would close one of its cycles it goes on to the
    next, so that all places form one single cycle.

    A rotation by ``step`` splits a ring into ``g = gcd(step, size)`` cycles, the
    places of each residue modulo ``g``; each starts at its residue.  The last place
    of each (the one ``step`` before its start) leads to the start of the next.  A
    single cycle is what lets a member take the turn of a dead one and still leave
    nobody alive out: requiring ``step`` prime to ``size`` would do it too, but would
    leave few offsets to rings of sizes with many small factors (8 of 29 at 30
    members), and so few different probers of each member.
    """
    following = (place + step) % size
    cycles = math.gcd(step, size)
    start = place % cycles
    if following == start:
        return (start + 1) % cycles
    return following


def target(
    ring: Ring,
    own: str,
    round_number: int,
    live: Callable[[str], bool],
    rank: int | None = None,
) -> str | None:
    """Whom ``own`` probes in round ``round_number``; None if nobody.

    ``ring`` is the sorted names of every member known, ``own`` among them; ``live(name)``
    is whether ``name`` is alive or suspected (worth a probe); ``rank`` is where ``own``
    is in ``ring``, if the caller knows it faster than a binary search.  The member at our place
    plus the round's offset is our target if it lives; if it does not, we take its turn
    and look one offset further, until a live member or ourselves.
    """
    size = len(ring)
    if rank is None:
        rank = bisect.bisect_left(ring, own)
    if size < 2 or rank == size or ring[rank] != own:
        return None
    step = offset(round_number, size)
    place = rank
    for _ in range(size - 1):
        place = successor(place, step, size)
        name = ring[place]
        if live(name):
            return name
    return None
