"""Explicit state machines: a table lists every transition, and any other input raises."""

from __future__ import annotations

import enum

from twisted.trial.unittest import SynchronousTestCase

from hepto.machine import IllegalTransition, Transitions


class Door(enum.Enum):
    OPEN = "open"
    SHUT = "shut"


class Push(enum.Enum):
    OPEN = "open"
    SHUT = "shut"


DOOR = Transitions.of(
    "door",
    [
        (Door.SHUT, Push.OPEN, Door.OPEN, "creak"),
        (Door.OPEN, Push.SHUT, Door.SHUT, "slam"),
    ],
)


class TransitionsTests(SynchronousTestCase):
    def test_a_listed_input_gives_the_next_state_and_its_output(self) -> None:
        self.assertEqual(DOOR.step(Door.SHUT, Push.OPEN), (Door.OPEN, "creak"))
        self.assertEqual(DOOR.step(Door.OPEN, Push.SHUT), (Door.SHUT, "slam"))

    def test_an_input_the_state_does_not_list_raises(self) -> None:
        error = self.assertRaises(IllegalTransition, DOOR.step, Door.OPEN, Push.OPEN)
        self.assertEqual(str(error), "door: 'open' is not an input of state 'open'")
        self.assertEqual((error.state, error.input), (Door.OPEN, Push.OPEN))
        # A RuntimeError, as a misuse (starting a running service) always was.
        self.assertIsInstance(error, RuntimeError)

    def test_a_transition_given_twice_is_refused(self) -> None:
        rows = [(Door.SHUT, Push.OPEN, Door.OPEN, "creak"), (Door.SHUT, Push.OPEN, Door.SHUT, "")]
        self.assertRaises(ValueError, Transitions.of, "door", rows)
