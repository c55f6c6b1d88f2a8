"""Who wants to hear of something: the one observer list of hepto.

Membership tells its observers of every change of a member, the cluster state its
listeners of every change of a record, the PKI of every certificate installed and of
the masters it proves, gossip's drop counter of every drop.  Each keeps an
:class:`Observers`, and hands out the unsubscriber it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, ParamSpec

import attrs
from twisted.logger import Logger

P = ParamSpec("P")


@attrs.define(eq=False)
class Observers(Generic[P]):
    """Callables told of each event, in the order they subscribed.

    One that raises is logged, as ``what`` in ``log``, and does not stop the others: one
    service's bug must not stall another's news.  An observer may subscribe or
    unsubscribe anyone, itself included, while it is told: the event goes to those who
    were subscribed when it came.
    """

    what: str
    log: Logger = attrs.field(factory=Logger)
    _observers: list[Callable[P, None]] = attrs.field(factory=list, init=False)

    def subscribe(self, observer: Callable[P, None]) -> Callable[[], None]:
        """Tell ``observer`` of every later event; returns an unsubscriber (idempotent)."""
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    def notify(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for observer in list(self._observers):
            try:
                observer(*args, **kwargs)
            except Exception:
                self.log.failure("{what} {observer!r} failed", what=self.what, observer=observer)
