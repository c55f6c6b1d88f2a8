"""Shared fakes for the supervisor tests (no tests here): process reactor, probe, log capture."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IProcessProtocol, IReactorTime
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer


@attrs.define(eq=False)
class FakeProcess:
    """A child that exists only in memory; the test decides when and how it ends."""

    reactor: FakeProcessReactor
    protocol: Any
    argv: tuple[str, ...]
    env: dict[str, str] | None
    pid: int | None
    #: Signals that end the child; others are recorded and ignored (as a child that traps).
    dies_on: tuple[str, ...] = ("TERM", "KILL")
    signals: list[str] = attrs.field(factory=list)
    stdin_closed: bool = False
    lost: bool = False
    reason: Failure | None = None

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, name: str) -> None:
        if self.pid is None:
            raise ProcessExitedAlready()
        self.signals.append(name)
        if name in self.dies_on:
            self.end(signal={"TERM": 15, "KILL": 9, "INT": 2}[name])

    def loseConnection(self) -> None:
        self.lost = True
        if self.pid is None:
            self.protocol.processEnded(self.reason)

    def exit(self, code: int = 0, *, ended: bool = True) -> None:
        self._finish(ProcessDone(0) if code == 0 else ProcessTerminated(exitCode=code), ended)

    def end(self, signal: int, *, ended: bool = True) -> None:
        self._finish(ProcessTerminated(signal=signal), ended)

    def _finish(self, error: Exception, ended: bool) -> None:
        assert self.pid is not None, "this child has exited already"
        self.pid = None
        self.reason = Failure(error)
        self.protocol.processExited(self.reason)
        if ended:
            self.protocol.processEnded(self.reason)

    def output(self, fd: int, data: bytes) -> None:
        self.protocol.childDataReceived(fd, data)


@attrs.define
class FakeProcessReactor:
    """Just ``spawnProcess``, like txtorcon's tests: every child is recorded."""

    processes: list[FakeProcess] = attrs.field(factory=list)
    next_pid: int = 1000
    fail_with: Exception | None = None
    dies_on: tuple[str, ...] = ("TERM", "KILL")

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: str,
        args: Any,
        env: dict[str, str] | None = None,
        path: str | None = None,
        **kwargs: Any,
    ) -> FakeProcess:
        if self.fail_with is not None:
            raise self.fail_with
        assert executable == args[0]
        self.next_pid += 1
        process = FakeProcess(
            self, processProtocol, tuple(args), env, self.next_pid, dies_on=self.dies_on
        )
        self.processes.append(process)
        processProtocol.makeConnection(process)  # type: ignore[arg-type]
        return process

    @property
    def last(self) -> FakeProcess:
        return self.processes[-1]

    def running(self) -> list[FakeProcess]:
        return [process for process in self.processes if process.pid is not None]


@attrs.define
class ScriptedProbe:
    """A probe whose answers the test gives: each check waits for the next one."""

    pending: list[Deferred[None]] = attrs.field(factory=list)
    checks: int = 0
    #: When set, answer at once (True: ready, False: not ready).
    always: bool | None = None

    def describe(self) -> str:
        return "scripted"

    def check(self) -> Deferred[None]:
        self.checks += 1
        if self.always is True:
            return succeed(None)
        if self.always is False:
            raise RuntimeError("scripted: not ready")
        answer: Deferred[None] = Deferred()
        self.pending.append(answer)
        return answer

    def answer(self, ready: bool) -> None:
        answer = self.pending.pop(0)
        if ready:
            answer.callback(None)
        else:
            answer.errback(RuntimeError("scripted: not ready"))


def _global_reactor() -> IReactorTime:
    from twisted.internet import reactor

    return reactor


@implementer(ILogObserver)
@attrs.define
class LogCapture:
    """Every log event while installed, and Deferreds for events yet to come."""

    events: list[LogEvent] = attrs.field(factory=list)
    clock: IReactorTime = attrs.field(factory=_global_reactor)
    _waiting: list[tuple[Callable[[LogEvent], bool], Deferred[LogEvent]]] = attrs.field(
        factory=list
    )

    @classmethod
    def install(cls, case: SynchronousTestCase) -> LogCapture:
        capture = cls()
        globalLogPublisher.addObserver(capture)
        case.addCleanup(globalLogPublisher.removeObserver, capture)
        return capture

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)
        for entry in list(self._waiting):
            matches, waiter = entry
            if matches(event):
                self._waiting.remove(entry)
                # Not from inside the emitter: the code that logged is not done yet.
                self.clock.callLater(0, waiter.callback, event)

    def texts(self, **fields: Any) -> list[str]:
        return [formatEvent(event) for event in self.matching(**fields)]

    def matching(self, **fields: Any) -> list[LogEvent]:
        return [
            event
            for event in self.events
            if all(event.get(key) == value for key, value in fields.items())
        ]

    def wait_for(self, **fields: Any) -> Deferred[LogEvent]:
        """The next event (from now on) carrying all these fields."""

        def matches(event: LogEvent) -> bool:
            return all(event.get(key) == value for key, value in fields.items())

        waiter: Deferred[LogEvent] = Deferred()
        self._waiting.append((matches, waiter))
        return waiter
