"""Explicit state machines: every state, every input it accepts, and what follows, in one table.

A machine's owner keeps its state, an enum that anyone may read at any time (status pages
show it), and hands each event to :meth:`Transitions.step`, which gives the next state and
the output to run, or raises :class:`IllegalTransition`: an input that the table does not
list for the current state is a bug to see at once, never one to ignore quietly.

The owner sets its state before it runs the output, so an input that comes during the
output (a child that ends inside ``spawnProcess``, a waiter that stops what fired it)
meets the new state, and is taken at once.

Twisted's own ``automat`` (behind ``ClientService``) is not used: its machines keep their
state to themselves, so a question such as "ready?" must be an input, and an input that
answers cannot come during an output, which is where the callbacks of the Deferreds a
machine fires run (a supervisor's gate asks a process whether it is ready from there);
and it postpones any other input that comes during an output until that output is done.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

import attrs

StateT = TypeVar("StateT", bound=enum.Enum)
InputT = TypeVar("InputT", bound=enum.Enum)
OutputT = TypeVar("OutputT")


class IllegalTransition(RuntimeError):
    """An input that the machine's current state does not accept."""

    def __init__(self, machine: str, state: enum.Enum, input: enum.Enum) -> None:
        super().__init__(f"{machine}: {input.value!r} is not an input of state {state.value!r}")
        self.state = state
        self.input = input


@attrs.frozen
class Transitions(Generic[StateT, InputT, OutputT]):
    """A machine's table: from (state, input) to (next state, output)."""

    machine: str
    table: Mapping[tuple[StateT, InputT], tuple[StateT, OutputT]]

    @classmethod
    def of(
        cls, machine: str, rows: Iterable[tuple[StateT, InputT, StateT, OutputT]]
    ) -> Transitions[StateT, InputT, OutputT]:
        """The table of ``rows``: (state, input, next state, output), each pair once."""
        table: dict[tuple[StateT, InputT], tuple[StateT, OutputT]] = {}
        for state, input, after, output in rows:
            if (state, input) in table:
                raise ValueError(f"{machine}: {input!r} in {state!r} is given twice")
            table[state, input] = (after, output)
        return cls(machine, table)

    def step(self, state: StateT, input: InputT) -> tuple[StateT, OutputT]:
        """The state that ``input`` leads to from ``state``, and the output it runs."""
        try:
            return self.table[state, input]
        except KeyError:
            raise IllegalTransition(self.machine, state, input) from None
