"""When the mesh's reconcile passes run: never two at once, and one for a burst of wishes.

Every state change that concerns the mesh wishes for a pass, and one gossip message
often carries several changes: a pass per wish once took most of every agent's CPU
(``docs/mesh.rst``, "Reconciling").  A :class:`PassScheduler` runs the pass on the next
reactor turn, to which later wishes add nothing; a wish while a pass runs times another
once it ends.  What a pass does, and whether a wish is taken at all (only a running mesh
takes them), is :class:`~hepto.mesh.service.MeshService`'s.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from hepto.machine import Transitions


class Passes(enum.Enum):
    """Where the reconcile passes are: they never overlap, and a burst makes one."""

    IDLE = "idle"
    #: One is timed for the next reactor turn, to which later wishes add nothing.
    TIMED = "timed"
    RUNNING = "running"
    #: One runs, and another was wanted since: it is timed once this one ends.
    AGAIN = "running, then again"


class PassInput(enum.Enum):
    WANTED = "wanted"
    TURN = "turn"
    DONE = "done"
    STOP = "stop"


@attrs.define(eq=False)
class PassScheduler:
    """Runs ``run`` (a pass; its Deferred fires when it ended) as :data:`PASSES` says."""

    reactor: IReactorTime
    run: Callable[[], Deferred[None]]
    state: Passes = Passes.IDLE
    _turn: IDelayedCall | None = None

    def want(self) -> None:
        """A pass is wanted: on the next reactor turn, or once the one running ended."""
        self._input(PassInput.WANTED)

    def stop(self) -> None:
        """Drop the pass timed or wanted next; the one running ends by itself."""
        self._input(PassInput.STOP)

    def _input(self, input: PassInput) -> None:
        # The state first: an input that comes during the output meets the new one.
        self.state, output = PASSES.step(self.state, input)
        output(self)

    def _time(self) -> None:
        self._turn = self.reactor.callLater(0, self._input, PassInput.TURN)

    def _cancel(self) -> None:
        turn, self._turn = self._turn, None
        if turn is not None and turn.active():
            turn.cancel()

    def _run(self) -> None:
        self._turn = None
        self.run().addBoth(lambda _: self._input(PassInput.DONE))

    def _nothing(self) -> None:
        pass


# fmt: off
#: The reconcile passes of a running mesh.  A stop drops a pass timed or wanted next,
#: but not the one running: it ends by itself (an answer of the device), and asks for no
#: other.
PASSES: Final[Transitions[Passes, PassInput, Callable[..., None]]] = Transitions.of(
    "mesh passes",
    [
        # passes         input             next passes      output
        (Passes.IDLE,    PassInput.WANTED, Passes.TIMED,    PassScheduler._time),
        (Passes.TIMED,   PassInput.WANTED, Passes.TIMED,    PassScheduler._nothing),
        (Passes.TIMED,   PassInput.TURN,   Passes.RUNNING,  PassScheduler._run),
        (Passes.RUNNING, PassInput.WANTED, Passes.AGAIN,    PassScheduler._nothing),
        (Passes.RUNNING, PassInput.DONE,   Passes.IDLE,     PassScheduler._nothing),
        (Passes.AGAIN,   PassInput.WANTED, Passes.AGAIN,    PassScheduler._nothing),
        (Passes.AGAIN,   PassInput.DONE,   Passes.TIMED,    PassScheduler._time),
        (Passes.IDLE,    PassInput.STOP,   Passes.IDLE,     PassScheduler._nothing),
        (Passes.TIMED,   PassInput.STOP,   Passes.IDLE,     PassScheduler._cancel),
        (Passes.RUNNING, PassInput.STOP,   Passes.RUNNING,  PassScheduler._nothing),
        (Passes.AGAIN,   PassInput.STOP,   Passes.RUNNING,  PassScheduler._nothing),
    ],
)
# fmt: on
