"""The members one node knows of, and the order in which it probes them.

Kept apart from :mod:`hepto.gossip.swim` because these are plain data structures with no
protocol in them, and because the simulator shares one :class:`Snapshot` between
thousands of members: each member's :class:`MemberTable` and :class:`ProbeOrder` hold
only its own changes over that shared start, and so does its :class:`SortedNames` of the
members it knows (the ring of :mod:`hepto.gossip.schedule`).  A
:class:`Roster` keeps the three, and the list of the departed, in step for one member.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final

import attrs

from hepto.config import Endpoint
from hepto.gossip import schedule
from hepto.gossip.messages import Alive
from hepto.state import ALIVE, SUSPECT


@attrs.frozen
class MemberState:
    """A member as this node sees it; ``since`` is the clock time of its last status change."""

    name: str
    address: Endpoint
    role: str
    incarnation: int
    status: str
    since: float
    #: The proof of the Alive that made this state, as it came (b"" if none did).
    proof: bytes = attrs.field(default=b"", repr=False)

    @classmethod
    def from_alive(cls, message: Alive, since: float) -> MemberState:
        """The member as ``message`` says it is, alive since ``since``."""
        return cls(
            message.name,
            message.address,
            message.role,
            message.incarnation,
            ALIVE,
            since,
            message.proof,
        )

    @property
    def reachable(self) -> bool:
        return self.status in (ALIVE, SUSPECT)

    def alive_message(self) -> Alive:
        return Alive(self.name, self.incarnation, self.address, self.role, self.proof)


#: Up to ``count`` distinct random peers that the predicate accepts.
RandomMembers = Callable[[int, Callable[[MemberState], bool]], list[MemberState]]


class Snapshot:
    """Members known at start, shared read-only by any number of :class:`Membership`.

    The simulator starts thousands of members from one converged view; each keeps only
    its own changes on top of it instead of a full copy.
    """

    def __init__(self, states: Sequence[MemberState]) -> None:
        self.by_name: Mapping[str, MemberState] = {state.name: state for state in states}
        self.by_address: Mapping[Endpoint, str] = {state.address: state.name for state in states}
        self.names: Sequence[str] = tuple(self.by_name)
        self.positions: Mapping[str, int] = {name: index for index, name in enumerate(self.names)}
        self.departed: Sequence[tuple[str, float]] = tuple(
            (state.name, state.since) for state in states if not state.reachable
        )
        self.sorted_names: Sequence[str] = tuple(sorted(self.names))


#: The start of a member that knew nobody.
EMPTY_SNAPSHOT: Final = Snapshot(())


class MemberTable:
    """Members by name and by address: a :class:`Snapshot` plus our changes over it."""

    def __init__(self, base: Snapshot) -> None:
        self._base = base
        self._changed: dict[str, MemberState | None] = {}
        self._addresses: dict[Endpoint, str] = {}
        self._size = len(base.by_name)

    def __len__(self) -> int:
        return self._size

    def get(self, name: str) -> MemberState | None:
        changed = self._changed
        if name in changed:
            return changed[name]
        return self._base.by_name.get(name)

    def at(self, address: Endpoint) -> MemberState | None:
        name = self._addresses.get(address) or self._base.by_address.get(address)
        state = None if name is None else self.get(name)
        return state if state is not None and state.address == address else None

    def set(self, state: MemberState) -> None:
        if self.get(state.name) is None:
            self._size += 1
        self._changed[state.name] = state
        self._addresses[state.address] = state.name

    def remove(self, name: str) -> None:
        if self.get(name) is not None:
            self._size -= 1
            self._changed[name] = None

    def __iter__(self) -> Iterator[MemberState]:
        for state in self._changed.values():
            if state is not None:
                yield state
        for name, state in self._base.by_name.items():
            if name not in self._changed:
                yield state


class ProbeOrder:
    """Randomized round robin over names: every round visits each name once.

    Drawing each next name uniformly from those not yet visited this round is an
    incremental Fisher-Yates shuffle: a fresh random order per round for one swap per
    draw.  A name added mid-round lands somewhere in the unvisited rest, as memberlist's
    insertion at a random offset.  The order is a shared start sequence plus the
    entries we moved, so that adding, removing and drawing are O(1) and thousands of
    simulated members share one start order.
    """

    def __init__(
        self,
        rng: random.Random,
        base: Sequence[str] = (),
        base_positions: Mapping[str, int] | None = None,
    ) -> None:
        self._rng = rng
        self._base = base
        self._base_positions = base_positions or {}
        # Names whose place differs from the start order, both ways round.
        self._slots: dict[int, str] = {}
        self._where: dict[str, int] = {}
        self._length = len(base)
        self._next = 0

    def __len__(self) -> int:
        return self._length

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._index(name) is not None

    def __iter__(self) -> Iterator[str]:
        return (self._at(index) for index in range(self._length))

    def _at(self, index: int) -> str:
        name = self._slots.get(index)
        return self._base[index] if name is None else name

    def _put(self, index: int, name: str) -> None:
        self._slots[index] = name
        self._where[name] = index

    def _index(self, name: str) -> int | None:
        index = self._where.get(name)
        if index is None:
            index = self._base_positions.get(name)
            if index is None or index >= self._length or self._at(index) != name:
                return None
        return index

    def add(self, name: str) -> None:
        if name not in self:
            self._put(self._length, name)
            self._length += 1

    def remove(self, name: str) -> None:
        index = self._index(name)
        if index is None:
            return
        if index < self._next:
            # Keep the visited prefix contiguous: its last entry takes the freed place.
            self._next -= 1
            self._put(index, self._at(self._next))
            index = self._next
        self._length -= 1
        if index != self._length:
            self._put(index, self._at(self._length))
        self._slots.pop(self._length, None)
        self._where.pop(name, None)

    def draw(self) -> str | None:
        """The next name of this round (a new round starts once all were visited)."""
        if not self._length:
            return None
        if self._next >= self._length:
            self._next = 0
        index = self._rng.randrange(self._next, self._length)
        chosen = self._at(index)
        if index != self._next:
            self._put(index, self._at(self._next))
            self._put(self._next, chosen)
        self._next += 1
        return chosen

    def sample(self) -> str | None:
        """A uniformly random name."""
        return self._at(self._rng.randrange(self._length)) if self._length else None


class SortedNames:
    """A sorted set of names with ranks: a shared sorted start, minus the names that left
    it, plus the names added, each kept sorted.

    Ten thousand simulated members share one start of ten thousand names and each keeps
    a few changes; a real member starts empty and keeps everything in ``_added``.  Rank
    and access by rank are binary searches (O(log² n)); adding and removing, an insertion
    into a sorted list.
    """

    def __init__(self, base: Sequence[str] = ()) -> None:
        self._base = base
        #: Names of the start no longer here, and names not in the start now here.
        self._removed: list[str] = []
        self._added: list[str] = []

    def __len__(self) -> int:
        return len(self._base) - len(self._removed) + len(self._added)

    def __iter__(self) -> Iterator[str]:
        return (self[index] for index in range(len(self)))

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return (_holds(self._base, name) and not _holds(self._removed, name)) or _holds(
            self._added, name
        )

    def add(self, name: str) -> None:
        if _holds(self._base, name):
            if _holds(self._removed, name):
                self._removed.remove(name)
        elif not _holds(self._added, name):
            bisect.insort(self._added, name)

    def discard(self, name: str) -> None:
        if _holds(self._base, name):
            if not _holds(self._removed, name):
                bisect.insort(self._removed, name)
        elif _holds(self._added, name):
            self._added.remove(name)

    def rank(self, name: str) -> int:
        """How many names sort before ``name`` (its index, if it is here)."""
        return (
            bisect.bisect_left(self._base, name)
            - bisect.bisect_left(self._removed, name)
            + bisect.bisect_left(self._added, name)
        )

    def __getitem__(self, index: int) -> str:
        if not 0 <= index < len(self):
            raise IndexError(index)
        base, removed, added = self._base, self._removed, self._added
        # An added name is the one if its rank is the index...
        position = _first(len(added), lambda at: self.rank(added[at]) >= index)
        if position < len(added) and self.rank(added[position]) == index:
            return added[position]
        # ...else the first name of the start still here whose rank reaches it.
        position = _first(len(base), lambda at: self.rank(base[at]) >= index)
        while _holds(removed, base[position]):
            position += 1
        return base[position]


def _holds(names: Sequence[str], name: str) -> bool:
    """Whether sorted ``names`` holds ``name``."""
    at = bisect.bisect_left(names, name)
    return at < len(names) and names[at] == name


def _first(length: int, reached: Callable[[int], bool]) -> int:
    """The first of 0..length - 1 for which monotone ``reached`` holds (length if none)."""
    low, high = 0, length
    while low < high:
        middle = (low + high) // 2
        if reached(middle):
            high = middle
        else:
            low = middle + 1
    return low


class Roster:
    """Whom one member knows, kept in step: the :class:`MemberTable`, the
    :class:`ProbeOrder` of its peers, the :class:`SortedNames` of every member known
    (ourselves included), and when each member no longer reachable departed.

    Every member but ourselves takes its turn in the probe order until it is reaped, and
    the departed are exactly the unreachable (ourselves apart).  Reads go to the table;
    every change of a member's state goes through :meth:`record`.
    """

    def __init__(self, own: str, rng: random.Random, base: Snapshot) -> None:
        self.table = MemberTable(base)
        self.order = ProbeOrder(rng, base.names, base.positions)
        #: The ring of the probe schedule: every member known, by name.
        self.ring = SortedNames(base.sorted_names)
        #: When each member we remember dead or left departed: the recently departed
        #: still hear gossip, the long departed are reaped.
        self.departed: dict[str, float] = dict(base.departed)
        self._own = own
        # We are no peer of ours, even in a snapshot taken by someone else.
        self.departed.pop(own, None)
        self.order.remove(own)

    def __len__(self) -> int:
        return len(self.table)

    def __iter__(self) -> Iterator[MemberState]:
        return iter(self.table)

    def get(self, name: str) -> MemberState | None:
        return self.table.get(name)

    def at(self, address: Endpoint) -> MemberState | None:
        return self.table.at(address)

    @property
    def live(self) -> int:
        """Members alive or suspected, ourselves included."""
        return len(self.table) - len(self.departed)

    def record(self, new: MemberState) -> MemberState | None:
        """Take ``new`` as how we see its member; returns how we saw it before."""
        old = self.table.get(new.name)
        if old is None:
            self.ring.add(new.name)
            if new.name != self._own:
                self.order.add(new.name)
        self.table.set(new)
        if new.reachable:
            self.departed.pop(new.name, None)
        elif (old is None or old.reachable) and new.name != self._own:
            self.departed[new.name] = new.since
        return old

    def departed_before(self, horizon: float) -> list[str]:
        """Who departed at ``horizon`` or before."""
        return [name for name, since in self.departed.items() if since <= horizon]

    def forget(self, name: str) -> MemberState | None:
        """Forget ``name``, a departed member, altogether; returns how we last saw it."""
        del self.departed[name]
        state = self.table.get(name)
        self.table.remove(name)
        self.order.remove(name)
        self.ring.discard(name)
        return state

    def scheduled(self, round_number: int) -> MemberState | None:
        """Whom we probe in round ``round_number`` of the schedule every member follows
        (:mod:`hepto.gossip.schedule`), if anyone."""
        chosen = schedule.target(
            self.ring, self._own, round_number, self._live, rank=self.ring.rank(self._own)
        )
        return None if chosen is None else self.table.get(chosen)

    def _live(self, name: str) -> bool:
        state = self.table.get(name)
        return state is not None and state.reachable

    def next_in_turn(self) -> MemberState | None:
        """The next reachable member of the round robin, if any (the dead keep their
        place until they are reaped, but get no turn)."""
        for _ in range(len(self.order)):
            name = self.order.draw()
            state = None if name is None else self.table.get(name)
            if state is not None and state.reachable:
                return state
        return None

    def random_members(
        self, count: int, accept: Callable[[MemberState], bool]
    ) -> list[MemberState]:
        """Up to ``count`` distinct random peers that ``accept`` takes (memberlist's
        kRandomNodes: a bounded number of random draws, not a scan)."""
        chosen: dict[str, MemberState] = {}
        for _ in range(3 * len(self.order)):
            if len(chosen) >= count:
                break
            name = self.order.sample()
            if name is None or name in chosen:
                continue
            state = self.table.get(name)
            if state is not None and accept(state):
                chosen[name] = state
        return list(chosen.values())
