"""The one observer list: order, unsubscribing, and a failing observer among others."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from hepto.observers import Observers


class ObserversTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.observers: Observers[[str, int]] = Observers("Test observer")
        self.told: list[tuple[str, str, int]] = []

    def observer(self, name: str) -> object:
        def told(what: str, count: int) -> None:
            self.told.append((name, what, count))

        return self.observers.subscribe(told)

    def test_told_in_the_order_they_subscribed(self) -> None:
        self.observer("a")
        self.observer("b")
        self.observers.notify("x", 1)
        self.assertEqual(self.told, [("a", "x", 1), ("b", "x", 1)])

    def test_an_unsubscribed_observer_hears_no_more(self) -> None:
        unsubscribe = self.observers.subscribe(
            lambda what, count: self.told.append(("a", what, count))
        )
        unsubscribe()
        unsubscribe()  # twice is harmless: a service's stop may run after a failed start
        self.observers.notify("x", 1)
        self.assertEqual(self.told, [])

    def test_a_failing_observer_is_logged_and_the_others_are_told(self) -> None:
        def broken(what: str, count: int) -> None:
            raise ZeroDivisionError(what)

        self.observers.subscribe(broken)
        self.observer("b")
        self.observers.notify("x", 1)
        self.assertEqual(self.told, [("b", "x", 1)])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_subscribing_while_told_changes_only_later_events(self) -> None:
        unsubscribers: list[object] = []

        def first(what: str, count: int) -> None:
            self.told.append(("first", what, count))
            if not unsubscribers:
                unsubscribers.append(self.observer("late"))

        self.observers.subscribe(first)
        self.observers.notify("x", 1)
        self.observers.notify("y", 2)
        self.assertEqual(self.told, [("first", "x", 1), ("first", "y", 2), ("late", "y", 2)])

    def test_an_observer_may_unsubscribe_itself_while_told(self) -> None:
        unsubscribe = self.observers.subscribe(lambda what, count: unsubscribe())
        self.observer("b")
        self.observers.notify("x", 1)
        self.observers.notify("y", 2)
        self.assertEqual(self.told, [("b", "x", 1), ("b", "y", 2)])
