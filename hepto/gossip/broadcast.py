"""The broadcast queue: news waiting to ride along on outgoing datagrams.

After memberlist's ``TransmitLimitedQueue``: every item is sent a limited number of
times (``retransmit_mult * ceil(log10(N + 1))``, enough for an epidemic to reach every
member with high probability), the least-sent items go first so that fresh news
overtakes old, and a newer item with the same key replaces the queued one: only the
latest word about a member, or the latest version of a record, is worth spreading.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Final

import attrs

from hepto.gossip.codec import MIN_MESSAGE_SIZE, encoded_size
from hepto.gossip.messages import Message

#: Items skipped for size before a search for something that fits gives up: keeps
#: packing linear in what is taken, not in the length of a long queue.
MAX_MISSES: Final = 8


@attrs.define(eq=False)
class _Item:
    key: Hashable
    message: Message
    size: int
    on_done: Callable[[], None] | None
    weight: int = 1
    transmits: int = 0

    def finish(self) -> None:
        if self.on_done is not None:
            on_done, self.on_done = self.on_done, None
            on_done()


@attrs.frozen
class _Recent:
    message: Message
    size: int
    until: float


class BroadcastQueue:
    """Messages keyed by what they are about; ``limit()`` says how often to send each.

    An item sent often enough stays *recent* for ``linger`` seconds of ``now()``, unless
    a newer word under its key replaces it: ``take(budget, recent=True)`` gives it again,
    for the scheduled probes, without counting (``docs/gossip.rst``, "Recent news rides the
    probes").
    """

    def __init__(
        self,
        limit: Callable[[], int],
        linger: float = 0.0,
        now: Callable[[], float] | None = None,
    ) -> None:
        if linger > 0 and now is None:
            raise ValueError("news that lingers needs a clock")
        self._limit = limit
        self._linger = linger
        self._now = now
        #: Called when an item is put into the empty queue: there is news to spread.
        self.on_filled: Callable[[], None] | None = None
        self._items: dict[Hashable, _Item] = {}
        # Items by transmit count; within a tier, insertion order is age (newest last).
        self._tiers: dict[int, dict[Hashable, _Item]] = {}
        # Items sent often enough, oldest first (they all linger as long).
        self._recent: dict[Hashable, _Recent] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Message]:
        return (item.message for item in self._items.values())

    def get(self, key: Hashable) -> Message | None:
        item = self._items.get(key)
        return None if item is None else item.message

    def put(
        self,
        key: Hashable,
        message: Message,
        on_done: Callable[[], None] | None = None,
        weight: int = 1,
    ) -> None:
        """Queue ``message``, replacing whatever was queued under ``key``, to be sent
        ``weight`` times the limit.

        ``on_done`` runs once the message will not be sent any more: sent often enough,
        replaced, or dropped.
        """
        self.discard(key)
        item = _Item(key, message, encoded_size(message), on_done, weight)
        filled = not self._items
        self._items[key] = item
        self._tiers.setdefault(0, {})[key] = item
        if filled and self.on_filled is not None:
            self.on_filled()

    def discard(self, key: Hashable) -> None:
        """Stop sending what is queued under ``key``, and forget it as recent news."""
        self._recent.pop(key, None)
        item = self._items.pop(key, None)
        if item is not None:
            tier = self._tiers[item.transmits]
            del tier[key]
            if not tier:
                del self._tiers[item.transmits]
            item.finish()

    def clear(self) -> None:
        for key in list(self._items):
            self.discard(key)
        self._recent.clear()

    def take(self, budget: int, recent: bool = False) -> list[Message]:
        """Messages that fit in ``budget`` bytes, least-sent and then newest first; each
        taken message counts one transmission.  With ``recent``, the room left goes to
        recent news, newest first, uncounted."""
        taken, budget = self._choose(budget)
        extra = self._recent_news(budget) if recent else []
        # Promote only after the walk, or an item could be taken twice from the next tier;
        # and after the recent news, or an item this take retires would come twice.
        limit = self._limit()
        for item in taken:
            self._count(item, limit)
        return [item.message for item in taken] + extra

    def _choose(self, budget: int) -> tuple[list[_Item], int]:
        """The queued items ``take`` sends, and the budget they leave."""
        taken: list[_Item] = []
        if not self._items or budget < MIN_MESSAGE_SIZE:
            return taken, budget
        misses = 0
        for transmits in sorted(self._tiers):
            tier = self._tiers[transmits]
            chosen = []
            for item in reversed(tier.values()):
                if item.size <= budget:
                    chosen.append(item)
                    budget -= item.size
                    if budget < MIN_MESSAGE_SIZE:
                        break
                else:
                    misses += 1
                    if misses >= MAX_MISSES:
                        break
            for item in chosen:
                del tier[item.key]
            if not tier:
                del self._tiers[transmits]
            taken.extend(chosen)
            if budget < MIN_MESSAGE_SIZE or misses >= MAX_MISSES:
                break
        return taken, budget

    def _recent_news(self, budget: int) -> list[Message]:
        if not self._recent:
            return []
        assert self._now is not None
        now = self._now()
        while self._recent:
            oldest = next(iter(self._recent))
            if self._recent[oldest].until > now:
                break
            del self._recent[oldest]
        taken = []
        for recent in reversed(self._recent.values()):
            if budget < MIN_MESSAGE_SIZE:
                break
            if recent.size <= budget:
                taken.append(recent.message)
                budget -= recent.size
        return taken

    def heard(self, key: Hashable, message: Message) -> None:
        """Another member sent us ``message``, which we hold queued under ``key``: count
        that copy as one of our own transmissions.

        Demers et al.'s *counter* rumor mongering: once an item has spread, the copies a
        member hears say so, and it stops sending sooner; where it has not, few copies
        arrive and the member sends its full share.  Every copy counted is one copy fewer
        that someone else receives, which an item sent just the limit cannot spare: not
        even where lingering news (``linger``) reaches the members no copy did, as join
        storms showed (``docs/gossip.rst``, "Copies heard count as sent, for arrivals?").
        """
        item = self._items.get(key)
        if item is None or item.message != message:
            return
        tier = self._tiers[item.transmits]
        del tier[key]
        if not tier:
            del self._tiers[item.transmits]
        self._count(item, self._limit())

    def _count(self, item: _Item, limit: int) -> None:
        """One more transmission of ``item``, which is in no tier: into the next tier,
        or out of the queue once sent often enough."""
        item.transmits += 1
        if item.transmits >= limit * item.weight:
            del self._items[item.key]
            if self._linger > 0:
                assert self._now is not None
                self._recent[item.key] = _Recent(
                    item.message, item.size, self._now() + self._linger
                )
            item.finish()
        else:
            self._tiers.setdefault(item.transmits, {})[item.key] = item
