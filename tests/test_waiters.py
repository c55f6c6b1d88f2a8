"""Waiting for the next time something happens (Waiters), and for a result that stays (Once)."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from hepto.once import Once
from hepto.waiters import Waiters


class WaitersTests(SynchronousTestCase):
    def test_every_waiter_fires_in_order_then_is_forgotten(self) -> None:
        waiters: Waiters[int] = Waiters()
        order: list[tuple[str, int]] = []
        waiters.wait().addCallback(lambda n: order.append(("a", n)))
        waiters.wait().addCallback(lambda n: order.append(("b", n)))
        waiters.fire(1)
        waiters.fire(2)
        self.assertEqual(order, [("a", 1), ("b", 1)])

    def test_a_waiter_asked_for_while_firing_waits_for_the_next_time(self) -> None:
        waiters: Waiters[int] = Waiters()
        seen: list[int] = []
        waiters.wait().addCallback(lambda _: waiters.wait().addCallback(seen.append))
        waiters.fire(1)
        self.assertEqual(seen, [])
        waiters.fire(2)
        self.assertEqual(seen, [2])

    def test_a_cancelled_waiter_is_forgotten(self) -> None:
        waiters: Waiters[int] = Waiters()
        cancelled = waiters.wait()
        kept = waiters.wait()
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        waiters.fire(3)  # would raise AlreadyCalledError, were the cancelled one still there
        self.assertEqual(self.successResultOf(kept), 3)

    def test_a_failure_reaches_every_waiter(self) -> None:
        waiters: Waiters[int] = Waiters()
        first, second = waiters.wait(), waiters.wait()
        waiters.fail(Failure(ValueError("no")))
        self.failureResultOf(first, ValueError)
        self.failureResultOf(second, ValueError)


class OnceTests(SynchronousTestCase):
    def test_waiters_before_and_after_get_the_result(self) -> None:
        once: Once[str] = Once()
        before = once.when()
        self.assertNoResult(before)
        once.fire("done")
        self.assertTrue(once.done)
        self.assertEqual(self.successResultOf(before), "done")
        self.assertEqual(self.successResultOf(once.when()), "done")

    def test_a_failure_stays(self) -> None:
        once: Once[str] = Once()
        before = once.when()
        once.fail(Failure(ValueError("no")))
        self.failureResultOf(before, ValueError)
        self.failureResultOf(once.when(), ValueError)

    def test_it_settles_once(self) -> None:
        once: Once[str] = Once()
        once.fire("first")
        self.assertRaises(RuntimeError, once.fire, "second")
        self.assertRaises(RuntimeError, once.fail, Failure(ValueError("late")))

    def test_a_cancelled_waiter_is_forgotten(self) -> None:
        once: Once[str] = Once()
        cancelled = once.when()
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        once.fire("done")  # without AlreadyCalledError
