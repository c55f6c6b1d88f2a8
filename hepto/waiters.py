"""Those waiting for the next time something happens, each with a Deferred of its own.

A Deferred has one chain of callbacks, so an event that several parties wait for (a
program ready, a program stopped, a file appeared, a certificate installed) keeps a
:class:`Waiters`, and each party gets a Deferred of its own that it may cancel.  For a
result that comes once and stays, see :class:`hepto.once.Once`.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


class Waiters(Generic[T]):
    def __init__(self) -> None:
        self._waiting: list[Deferred[T]] = []

    def wait(self) -> Deferred[T]:
        """Fires at the next :meth:`fire` (or fails at the next :meth:`fail`).

        Cancelling it stops waiting: it is forgotten, and fails with CancelledError.
        """
        waiter: Deferred[T] = Deferred(canceller=self._forget)
        self._waiting.append(waiter)
        return waiter

    def fire(self, result: T) -> None:
        """Fire every Deferred waiting now, in the order they were asked for."""
        # Taken first: a callback may wait again, for the next time.
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(result)

    def fail(self, failure: Failure) -> None:
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.errback(failure)

    def _forget(self, waiter: Deferred[T]) -> None:
        if waiter in self._waiting:
            self._waiting.remove(waiter)
