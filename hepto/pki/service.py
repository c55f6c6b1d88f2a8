"""The PKI service: keeps this member's certificates issued, installed and renewed.

It is driven by the cluster state and its own renewal timers, never by polling:

- every member publishes, under the ``pki`` key of its record, the CSRs it still needs
  (``{"csr": {name: PEM}}``) and removes each one once the certificate is installed;
- the master publishes its Kubernetes CA certificate (``ca``), the certificates it
  signed for requests still outstanding (``signed``: ``{member: {name: PEM}}``) and
  its refusals of them (``refused``: ``{member: {name: {code, reason, key}}}``).

So the master's record holds only what is in flight: a member's CSR disappears once its
certificate is installed, and the master then drops the certificate.  In the steady
state the whole PKI costs one CA certificate (~700 bytes) in the master's record, and a
node joining or renewing adds ~1 KiB to its own record and ~1.5 KiB to the master's
until it is served.

This service decides nothing about certificates and touches no key: it collects work
(members whose records changed, renewals due) and hands it, once per reactor turn and
one batch at a time, to a :class:`Runner`: in the agent the PKI worker process
(:mod:`hepto.pki.client`, :mod:`hepto.pki.worker`), where a
:class:`~hepto.pki.desk.Desk` does the cryptography, so that the resident agent never
loads ``cryptography``.  The service keeps what the desk must remember between batches,
publishes the record entry it answers, tells listeners and waiters of installed
certificates, and owns the timers.  A batch that fails (the worker died, hung or
answered nonsense) is logged and its work tried again, later and later.

The start is a batch like the others, sent as the service starts: the reactor runs (and
the member joins the cluster) while the worker starts.  A start that fails (damaged CA
files, a worker that cannot run) fails :meth:`PKIService.when_started`, and the node
stops with that one sentence.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from hepto.backoff import Backoff, BackoffPolicy
from hepto.config import NodeConfig
from hepto.errors import StartupError
from hepto.observers import Observers
from hepto.once import Once
from hepto.pki.client import WorkerClient
from hepto.pki.errors import AuthorityError, WorkerError
from hepto.pki.paths import Paths
from hepto.pki.protocol import (
    Answer,
    CertificateChange,
    DeskConfig,
    DeskMemory,
    Job,
    MalformedMessage,
    MemberEntry,
    read_answer,
)
from hepto.pki.refusals import RefusalLog
from hepto.pki.specs import (
    LEAF_LIFETIME,
    RECORD_KEY,
    CertificateSpec,
    is_master_role,
    specs_for_role,
)
from hepto.state import LEFT, ClusterState
from hepto.waiters import Waiters

__all__ = ["RECORD_KEY", "CertificateChange", "PKIService", "Runner"]

#: Seconds before a failed batch is tried again: from one, doubling up to a minute.
RETRY: Final = BackoffPolicy(initial=1.0, maximum=60.0)


CertificateListener = Callable[[CertificateChange], None]


class Runner(Protocol):
    """Where the desk's batches run: the worker process, or this process in tests."""

    def run(self, job: Mapping[str, Any]) -> defer.Deferred[dict[str, Any]]: ...

    def stop(self) -> defer.Deferred[None]: ...


_log = Logger(namespace="hepto.pki")


def emit_events(answer: Mapping[str, Any]) -> None:
    """Log, as this process's own, the events a worker logged while doing a job."""
    events = answer.get("log")
    for event in events if isinstance(events, list) else ():
        try:
            fields = {
                key: value
                for key, value in event.get("fields", {}).items()
                if key not in ("level", "format")
            }
            text = str(event.get("format", ""))
            if "traceback" in event:
                text += "\n{traceback}"
                fields["traceback"] = event["traceback"]
            level = LogLevel.levelWithName(event.get("level", "info"))
            logger = Logger(namespace=str(event.get("namespace", "hepto.pki")))
        except Exception:
            _log.warn("The PKI worker logged something unreadable: {event!r}", event=event)
            continue
        logger.emit(level, text, **fields)


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


class PKIService(Service):
    """This member's side of the cluster PKI, and the signing desk when it is master."""

    log = Logger(namespace="hepto.pki")

    def __init__(
        self,
        cluster: str,
        name: str,
        role: str,
        node_dir: Path,
        state: ClusterState,
        clock: IReactorTime,
        lifetime: datetime.timedelta = LEAF_LIFETIME,
        runner: Runner | None = None,
        identity: bytes | None = None,
    ) -> None:
        self.setName("pki")
        #: This member's identity key, which a master's proof names (none: no proof).
        self.identity = identity
        #: The members that the cluster CA proves masters, and who wants to know.
        self.masters: frozenset[str] = frozenset()
        self._master_listeners: Observers[[frozenset[str]]] = Observers(
            "Masters listener", self.log
        )
        self.cluster = cluster
        self.member = name
        self.role = role
        self.paths = Paths(node_dir)
        self.state = state
        self.clock = clock
        self.lifetime = lifetime
        self.runner: Runner = (
            WorkerClient(IReactorProcess(clock), clock) if runner is None else runner
        )
        self.specs: dict[str, CertificateSpec] = {
            spec.name: spec for spec in specs_for_role(role, cluster, name)
        }
        self.is_master = is_master_role(role)
        self.refusals = RefusalLog()
        # What the desk must remember between batches, and its last status.
        self._memory: DeskMemory | None = None
        self._status: dict[str, Any] = {}
        self._installed: set[str] = set()
        self._counted: dict[str, int] = {}
        #: Batches the worker answered (the one at start too), and renewals done in
        #: them; never reset (the metrics' counters).
        self.batches = 0
        self.renewals = 0
        # Work waiting for the next batch, and the batch in flight.
        self._dirty: set[str] = set()
        # Members to review even if their record did not change (a timer, the desk).
        self._forced: set[str] = set()
        # Per member, what the desk last reviewed of its record (None: it left).  A
        # change of liveness alone, or of another key of the record (an operator's, the
        # mesh's), changes nothing the desk reads: it costs no batch, hence no worker.
        self._reviewed: dict[str, object] = {}
        self._renewals_due: set[str] = set()
        self._dispatch_call: IDelayedCall | None = None
        self._busy = False
        #: Counts starts: an answer to a batch sent before the last start is ignored.
        self._started = 0
        #: The outcome of the last start's batch.
        self._start: Once[None] = Once()
        self._retries = Backoff(RETRY)
        self._revisits: dict[str, IDelayedCall] = {}
        self._timers: dict[str, IDelayedCall] = {}
        #: Fired at each installation, for those waiting for certain certificates.
        self._installations: Waiters[None] = Waiters()
        self._listeners: Observers[[CertificateChange]] = Observers(
            "Certificate listener", self.log
        )
        self._published: object = None
        self._unsubscribe: Callable[[], None] | None = None

    @classmethod
    def from_config(
        cls,
        config: NodeConfig,
        state: ClusterState,
        clock: IReactorTime,
        runner: Runner | None = None,
        identity: bytes | None = None,
    ) -> PKIService:
        return cls(
            config.cluster,
            config.name,
            config.role,
            config.node_dir,
            state,
            clock,
            runner=runner,
            identity=identity,
        )

    # -- the component-facing API --------------------------------------------------------

    def installed(self, name: str) -> bool:
        return name in self._installed

    def when_installed(self, names: Iterable[str]) -> defer.Deferred[Paths]:
        """Fires with :attr:`paths` once every named certificate (and its kubeconfig) is in place.

        Cancelling the Deferred just stops waiting.
        """
        wanted = frozenset(names)
        unknown = wanted - self.specs.keys()
        if unknown:
            raise ValueError(f"{', '.join(sorted(unknown))}: not certificates of a {self.role}")
        return defer.Deferred.fromCoroutine(self._until_installed(wanted))

    async def _until_installed(self, wanted: frozenset[str]) -> Paths:
        while not all(map(self.installed, wanted)):
            await self._installations.wait()
        return self.paths

    def subscribe(self, listener: CertificateListener) -> Callable[[], None]:
        """Call ``listener`` after each installation; returns an unsubscriber."""
        return self._listeners.subscribe(listener)

    def subscribe_masters(self, listener: Callable[[frozenset[str]], None]) -> Callable[[], None]:
        """Call ``listener`` with the proven masters whenever they change."""
        return self._master_listeners.subscribe(listener)

    @property
    def dropped(self) -> dict[str, int]:
        """What was dropped or failed, by kind: the desk's counts and this service's."""
        counts = dict(self._status.get("dropped", {}))
        for what, count in self._counted.items():
            counts[what] = counts.get(what, 0) + count
        return counts

    def status(self) -> dict[str, Any]:
        """Everything ``hepto status`` shows of the PKI, as JSON-able values."""
        status = copy.deepcopy(self._status) or {
            "role": self.role,
            "trusted_ca": None,
            "certificates": {},
            "refusals": [],
            "refusals_evicted": 0,
        }
        now = self._now()
        for entry in status["certificates"].values():
            if "not_after" in entry:
                not_after = datetime.datetime.fromisoformat(entry["not_after"])
                entry["state"] = "valid" if not_after > now else "expired"
        status["dropped"] = self.dropped
        status["worker"] = {
            "batches": self.batches,
            "failures": self._counted.get("worker_failures", 0),
        }
        status["renewals"] = self.renewals
        return status

    # -- lifecycle -----------------------------------------------------------------------

    def startService(self) -> None:
        """Follow the state, and load or make everything in a first batch.

        Nothing waits for that batch: :meth:`when_started` says how it went.
        """
        super().startService()
        self._started += 1
        self._start = Once() if self._start.done else self._start
        self._busy = True  # the start's batch: no other until it is answered
        self._reviewed.clear()
        self._retries.reset()
        self._unsubscribe = self.state.subscribe(lambda change: self._mark(change.name))
        for name in self.state.members():
            self._mark(name)
        started = self._started
        self.runner.run(self._job(start=True).to_json()).addCallback(
            self._start_answered, started
        ).addErrback(self._start_failed, started)

    def when_started(self) -> defer.Deferred[None]:
        """Fires once the last start's batch is done: keys, CA files and certificates
        loaded or made, the record's entry published.

        Fails with :class:`~hepto.pki.errors.AuthorityError` when CA files are damaged,
        and with :class:`~hepto.errors.StartupError` when the worker cannot do the batch:
        the PKI then does nothing more, and its node cannot go on.
        """
        return self._start.when()

    def _start_answered(self, answer: dict[str, Any], started: int) -> None:
        emit_events(answer)
        done = _read(answer)
        if started != self._started or not self.running:
            return
        self.batches += 1
        self._busy = False
        self._apply(done)
        self._start.fire(None)
        if self._dirty or self._renewals_due:
            self._schedule_dispatch()

    def _start_failed(self, failure: Failure, started: int) -> None:
        if started != self._started or not self.running or self._start.done:
            return
        # The service stays busy: no batch follows a start that failed.
        if failure.check(StartupError):
            self._start.fail(failure)
            return
        if not failure.check(WorkerError):
            self.log.failure("The PKI's start failed", failure)
        self._start.fail(Failure(StartupError(f"the PKI cannot start: {failure.value}")))

    def stopService(self) -> defer.Deferred[None]:
        """Stop following the state; fires once the worker is gone."""
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        calls = [*self._timers.values(), *self._revisits.values()]
        if self._dispatch_call is not None:
            calls.append(self._dispatch_call)
        for call in calls:
            if call.active():
                call.cancel()
        self._timers.clear()
        self._revisits.clear()
        self._dispatch_call = None
        return self.runner.stop()

    # -- batches ---------------------------------------------------------------------------

    def _now(self) -> datetime.datetime:
        return _utc(self.clock.seconds())

    def _job(
        self,
        start: bool,
        renew: list[str] | None = None,
        members: Mapping[str, MemberEntry | None] | None = None,
    ) -> Job:
        config = DeskConfig(
            self.cluster, self.member, self.role, self.paths.node_dir, self.lifetime, self.identity
        )
        return Job(
            config,
            now=self.clock.seconds(),
            start=start,
            memory=None if start else self._memory,
            renew=tuple(renew or ()),
            members=dict(members or {}),
        )

    def _mark(self, name: str, force: bool = False) -> None:
        if name == self.state.name:
            return
        self._dirty.add(name)
        if force:
            self._forced.add(name)
        self._schedule_dispatch()

    def _schedule_dispatch(self, delay: float = 0) -> None:
        if self._dispatch_call is None and not self._busy:
            self._dispatch_call = self.clock.callLater(delay, self._dispatch)

    def _dispatch(self) -> None:
        """Hand what is due to the desk, as one batch: renewals, then changed records."""
        self._dispatch_call = None
        if self._busy or not self.running:
            return
        members = self.state.members()
        entries: dict[str, MemberEntry | None] = {}
        for name in sorted(self._dirty):
            member = members.get(name)
            entry: MemberEntry | None = None
            if member is not None and member.status != LEFT:
                if member.record is None:
                    continue
                entry = MemberEntry(
                    version=member.record.version,
                    role=member.record.get("role"),
                    pki=member.record.get(RECORD_KEY),
                    identity=member.record.identity,
                )
            if not self._concerns_desk(name, entry):
                continue
            if name in self._forced or self._reviewed.get(name, _UNSEEN) != self._read_of(entry):
                entries[name] = entry
        renew = sorted(self._renewals_due)
        self._dirty, self._forced, self._renewals_due = set(), set(), set()
        if not entries and not renew:
            return
        self._busy = True
        work = (self._started, renew, entries)
        job = self._job(start=False, renew=renew, members=entries)
        self.runner.run(job.to_json()).addCallbacks(
            self._answered, self._failed, callbackArgs=work, errbackArgs=work
        )

    def _read_of(self, entry: MemberEntry | None) -> object:
        """What this member's desk reads of ``entry`` (:meth:`MemberEntry.reviewed`)."""
        return None if entry is None else entry.reviewed(None if self.is_master else self.member)

    def _concerns_desk(self, name: str, entry: MemberEntry | None) -> bool:
        """Whether the desk must see ``entry``: a master's sees every member's; any other,
        those that can concern it (:meth:`MemberEntry.concerns_members`), and every later
        entry (or the leave) of a member it has seen, so that what it made of the member
        (a master, a refusal) is undone when the member changes."""
        if self.is_master or name in self._reviewed:
            return True
        return entry is not None and entry.concerns_members()

    def _answered(
        self, answer: dict[str, Any], started: int, renew: list[str], members: Mapping[str, Any]
    ) -> None:
        emit_events(answer)
        try:
            done = _read(answer)
        except (AuthorityError, WorkerError):
            self._failed(Failure(), started, renew, members)
            return
        if started != self._started:
            return  # Stopped since, and maybe started anew: an answer for nobody.
        self._busy = False
        self.batches += 1
        self.renewals += len(renew)
        if not self.running:
            return
        self._retries.reset()
        for name, entry in members.items():
            self._reviewed[name] = self._read_of(entry)
        self._apply(done)
        if self._dirty or self._renewals_due:
            self._schedule_dispatch()

    def _failed(
        self, failure: Failure, started: int, renew: list[str], members: Mapping[str, Any]
    ) -> None:
        if started != self._started:
            return
        self._busy = False
        if not self.running:
            return
        self._count("worker_failures")
        delay = self._retries.failed()
        self.log.error(
            "A PKI batch failed ({error}); trying again in {delay} s",
            error=str(failure.value),
            delay=delay,
        )
        self._renewals_due.update(renew)
        self._dirty.update(members)
        self._forced.update(members)
        self._schedule_dispatch(delay)

    def _count(self, what: str) -> None:
        self._counted[what] = self._counted.get(what, 0) + 1

    def _apply(self, answer: Answer) -> None:
        """What a batch did: remember it, set timers, tell listeners, publish."""
        self._memory = answer.memory
        self._status = answer.status
        self.refusals = answer.refusals
        self._installed = set(answer.installed) - {change.name for change in answer.changes}
        for name, when in answer.renewals.items():
            self._schedule_renewal(name, when)
        for member, when in answer.revisits.items():
            self._revisit(member, when)
        for change in answer.changes:
            self._installed.add(change.name)
            self._tell(change)
        self._installations.fire(None)
        self._publish(answer.section)
        for name in answer.marks:
            self._mark(name, force=True)
        if answer.masters != self.masters:
            self.masters = answer.masters
            self._master_listeners.notify(self.masters)

    def _tell(self, change: CertificateChange) -> None:
        self._listeners.notify(change)
        self._installations.fire(None)

    def _publish(self, section: object) -> None:
        if section == self._published:
            return
        try:
            self.state.publish(RECORD_KEY, section)
        except (TypeError, ValueError):
            self._count("publish_failures")
            self.log.failure("Could not publish the PKI entry of the record")
            return
        self._published = section

    # -- timers ------------------------------------------------------------------------------

    def _schedule_renewal(self, name: str, when: float) -> None:
        previous = self._timers.pop(name, None)
        if previous is not None and previous.active():
            previous.cancel()
        delay = max(0.0, when - self.clock.seconds())
        self._timers[name] = self.clock.callLater(delay, self._renew, name)

    def _renew(self, name: str) -> None:
        self._timers.pop(name, None)
        self._renewals_due.add(name)
        self._schedule_dispatch()

    def _revisit(self, member: str, when: float) -> None:
        previous = self._revisits.pop(member, None)
        if previous is not None and previous.active():
            previous.cancel()

        def again() -> None:
            self._revisits.pop(member, None)
            self._mark(member, force=True)

        delay = max(0.0, when - self.clock.seconds())
        self._revisits[member] = self.clock.callLater(delay, again)


#: What the desk has never reviewed.
_UNSEEN: Final = object()


def _read(answer: Mapping[str, Any]) -> Answer:
    """The worker's answer; :class:`WorkerError` if it is no answer at all."""
    try:
        return read_answer(answer)
    except MalformedMessage as problem:
        raise WorkerError(f"the PKI worker's answer is malformed: {problem}") from None
