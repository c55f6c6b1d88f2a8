"""Processes that depend on each other: started in dependency order, stopped in reverse."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import (
    Deferred,
    FirstError,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from hepto.supervisor.launcher import Launcher, default_launcher
from hepto.supervisor.process import ProcessSpec, ProcessStatus, SupervisedProcess


def first_error(failure: Failure) -> Failure:
    """The failure inside a gatherResults FirstError, for errbacks that report it."""
    error = failure.value
    if isinstance(error, FirstError):
        sub: Failure = error.subFailure
        return sub
    return failure


class Supervisor(MultiService):
    """Supervised processes, each started once its dependencies are ready.

    Dependencies are named by process and must be added first, which rules out cycles
    by construction.  Stopping stops every process after all those that depend on it
    have ended, and the returned Deferred fires when the last one has.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorProcess,
        clock: IReactorTime | None = None,
        launcher: Launcher | None = None,
    ) -> None:
        super().__init__()
        self.setName("supervisor")
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor  # type: ignore[assignment]
        self._launcher = launcher if launcher is not None else default_launcher()
        self._processes: dict[str, SupervisedProcess] = {}
        self._dependents: dict[str, list[str]] = {}

    def add(self, spec: ProcessSpec) -> SupervisedProcess:
        if spec.name in self._processes:
            raise ValueError(f"{spec.name} is already supervised")
        for dependency in spec.dependencies:
            if dependency not in self._processes:
                raise ValueError(
                    f"{spec.name} depends on {dependency}, which is not supervised "
                    "(add dependencies first)"
                )
        process = SupervisedProcess(
            spec, self._reactor, self._clock, self._launcher, partial(self._gate, spec)
        )
        self._processes[spec.name] = process
        self._dependents[spec.name] = []
        for dependency in spec.dependencies:
            self._dependents[dependency].append(spec.name)
        process.setServiceParent(self)
        return process

    def __getitem__(self, name: str) -> SupervisedProcess:
        return self._processes[name]

    def status(self) -> Mapping[str, ProcessStatus]:
        return {name: process.status() for name, process in self._processes.items()}

    def when_ready(self, *names: str) -> Deferred[None]:
        """Fires when every named process is ready at once (all of them when none named)."""
        chosen = names or tuple(self._processes)
        waits = [self._processes[name].when_ready() for name in chosen]
        return gatherResults(waits, consumeErrors=True).addCallbacks(lambda _: None, first_error)

    def _gate(self, spec: ProcessSpec) -> Deferred[Any]:
        waiting = [name for name in spec.dependencies if not self._processes[name].ready]
        if waiting:
            self.log.info(
                "{component} waits for {dependencies}",
                component=spec.name,
                dependencies=", ".join(waiting),
            )
        waits: list[Deferred[Any]] = [
            self._processes[name].when_ready() for name in spec.dependencies
        ]
        if spec.precondition is not None:
            waits.append(maybeDeferred(spec.precondition))
        if not waits:
            return succeed(None)
        return gatherResults(waits, consumeErrors=True).addErrback(first_error)

    def stopService(self) -> Deferred[None]:
        # Not MultiService.stopService: it stops every child at once.
        Service.stopService(self)
        failures: list[Failure] = []
        ended: dict[str, Deferred[None]] = {}
        # Dependents were added after their dependencies: reversed order meets them first.
        for name in reversed(self._processes):
            after = [ended[dependent] for dependent in self._dependents[name]]
            ended[name] = (
                gatherResults(after)
                .addCallback(partial(self._stop_one, name))
                .addErrback(partial(self._stop_failed, name, failures))
            )
        everything = gatherResults(list(ended.values()))
        # The first failure, once every process had its chance to stop.
        return everything.addCallback(lambda _: failures[0] if failures else None)

    def _stop_one(self, name: str, _: object) -> Deferred[None]:
        process = self._processes[name]
        if not process.running:
            return succeed(None)
        return process.stopService()

    def _stop_failed(self, name: str, failures: list[Failure], failure: Failure) -> None:
        # Its dependencies are stopped all the same: a bug must not leave them running.
        self.log.failure("{component} failed to stop", failure, component=name)
        failures.append(failure)
