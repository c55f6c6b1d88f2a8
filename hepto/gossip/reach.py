"""Which members reach this node unprompted: knocked for once, and again now and then.

The mesh reads :attr:`Reach.unprompted` to decide which WireGuard tunnels need
persistent keepalives from this side (``docs/mesh.rst``, "Keepalives"): a member that
reaches us unprompted can open the tunnel itself whenever it has something to send, so
keeping the path open from here buys nothing.  Everyone else keeps them: a member we
never heard knock, whose knocks stopped arriving, or whose address changed.

* A member is asked to knock (:mod:`hepto.gossip.knocks`) when it is first seen alive
  and whenever its gossip address changes;
* a knock makes it *unprompted*, and it is asked again every :data:`RECHECK` seconds
  (with a tenth of jitter, so that members who joined together do not ask together);
* an unanswered request is asked again after 15 s, doubling up to the recheck
  interval; :data:`UNANSWERED_LIMIT` of them in a row (one may be a lost datagram) make
  the member prompted again;
* a member declared dead or gone is forgotten, and asked anew if it comes back.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from hepto.backoff import Backoff, BackoffPolicy
from hepto.config import Endpoint
from hepto.gossip.table import MemberState
from hepto.observers import Observers

#: Seconds between two knocks of a member that answered: a firewall put in front of
#: one of the two hosts later is noticed within this, plus the unanswered retries.
RECHECK: Final = 3 * 3600.0
#: Unanswered requests in a row after which a member no longer counts as unprompted.
UNANSWERED_LIMIT: Final = 2
#: Seconds before asking again after an unanswered request, doubling up to RECHECK.
RETRY: Final = BackoffPolicy(initial=15.0, maximum=RECHECK)

Ask = Callable[[str, Endpoint], Deferred[bool]]


@attrs.define(eq=False)
class _Watch:
    """One member: where we asked it, and what is pending."""

    address: Endpoint
    retries: Backoff = attrs.field(factory=lambda: Backoff(RETRY))
    asking: Deferred[bool] | None = None
    next_ask: IDelayedCall | None = None

    def cancel(self) -> None:
        if self.next_ask is not None and self.next_ask.active():
            self.next_ask.cancel()
        self.next_ask = None
        asking, self.asking = self.asking, None
        if asking is not None:
            asking.cancel()


@attrs.define(eq=False)
class Reach:
    """The members proven to reach this node unprompted; follows Membership's changes."""

    own_name: str
    clock: IReactorTime
    ask: Ask
    rng: random.Random = attrs.field(factory=random.SystemRandom)
    log: Logger = attrs.field(factory=lambda: Logger(namespace="hepto.gossip.reach"))
    _watched: dict[str, _Watch] = attrs.field(factory=dict, init=False)
    _unprompted: frozenset[str] = attrs.field(default=frozenset(), init=False)
    _observers: Observers[[frozenset[str]]] = attrs.field(
        factory=lambda: Observers("reach listener"), init=False
    )

    @property
    def unprompted(self) -> frozenset[str]:
        """Members whose latest knock arrived (and not UNANSWERED_LIMIT requests since)."""
        return self._unprompted

    def subscribe(self, listener: Callable[[frozenset[str]], None]) -> Callable[[], None]:
        """Call ``listener(unprompted)`` whenever the set changes; returns an unsubscriber."""
        return self._observers.subscribe(listener)

    def member_changed(self, old: MemberState | None, new: MemberState) -> None:
        """Membership's observer."""
        if new.name == self.own_name:
            return
        watch = self._watched.get(new.name)
        if not new.reachable:
            if watch is not None:
                del self._watched[new.name]
                watch.cancel()
                self._set(new.name, False)
            return
        if watch is not None and watch.address == new.address:
            return
        if watch is not None:
            watch.cancel()
            self._set(new.name, False)
        watch = self._watched[new.name] = _Watch(new.address)
        self._ask(new.name, watch)

    def stop(self) -> None:
        for watch in self._watched.values():
            watch.cancel()
        self._watched.clear()

    def _ask(self, name: str, watch: _Watch) -> None:
        watch.next_ask = None
        asking = watch.asking = self.ask(name, watch.address)
        asking.addCallbacks(self._answered, self._failed, (name, watch), errbackArgs=(name,))

    def _answered(self, knocked: bool, name: str, watch: _Watch) -> None:
        if self._watched.get(name) is not watch:
            return
        watch.asking = None
        if knocked:
            watch.retries.reset()
            delay = RECHECK * self.rng.uniform(0.9, 1.1)
            self._set(name, True)
        else:
            delay = watch.retries.failed()
            if watch.retries.failures >= UNANSWERED_LIMIT:
                self._set(name, False)
        watch.next_ask = self.clock.callLater(delay, self._ask, name, watch)

    def _failed(self, reason: Failure, name: str) -> None:
        if not reason.check(CancelledError):
            self.log.failure("Asking {member} to knock failed", reason, member=name)

    def _set(self, name: str, unprompted: bool) -> None:
        if (name in self._unprompted) == unprompted:
            return
        if unprompted:
            self._unprompted = self._unprompted | {name}
        else:
            self._unprompted = self._unprompted - {name}
        self.log.debug(
            "{member} {reaches} this node unprompted",
            member=name,
            reaches="reaches" if unprompted else "is not known to reach",
        )
        self._observers.notify(self._unprompted)
