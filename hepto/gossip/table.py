"""The members one node knows of, and the order in which it probes them.

Kept apart from :mod:`hepto.gossip.swim` because both are plain data structures with no
protocol in them, and because the simulator shares one :class:`Snapshot` between
thousands of members: each member's :class:`MemberTable` and :class:`ProbeOrder` hold
only its own changes over that shared start.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final

import attrs

from hepto.config import Endpoint
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
