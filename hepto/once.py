"""Once: a result that comes once, for any number of waiters, before or after it comes.

A Deferred has one chain of callbacks, so a result that several parties wait for (a
host prepared, images imported) is kept here, and each party gets a Deferred of its own.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from hepto.waiters import Waiters

T = TypeVar("T")


class Once(Generic[T]):
    def __init__(self) -> None:
        self._waiters: Waiters[T] = Waiters()
        self._outcome: tuple[T] | Failure | None = None

    @property
    def done(self) -> bool:
        return self._outcome is not None

    def when(self) -> Deferred[T]:
        """Fires with the result (or fails with its failure), now if it has come."""
        outcome = self._outcome
        if isinstance(outcome, Failure):
            return fail(outcome)
        if outcome is not None:
            return succeed(outcome[0])
        return self._waiters.wait()

    def fire(self, result: T) -> None:
        self._settle((result,))
        self._waiters.fire(result)

    def fail(self, failure: Failure) -> None:
        self._settle(failure)
        self._waiters.fail(failure)

    def _settle(self, outcome: tuple[T] | Failure) -> None:
        if self._outcome is not None:
            raise RuntimeError("Once already settled")
        self._outcome = outcome
