"""The agent's side of the PKI worker: jobs out, answers back, one at a time.

:class:`WorkerClient` starts ``python -m hepto.pki.worker`` when a job comes and none is
running, writes each job as one JSON line to its standard input and reads the answer
from its standard output.  The worker exits by itself when idle; the next job starts
another.  Whatever goes wrong (the worker cannot start, dies, hangs past
:data:`JOB_TIMEOUT`, or answers something that is no JSON object) fails that job's
Deferred with :class:`~hepto.pki.errors.WorkerError`, and the next job gets a fresh
worker: the caller decides whether to retry.  The one failure that is no failure: a
worker that exited idle just as a job was written never read it, and the job goes to the
next worker.
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

import hepto
from hepto.pki.errors import WorkerError

#: Seconds a job may take: far more than signing for hundreds of members takes.
JOB_TIMEOUT: Final = 120.0
#: Seconds a stopping worker has to finish its job before it is killed.
STOP_TIMEOUT: Final = 10.0
#: Seconds the worker waits for another job before it exits.
IDLE_TIMEOUT: Final = 5.0


def worker_command(idle: float = IDLE_TIMEOUT) -> list[str]:
    return [sys.executable, "-m", "hepto.pki.worker", "--idle", str(idle)]


def worker_environment() -> dict[str, str]:
    """The agent's environment, with hepto importable however the agent found it."""
    environment = dict(os.environ)
    source = str(Path(hepto.__file__).resolve().parent.parent)
    paths = [source, *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return environment


@attrs.define(eq=False)
class _Job:
    line: bytes
    deferred: defer.Deferred[dict[str, Any]]
    attempts: int = 0


class _WorkerProtocol(ProcessProtocol):
    """One worker process: answer lines to the client, its standard error to the log."""

    def __init__(self, client: WorkerClient) -> None:
        self.client = client
        self._out = b""
        self._err = b""
        self.ended = False

    def outReceived(self, data: bytes) -> None:
        self._out += data
        while b"\n" in self._out:
            line, self._out = self._out.split(b"\n", 1)
            self.client._answered(self, line)

    def errReceived(self, data: bytes) -> None:
        self._err += data
        while b"\n" in self._err:
            line, self._err = self._err.split(b"\n", 1)
            self.client.log.warn(
                "PKI worker: {line}", line=line.decode("utf-8", "replace").rstrip()
            )

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        self.client._ended(self, reason)


class WorkerClient:
    """Runs jobs in the PKI worker, starting it on demand."""

    log = Logger(namespace="hepto.pki")

    def __init__(
        self,
        reactor: IReactorProcess,
        clock: IReactorTime,
        command: Sequence[str] | None = None,
        environment: Mapping[str, str] | None = None,
        timeout: float = JOB_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._clock = clock
        self._command = list(command or worker_command())
        self._environment = dict(environment or worker_environment())
        self._timeout = timeout
        self._queue: deque[_Job] = deque()
        self._current: _Job | None = None
        self._protocol: _WorkerProtocol | None = None
        self._deadline: IDelayedCall | None = None
        self._timed_out = False
        self._stopped: list[defer.Deferred[None]] = []
        #: Worker processes started so far.
        self.started = 0

    def run(self, job: Mapping[str, Any]) -> defer.Deferred[dict[str, Any]]:
        """Fires with the worker's answer to ``job``, or fails with :class:`WorkerError`."""
        line = json.dumps(job).encode("utf-8") + b"\n"
        deferred: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._queue.append(_Job(line, deferred))
        self._next()
        return deferred

    def stop(self) -> defer.Deferred[None]:
        """Let the worker finish its job and exit; fires once it has."""
        while self._queue:
            self._queue.popleft().deferred.errback(WorkerError("the PKI is stopping"))
        protocol = self._protocol
        if protocol is None:
            return defer.succeed(None)
        stopped: defer.Deferred[None] = defer.Deferred()
        self._stopped.append(stopped)
        assert protocol.transport is not None
        protocol.transport.closeStdin()
        kill = self._clock.callLater(STOP_TIMEOUT, self._kill, protocol)
        stopped.addBoth(_cancelling(kill))
        return stopped

    def _next(self) -> None:
        if self._current is not None or not self._queue:
            return
        if self._protocol is None:
            try:
                self._spawn()
            except OSError as failure:
                job = self._queue.popleft()
                job.deferred.errback(WorkerError(f"cannot start the PKI worker: {failure}"))
                self._next()
                return
        job = self._current = self._queue.popleft()
        job.attempts += 1
        assert self._protocol is not None and self._protocol.transport is not None
        self._protocol.transport.write(job.line)
        self._timed_out = False
        self._deadline = self._clock.callLater(self._timeout, self._expire)

    def _spawn(self) -> None:
        protocol = _WorkerProtocol(self)
        self._reactor.spawnProcess(protocol, self._command[0], self._command, env=self._environment)
        self._protocol = protocol
        self.started += 1
        self.log.debug("Started the PKI worker ({count})", count=self.started)

    def _expire(self) -> None:
        self._deadline = None
        self._timed_out = True
        self.log.error(
            "The PKI worker took more than {timeout} s over a job; killing it",
            timeout=self._timeout,
        )
        if self._protocol is not None:
            self._kill(self._protocol)

    def _kill(self, protocol: _WorkerProtocol) -> None:
        if protocol.ended or protocol.transport is None:
            return
        try:
            protocol.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    def _finish(self) -> _Job | None:
        job, self._current = self._current, None
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None
        return job

    def _answered(self, protocol: _WorkerProtocol, line: bytes) -> None:
        if protocol is not self._protocol:
            return
        job = self._finish()
        try:
            answer = json.loads(line)
            if not isinstance(answer, dict):
                raise ValueError(f"a {type(answer).__name__}, not an object")
        except ValueError as problem:
            # Out of step with the worker: start afresh.
            self._protocol = None
            self._kill(protocol)
            failure = WorkerError(f"the PKI worker answered nonsense ({problem})")
            if job is not None:
                job.deferred.errback(failure)
            self._next()
            return
        if job is None:
            self.log.error("The PKI worker answered a job it was not given")
        else:
            job.deferred.callback(answer)
        self._next()

    def _ended(self, protocol: _WorkerProtocol, reason: Failure) -> None:
        if protocol is self._protocol:
            self._protocol = None
            job = self._finish()
            if job is not None:
                code = getattr(reason.value, "exitCode", None)
                if code == 0 and not self._timed_out and job.attempts < 2:
                    # It exited idle as the job came: it never read it.
                    self._queue.appendleft(job)
                else:
                    job.deferred.errback(WorkerError(_describe(reason, self._timed_out)))
        stopped, self._stopped = self._stopped, []
        for deferred in stopped:
            deferred.callback(None)
        self._next()


def _describe(reason: Failure, timed_out: bool) -> str:
    if timed_out:
        return "the PKI worker timed out over a job and was killed"
    value = reason.value
    signal = getattr(value, "signal", None)
    if signal is not None:
        return f"the PKI worker was killed by signal {signal} during a job"
    return f"the PKI worker exited with status {getattr(value, 'exitCode', None)} during a job"


def _cancelling(call: IDelayedCall) -> Any:
    def cancel(result: object) -> object:
        if call.active():
            call.cancel()
        return result

    return cancel
