"""One supervised program: start it when allowed, probe it, restart it, stop it.

Lifecycle of a :class:`SupervisedProcess`, in short (:data:`LIFECYCLE` is the whole table)::

    idle, stopped, blocked --start--> waiting --gate opens--> running --ends--> backoff
    backoff --its delay is over--> waiting                 (through the gate again)
    waiting --gate fails--> blocked                        (until started again)
    running --probe passes or fails--> running             (ready, or not)
    running --stop: SIGTERM--> stopping --ends--> stopped  (SIGKILL after stop_timeout)
    idle, waiting, backoff, stopped, blocked --stop--> stopped

The gate is a Deferred from whoever composes processes (dependencies ready, certificates
installed); a process knows nothing of its peers.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from hepto.backoff import Backoff, BackoffPolicy
from hepto.machine import Transitions
from hepto.supervisor.launcher import Launcher
from hepto.supervisor.lines import LineBuffer, decode_line, line_level
from hepto.supervisor.probes import AlwaysReady, Probe
from hepto.waiters import Waiters

Gate = Callable[[], Deferred[Any]]


def _strings(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(items)


def _open_gate() -> Deferred[Any]:
    return succeed(None)


@attrs.frozen
class ProcessSpec:
    """What to run and how to look after it.  Times are seconds.

    ``argv[0]`` is the program's absolute path (see :mod:`hepto.programs`) and ``env``
    the child's whole environment: nothing is inherited implicitly.
    """

    name: str
    argv: tuple[str, ...] = attrs.field(converter=_strings)
    env: Mapping[str, str] = attrs.field(factory=dict)
    dependencies: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    probe: Probe = attrs.field(factory=AlwaysReady, eq=False)
    #: Called before each start; the start waits for its Deferred (certificates, say).
    precondition: Gate | None = attrs.field(default=None, eq=False)
    probe_interval: float = 0.5
    ready_probe_interval: float = 10.0
    probe_timeout: float = 5.0
    stop_timeout: float = 15.0
    #: Sent by the kernel when the agent dies (see :mod:`hepto.supervisor.launcher`).
    death_signal: str = "KILL"
    #: After the child is reaped, how long its pipes may stay open (held by a
    #: grandchild) before the supervisor closes its ends and moves on.
    drain_timeout: float = 2.0
    restart: BackoffPolicy = attrs.field(factory=BackoffPolicy)

    def __attrs_post_init__(self) -> None:
        if not self.argv:
            raise ValueError(f"{self.name}: empty command line")


class State(enum.Enum):
    """Where a process is in its lifecycle; readiness is a matter of ``running`` alone."""

    IDLE = "idle"
    WAITING = "waiting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"
    #: The gate failed: the process will not start until the service is restarted.
    BLOCKED = "blocked"


class Input(enum.Enum):
    """What happens to a process: the inputs of its :data:`LIFECYCLE`."""

    START = "start"
    STOP = "stop"
    GATE_OPENED = "gate opened"
    GATE_FAILED = "gate failed"
    PROBE_DUE = "probe due"
    PROBE_PASSED = "probe passed"
    PROBE_FAILED = "probe failed"
    #: Reaped; its pipes may still be open, held by a grandchild.
    EXITED = "exited"
    #: Reaped and its pipes closed, or it could not be spawned at all.
    ENDED = "ended"
    KILL_DUE = "stop timeout"
    BACKOFF_OVER = "backoff over"


@attrs.frozen
class ProcessStatus:
    """A snapshot, for status pages and the manhole."""

    name: str
    state: State
    ready: bool
    pid: int | None
    restarts: int
    last_exit: str | None
    last_probe_error: str | None


def describe_exit(reason: Failure) -> str:
    """``exited with status 1``, ``was killed by SIGKILL`` — as a log line wants it."""
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with status 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            try:
                name = signal.Signals(value.signal).name
            except ValueError:
                name = f"signal {value.signal}"
            return f"was killed by {name}"
        return f"exited with status {value.exitCode}"
    return f"ended: {reason.getErrorMessage()}"


def _exit_fields(reason: Failure) -> dict[str, int | None]:
    value = reason.value
    if isinstance(value, ProcessTerminated):
        return {"exit_code": value.exitCode, "exit_signal": value.signal}
    return {"exit_code": 0 if isinstance(value, ProcessDone) else None, "exit_signal": None}


class ChildProtocol(ProcessProtocol):
    """The pipes of one run: output to the log line by line, exit to the owner."""

    _STREAMS = {1: "stdout", 2: "stderr"}

    def __init__(self, owner: SupervisedProcess) -> None:
        self._owner = owner
        self._buffers = {fd: LineBuffer() for fd in self._STREAMS}
        # Namespaced by component: `--log-format json` consumers filter on it.
        self._log = Logger(namespace=owner.name)

    def connectionMade(self) -> None:
        # Nothing ever writes to a child's stdin; an open one would block a reader.
        assert self.transport is not None
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffer = self._buffers.get(childFD)
        if buffer is not None:
            self._forward(childFD, buffer.feed(data))

    def childConnectionLost(self, childFD: int) -> None:
        buffer = self._buffers.get(childFD)
        if buffer is not None:
            self._forward(childFD, buffer.flush())

    def _forward(self, fd: int, raws: list[bytes]) -> None:
        for raw in raws:
            line = decode_line(raw)
            if line.strip():
                self._log.emit(
                    line_level(line),
                    "{line}",
                    line=line,
                    component=self._owner.name,
                    stream=self._STREAMS[fd],
                )

    def processExited(self, reason: Failure) -> None:
        self._owner._exited(self, reason)

    def processEnded(self, reason: Failure) -> None:
        self._owner._ended(self, reason)


class SupervisedProcess(Service):
    """A program kept running: started through ``gate``, probed, restarted with backoff.

    ``stopService`` returns a Deferred that fires once the child is reaped and its
    pipes are closed, so a parent ``MultiService`` (and twistd) waits for it.
    """

    log = Logger()

    def __init__(
        self,
        spec: ProcessSpec,
        reactor: IReactorProcess,
        clock: IReactorTime,
        launcher: Launcher,
        gate: Gate = _open_gate,
    ) -> None:
        self.spec = spec
        self.setName(spec.name)
        self._reactor = reactor
        self._clock = clock
        self._launcher = launcher
        self._gate = gate
        self._state = State.IDLE
        self._ready = False
        self._ready_waiters: Waiters[None] = Waiters()
        self._stop_waiters: Waiters[None] = Waiters()
        self._gating: Deferred[Any] | None = None
        self._child: ChildProtocol | None = None
        self._started_at = 0.0
        self._backoff = Backoff(spec.restart)
        self._restarts = 0
        self._last_exit: str | None = None
        self._last_probe_error: str | None = None
        self._restart_call: IDelayedCall | None = None
        self._kill_call: IDelayedCall | None = None
        self._drain_call: IDelayedCall | None = None
        self._probe_call: IDelayedCall | None = None
        self._probing: Deferred[Any] | None = None

    # -- what others see --------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def pid(self) -> int | None:
        transport = self._transport()
        return None if transport is None else transport.pid

    def status(self) -> ProcessStatus:
        return ProcessStatus(
            name=self.spec.name,
            state=self._state,
            ready=self._ready,
            pid=self.pid,
            restarts=self._restarts,
            last_exit=self._last_exit,
            last_probe_error=self._last_probe_error,
        )

    def when_ready(self) -> Deferred[None]:
        """Fires when the program is ready: now if it is, else at its next readiness."""
        if self._ready:
            return succeed(None)
        return self._ready_waiters.wait()

    # -- service ------------------------------------------------------------------------

    def startService(self) -> None:
        """Start through the gate; an :class:`IllegalTransition` while running or stopping."""
        self._input(Input.START)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._input(Input.STOP)
        if self._state is State.STOPPING:
            return self._stop_waiters.wait()
        return succeed(None)

    def restart(self) -> Deferred[None]:
        """Stop, then start again (new certificates, say); fires once it is started."""
        return self.stopService().addCallback(lambda _: self.startService())

    def _input(self, input: Input, *args: Any) -> None:
        # The state first: an input that comes during the output meets the new one.
        self._state, output = LIFECYCLE.step(self._state, input)
        output(self, *args)

    # -- starting (the outputs of the table below are the methods up to "helpers") -------

    def _start(self) -> None:
        Service.startService(self)
        self._backoff.reset()
        self._open_gate()

    def _open_gate(self) -> None:
        self._restart_call = None
        gating = maybeDeferred(self._gate)
        self._gating = gating
        gating.addCallbacks(
            self._gate_answered, self._gate_answered, callbackArgs=(gating,), errbackArgs=(gating,)
        )

    def _gate_answered(self, result: object, gating: Deferred[Any]) -> None:
        if gating is not self._gating:
            return  # cancelled by a stop: that gate is no longer ours
        self._gating = None
        if not isinstance(result, Failure):
            self._input(Input.GATE_OPENED)
        elif not result.check(CancelledError):
            self._input(Input.GATE_FAILED, result)
        # Cancelled by whoever made it: not a reason to block, and nothing to start on.

    def _cancel_gate(self) -> None:
        gating, self._gating = self._gating, None
        if gating is not None:
            gating.cancel()

    def _blocked(self, failure: Failure) -> None:
        self.log.failure(
            "{component} will not start: {reason}",
            failure,
            component=self.name,
            reason=failure.getErrorMessage(),
        )

    def _spawn(self) -> None:
        argv = self._launcher.command(self.spec.argv, self.spec.death_signal)
        child = ChildProtocol(self)
        self._child = child
        self._started_at = self._clock.seconds()
        try:
            # path=None keeps Twisted on posix_spawn, much cheaper than fork for a big agent.
            self._reactor.spawnProcess(child, argv[0], argv, env=dict(self.spec.env), path=None)
        except OSError as error:
            self._child = None
            self._input(Input.ENDED, f"could not be started: {error}", {})
            return
        if self._child is not child:
            return  # it ended already, inside spawnProcess (possible before the reactor runs)
        self.log.info(
            "{component} started as pid {pid}: {command}",
            component=self.name,
            pid=self.pid,
            command=" ".join(self.spec.argv),
        )
        self._probe_later(0.0)

    # -- readiness ------------------------------------------------------------------------

    def _probe_later(self, delay: float) -> None:
        self._cancel("_probe_call")
        self._probe_call = self._clock.callLater(delay, self._input, Input.PROBE_DUE)

    def _probe(self) -> None:
        self._probe_call = None
        probing = maybeDeferred(self.spec.probe.check)
        probing.addTimeout(self.spec.probe_timeout, self._clock)
        self._probing = probing
        probing.addBoth(self._probe_answered, probing)

    def _probe_answered(self, result: object, probing: Deferred[Any]) -> None:
        if probing is not self._probing:
            return  # cancelled: the run it was probing is over, or ending
        self._probing = None
        if isinstance(result, Failure):
            self._input(Input.PROBE_FAILED, result)
        else:
            self._input(Input.PROBE_PASSED)

    def _passed(self) -> None:
        self._last_probe_error = None
        # The next probe first: a waiter told of readiness may well stop this process.
        self._probe_later(self.spec.ready_probe_interval)
        if not self._ready:
            self._ready = True
            self.log.info(
                "{component} is ready ({probe}), {elapsed:.1f} s after its start",
                component=self.name,
                probe=self.spec.probe.describe(),
                elapsed=self._clock.seconds() - self._started_at,
            )
            self._ready_waiters.fire(None)

    def _not_passed(self, failure: Failure) -> None:
        if failure.check(defer.TimeoutError):
            reason = f"no answer within {self.spec.probe_timeout:g} s"
        else:
            reason = failure.getErrorMessage() or repr(failure.value)
        self._last_probe_error = reason
        self._probe_later(self.spec.probe_interval)
        if self._ready:
            self._ready = False
            self.log.warn(
                "{component} is no longer ready: {reason}", component=self.name, reason=reason
            )
        else:
            self.log.debug(
                "{component} not ready yet: {reason}", component=self.name, reason=reason
            )

    # -- stopping and ending ------------------------------------------------------------

    def _terminate(self) -> None:
        self._stop_probing()
        # Armed first: a child may end inside signalProcess, and its end disarms this.
        self._kill_call = self._clock.callLater(self.spec.stop_timeout, self._input, Input.KILL_DUE)
        self.log.info("{component} stopping (SIGTERM)", component=self.name)
        self._signal("TERM")

    def _kill(self) -> None:
        self._kill_call = None
        self.log.warn(
            "{component} did not exit within {timeout:g} s of SIGTERM: sending SIGKILL",
            component=self.name,
            timeout=self.spec.stop_timeout,
        )
        self._signal("KILL")

    def _signal(self, name: str) -> None:
        transport = self._transport()
        if transport is None:
            return
        try:
            transport.signalProcess(name)
        except ProcessExitedAlready:
            pass  # reaped, its end is on its way

    def _exited(self, child: ChildProtocol, reason: Failure) -> None:
        """Called by the child's protocol when it is reaped."""
        if child is self._child:
            self._input(Input.EXITED, child)

    def _drain(self, child: ChildProtocol) -> None:
        if child.transport is not None:
            # A grandchild holding our pipes must not keep this run alive forever.
            self._drain_call = self._clock.callLater(
                self.spec.drain_timeout, child.transport.loseConnection
            )

    def _ended(self, child: ChildProtocol, reason: Failure) -> None:
        """Called by the child's protocol when it is reaped and its pipes are closed."""
        if child is self._child:
            self._input(Input.ENDED, describe_exit(reason), _exit_fields(reason))

    def _run_over(self, how: str) -> float:
        """Forget the run that ended, ``how`` it did; returns how long it lasted."""
        self._child = None
        self._cancel("_drain_call")
        self._cancel("_kill_call")
        self._stop_probing()
        self._ready = False
        self._last_exit = how
        return self._clock.seconds() - self._started_at

    def _stopped(self, how: str, fields: dict[str, int | None]) -> None:
        self._run_over(how)
        self.log.info("{component} stopped: it {how}", component=self.name, how=how, **fields)
        self._stop_waiters.fire(None)

    def _back_off(self, how: str, fields: dict[str, int | None]) -> None:
        run_time = self._run_over(how)
        delay = self._backoff.failed(run_time)
        failures = self._backoff.failures
        self._restarts += 1
        self._restart_call = self._clock.callLater(delay, self._input, Input.BACKOFF_OVER)
        self.log.warn(
            "{component} {how} after {run_time:.1f} s; restarting in {delay:g} s{streak}",
            component=self.name,
            how=how,
            run_time=run_time,
            delay=delay,
            failures=failures,
            streak="" if failures == 1 else f" ({failures} short runs in a row)",
            **fields,
        )

    def _cancel_restart(self) -> None:
        self._cancel("_restart_call")

    def _nothing(self) -> None:
        pass

    # -- helpers --------------------------------------------------------------------------

    def _transport(self) -> IProcessTransport | None:
        child = self._child
        return None if child is None else child.transport

    def _stop_probing(self) -> None:
        self._cancel("_probe_call")
        probing, self._probing = self._probing, None
        if probing is not None:
            probing.cancel()

    def _cancel(self, attribute: str) -> None:
        call: IDelayedCall | None = getattr(self, attribute)
        setattr(self, attribute, None)
        if call is not None and call.active():
            call.cancel()


#: The lifecycle of every supervised process: any other (state, input) is a bug, and
#: raises :class:`~hepto.machine.IllegalTransition`.  Each timer is an input of the one
#: state it is armed in, and is cancelled on the way out of it.
# fmt: off
LIFECYCLE: Final[Transitions[State, Input, Callable[..., None]]] = Transitions.of(
    "supervised process",
    [
        # state          input               next state      output
        (State.IDLE,     Input.START,        State.WAITING,  SupervisedProcess._start),
        (State.STOPPED,  Input.START,        State.WAITING,  SupervisedProcess._start),
        (State.BLOCKED,  Input.START,        State.WAITING,  SupervisedProcess._start),
        (State.WAITING,  Input.GATE_OPENED,  State.RUNNING,  SupervisedProcess._spawn),
        (State.WAITING,  Input.GATE_FAILED,  State.BLOCKED,  SupervisedProcess._blocked),
        (State.RUNNING,  Input.PROBE_DUE,    State.RUNNING,  SupervisedProcess._probe),
        (State.RUNNING,  Input.PROBE_PASSED, State.RUNNING,  SupervisedProcess._passed),
        (State.RUNNING,  Input.PROBE_FAILED, State.RUNNING,  SupervisedProcess._not_passed),
        (State.RUNNING,  Input.EXITED,       State.RUNNING,  SupervisedProcess._drain),
        (State.RUNNING,  Input.ENDED,        State.BACKOFF,  SupervisedProcess._back_off),
        (State.BACKOFF,  Input.BACKOFF_OVER, State.WAITING,  SupervisedProcess._open_gate),
        # Stopping, from wherever it is.
        (State.IDLE,     Input.STOP,         State.STOPPED,  SupervisedProcess._nothing),
        (State.WAITING,  Input.STOP,         State.STOPPED,  SupervisedProcess._cancel_gate),
        (State.RUNNING,  Input.STOP,         State.STOPPING, SupervisedProcess._terminate),
        (State.BACKOFF,  Input.STOP,         State.STOPPED,  SupervisedProcess._cancel_restart),
        (State.STOPPING, Input.STOP,         State.STOPPING, SupervisedProcess._nothing),
        (State.STOPPING, Input.KILL_DUE,     State.STOPPING, SupervisedProcess._kill),
        (State.STOPPING, Input.EXITED,       State.STOPPING, SupervisedProcess._drain),
        (State.STOPPING, Input.ENDED,        State.STOPPED,  SupervisedProcess._stopped),
        (State.STOPPED,  Input.STOP,         State.STOPPED,  SupervisedProcess._nothing),
        (State.BLOCKED,  Input.STOP,         State.STOPPED,  SupervisedProcess._nothing),
    ],
)
# fmt: on
