"""Gossip benchmarks with real processes: hepto agents beside HashiCorp memberlist.

Every member runs in a network namespace of its own on one bridge (``tests/netlab.py``),
and each system in turn meets the same scenarios with the same timing parameters:

* spread: one member changes its 4 KiB record; how long until each other member holds it;
* detection: one member is killed with SIGKILL; how long until each survivor declares it dead;
* loss: every host drops a share of its incoming packets at random for a while; how many
  times a member that never failed is declared dead;
* traffic and cost, in a quiet window: UDP and TCP bytes per second per member (nftables
  counters in each namespace), resident memory and CPU of each process (``/proc``).

Figures are printed, never asserted.  ``benchmarks/README.rst`` says how to run this and
what every figure means; ``docs/benchmarks.rst`` holds the results.
"""

from __future__ import annotations

import argparse
import base64
import compileall
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Final, Protocol

import attrs
from twisted.internet import defer, protocol, task, threads
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError, ConnectionClosed, ProcessDone, ProcessTerminated
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from netlab import Host, Lab, missing_requirements, uapi_get  # noqa: E402

CLUSTER: Final = "bench"
PORT: Final = 7946
RECORD_SIZE: Final = 4096
#: The record key the benchmark changes: hepto's ``publish`` control command sets only
#: operator keys, those starting with "x-".
PUBLISH_KEY: Final = "x-benchmark"
CACHE: Final = Path(os.environ.get("HEPTO_CACHE", "/var/cache/hepto"))
#: The states in which a member counts as declared dead; "gone" is a member a node has
#: already forgotten (reaped) by the time it was asked.
DEAD_STATES: Final = frozenset({"dead", "gone"})

#: Seconds of the members' idle CPU measured before each joiner starts.
IDLE_SAMPLE: Final = 10.0
#: The least pause before the first joiner, s: the last wave's handshakes and PKI
#: batches must be over for the members to be quiet, or their idle CPU is overstated and
#: the first join's cost comes out below zero (-190 ms per member at N = 10 in session 22).
FIRST_SETTLE: Final = 30.0
#: How often a joiner's wireguard-go is asked about its handshakes, s.
MESH_POLL: Final = 0.2

#: Under this name, what the children that ended used (counted once reaped).
ENDED_CHILDREN: Final = "ended children"

log = Logger(namespace="benchmarks.agents")


# Figures


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest rank: the smallest value with at least ``fraction`` of them at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


#: The stages of a detection, as ``Run.stages_of_death`` names them.
STAGES_OF_DEATH: Final = ("suspected", "timed_out", "spread")


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


# What the members report


@attrs.frozen
class Report:
    """``observer`` said something about ``subject`` at ``t`` (seconds since the epoch)."""

    t: float
    observer: str
    subject: str


@attrs.define
class Observatory:
    """Everything members report of each other, stamped with the reporters' own clocks.

    All processes share the host's clock, so a member's timestamp compares directly with
    the harness's.  Waiters are checked after every report: nothing here polls.
    """

    states: dict[str, dict[str, str]] = attrs.field(factory=dict)
    _held: dict[tuple[str, str], list[tuple[int, float]]] = attrs.field(factory=dict)
    deaths: list[Report] = attrs.field(factory=list)
    suspicions: list[Report] = attrs.field(factory=list)
    #: Each member's Lifeguard health score, for systems that tell it (hepto): 0 is
    #: healthy, n stretches its probe interval n + 1 times.
    health: dict[str, int] = attrs.field(factory=dict)
    _waiters: list[tuple[Callable[[], bool], Deferred[None]]] = attrs.field(factory=list)

    def state(self, observer: str, subject: str, state: str, t: float) -> None:
        view = self.states.setdefault(observer, {})
        if view.get(subject) == state:
            return
        view[subject] = state
        if state in DEAD_STATES:
            self.deaths.append(Report(t, observer, subject))
        elif state == "suspect":
            self.suspicions.append(Report(t, observer, subject))
        self._check()

    def suspect(self, observer: str, subject: str, t: float) -> None:
        """``observer`` suspects ``subject``, for systems that report only that (memberlist)."""
        self.suspicions.append(Report(t, observer, subject))

    def holds(self, observer: str, origin: str, version: int, t: float) -> None:
        history = self._held.setdefault((observer, origin), [])
        if history and history[-1][0] >= version:
            return
        history.append((version, t))
        self._check()

    def first_held(self, observer: str, origin: str, version: int) -> float | None:
        """When ``observer`` first held ``origin``'s record at ``version`` or newer."""
        for held, t in self._held.get((observer, origin), ()):
            if held >= version:
                return t
        return None

    def newest(self, origin: str) -> int | None:
        """The newest version of ``origin``'s record that anyone is known to hold."""
        versions = [
            history[-1][0]
            for (_, held), history in self._held.items()
            if held == origin and history
        ]
        return max(versions, default=None)

    def deaths_between(self, start: float, end: float) -> list[Report]:
        return [report for report in self.deaths if start <= report.t <= end]

    def forget(self, member: str) -> None:
        """``member`` is gone for good: drop its own view (what others think of it stays)."""
        self.states.pop(member, None)

    def when(self, predicate: Callable[[], bool]) -> Deferred[None]:
        """A Deferred that fires once ``predicate`` holds, checked after each report."""

        def cancel(deferred: Deferred[None]) -> None:
            self._waiters[:] = [w for w in self._waiters if w[1] is not deferred]

        waiter: Deferred[None] = Deferred(cancel)
        if predicate():
            waiter.callback(None)
        else:
            self._waiters.append((predicate, waiter))
        return waiter

    def _check(self) -> None:
        for entry in list(self._waiters):
            predicate, waiter = entry
            if predicate():
                self._waiters.remove(entry)
                waiter.callback(None)


def wait(deferred: Deferred[Any], timeout: float, clock: Any) -> Deferred[bool]:
    """True once ``deferred`` fires, False if ``timeout`` seconds pass first."""

    def timed_out(failure: Failure) -> bool:
        failure.trap(defer.TimeoutError)
        return False

    deferred.addTimeout(timeout, clock)
    result: Deferred[bool] = deferred.addCallback(lambda _: True)
    return result.addErrback(timed_out)


# Processes


class MemberProcess(protocol.ProcessProtocol):
    """One member's process: its output is kept in a file and handed on line by line."""

    def __init__(self, name: str, log_file: IO[bytes], on_line: Callable[[bytes], None]) -> None:
        self.name = name
        self._log_file = log_file
        self._on_line = on_line
        self._buffer = b""
        self.ended: Deferred[None] = Deferred()
        self.running = True

    @property
    def pid(self) -> int | None:
        return None if self.transport is None else self.transport.pid

    def outReceived(self, data: bytes) -> None:
        self._log_file.write(data)
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._on_line(line)

    def errReceived(self, data: bytes) -> None:
        self._log_file.write(data)

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        self._log_file.close()
        if not reason.check(ProcessDone, ProcessTerminated):
            log.failure("{name} ended oddly", reason, name=self.name)
        self.ended.callback(None)

    def signal(self, name: str) -> None:
        if self.running and self.transport is not None:
            self.transport.signalProcess(name)


#: With ``--own-core``: the CPU of the members named, and the one all others share.
OWN_CORE: Final = "1"
SHARED_CORE: Final = "0"


def placement(own_core: frozenset[str], name: str) -> str | None:
    """The CPUs member ``name`` may run on (None: any), its children with it."""
    if not own_core:
        return None
    return OWN_CORE if name in own_core else SHARED_CORE


def spawn(
    reactor: Any,
    host: Host,
    argv: Sequence[str],
    log_path: Path,
    on_line: Callable[[bytes], None],
    env: dict[str, str] | None = None,
    cpus: str | None = None,
) -> MemberProcess:
    if cpus is not None:
        argv = ["taskset", "--cpu-list", cpus, *argv]
    # `ip netns exec` and taskset exec the program: the pid is the member's own, for /proc.
    command = host.command(argv)
    # Unbuffered: the logs of a run still going are read to see what it is doing.
    process = MemberProcess(host.name, log_path.open("ab", buffering=0), on_line)
    reactor.spawnProcess(process, command[0], command, env=env or dict(os.environ))
    return process


@attrs.frozen
class Usage:
    """What ``/proc`` says of a process: CPU seconds so far, resident and peak memory."""

    cpu: float
    rss: int
    peak_rss: int

    @classmethod
    def of(cls, pid: int) -> Usage | None:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        # Fields after the parenthesised command name, which may itself hold spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        memory = {
            line.split(":")[0]: int(line.split()[1]) * 1024
            for line in status.splitlines()
            if line.startswith(("VmRSS:", "VmHWM:"))
        }
        return cls(ticks / os.sysconf("SC_CLK_TCK"), memory["VmRSS"], memory["VmHWM"])


def tree_cpu_by_program(pid: int) -> dict[str, float]:
    """CPU seconds of ``pid`` and of all its descendants, by program name; what ended
    children used (once reaped) is under "ended children".

    Living processes are read from each thread's ``schedstat`` (nanoseconds): ``stat``'s
    user and system times count whole clock ticks (10 ms here), as coarse as a member's
    whole share of a join.  Ended children are only known in ticks."""
    return {program: cpu for program, (cpu, _) in tree_schedstat(pid).items()}


def tree_schedstat(pid: int) -> dict[str, tuple[float, int]]:
    """CPU seconds and runs (times put on a core: wakeups, mostly) of ``pid`` and of all
    its descendants, by program name, from each thread's ``schedstat``; what ended
    children used (once reaped, in clock ticks, runs unknown) is under "ended children"."""
    seconds: dict[str, float] = {}
    runs: dict[str, int] = {}
    pending, tick = [pid], 1 / os.sysconf("SC_CLK_TCK")
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue  # Ended meanwhile: its parent's cutime has it once reaped.
        program = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        cutime, cstime = (int(field) for field in fields[13:15])
        seconds[ENDED_CHILDREN] = seconds.get(ENDED_CHILDREN, 0.0) + (cutime + cstime) * tick
        runs.setdefault(ENDED_CHILDREN, 0)
        for thread in tasks:
            try:
                schedstat = (thread / "schedstat").read_text().split()
                runtime, timeslices = int(schedstat[0]), int(schedstat[2])
                children = (thread / "children").read_text().split()
            except (OSError, IndexError, ValueError):
                continue  # This thread ended meanwhile.
            seconds[program] = seconds.get(program, 0.0) + runtime / 1e9
            runs[program] = runs.get(program, 0) + timeslices
            pending.extend(int(child) for child in children)
    return {program: (seconds[program], runs[program]) for program in seconds}


def handshaken_peers(socket_path: Path) -> int:
    """How many peers of the wireguard-go behind ``socket_path`` completed a handshake."""
    device = uapi_get(socket_path)
    return sum(1 for peer in device.peers.values() if peer.last_handshake is not None)


# The members of each system


class Member(Protocol):
    name: str
    process: MemberProcess

    def update(self) -> Deferred[tuple[int, float]]:
        """Change this member's record; fires with its new version and when it changed."""

    def poll(self) -> Deferred[None]:
        """Ask the member how it sees the cluster (for members that do not report)."""

    def stop(self) -> Deferred[None]: ...

    def mesh_reached(self) -> int | None:
        """Peers its mesh has completed a handshake with (None: it has no mesh)."""


class System(Protocol):
    @property
    def name(self) -> str: ...

    #: Whether members must be polled to learn what they see (they do not report it).
    polled: bool
    #: Whether members start with small records, to be grown to RECORD_SIZE after joining.
    small_records: bool

    def start(self, host: Host, anchor: Host, directory: Path) -> Member: ...


def _stop(reactor: Any, process: MemberProcess, grace: float = 15.0) -> Deferred[None]:
    """The process's end; SIGKILL if it lingers past ``grace`` seconds."""
    if process.running:
        killer = reactor.callLater(grace, process.signal, "KILL")
        process.ended.addBoth(lambda result: killer.active() and killer.cancel())
    ended: Deferred[None] = Deferred()
    process.ended.addBoth(lambda _: ended.callback(None))
    return ended


@attrs.define(eq=False)
class MemberlistMember:
    """A ``memberlist-bench`` process: it reports every change on its own, in JSON lines."""

    name: str
    observatory: Observatory
    reactor: Any
    process: MemberProcess = attrs.field(init=False)
    _updates: list[Deferred[tuple[int, float]]] = attrs.field(factory=list)

    def line(self, raw: bytes) -> None:
        try:
            event = json.loads(raw)
            kind, t = event["event"], float(event["t"])
        except (ValueError, KeyError, TypeError):
            log.warn("{name}: unreadable line {line!r}", name=self.name, line=raw[:200])
            return
        if kind in ("join", "update", "leave"):
            self.observatory.state(self.name, event["node"], event["state"], t)
        elif kind == "payload":
            self.observatory.holds(self.name, event["origin"], event["version"], t)
        elif kind == "ready":
            self.observatory.holds(self.name, self.name, event["version"], t)
        elif kind == "updated":
            self.observatory.holds(self.name, self.name, event["version"], t)
            if self._updates:
                self._updates.pop(0).callback((event["version"], t))
        elif kind == "log" and event["msg"].startswith("memberlist: Suspect "):
            # "Suspect NAME has failed, no acks received": a probe of ours raised it.
            self.observatory.suspect(self.name, event["msg"].split()[2], t)
        elif kind == "error":
            log.error("{name}: {error}", name=self.name, error=event.get("error"))

    def update(self) -> Deferred[tuple[int, float]]:
        done: Deferred[tuple[int, float]] = Deferred()
        self._updates.append(done)
        self.process.transport.write(b"update\n")  # type: ignore[union-attr]
        return done

    def poll(self) -> Deferred[None]:
        return defer.succeed(None)

    def mesh_reached(self) -> int | None:
        return None

    def stop(self) -> Deferred[None]:
        # End of input stops it at once, without a leave: as the harness dying would.
        if self.process.running:
            self.process.transport.closeStdin()  # type: ignore[union-attr]
        return _stop(self.reactor, self.process)


@attrs.define
class MemberlistSystem:
    """HashiCorp memberlist with ``DefaultLANConfig``, the program in benchmarks/memberlist."""

    binary: Path
    key: str
    observatory: Observatory
    reactor: Any
    chunks: bool = False
    polled: bool = False
    small_records: bool = False
    #: Members with a CPU of their own (``--own-core``): the others share another.
    own_core: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return "memberlist+chunks" if self.chunks else "memberlist"

    def start(self, host: Host, anchor: Host, directory: Path) -> Member:
        member = MemberlistMember(host.name, self.observatory, self.reactor)
        argv = [
            str(self.binary),
            f"-name={host.name}",
            f"-bind={host.address}",
            f"-port={PORT}",
            f"-key={self.key}",
            f"-label={CLUSTER}",
            f"-payload-size={RECORD_SIZE}",
        ]
        if self.chunks:
            argv.append("-chunks")
        if host is not anchor:
            argv.append(f"-join={anchor.address}")
        member.process = spawn(
            self.reactor,
            host,
            argv,
            directory / f"{host.name}.log",
            member.line,
            cpus=placement(self.own_core, host.name),
        )
        return member


class ControlLine(LineOnlyReceiver):
    """One request on a hepto control socket and its one-line JSON answer."""

    delimiter = b"\n"
    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request
        self.answer: Deferred[dict[str, Any]] = Deferred()

    def connectionMade(self) -> None:
        self.sendLine(json.dumps(self.request).encode())

    def lineReceived(self, line: bytes) -> None:
        if not self.answer.called:
            try:
                self.answer.callback(json.loads(line))
            except ValueError as error:
                self.answer.errback(error)
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not self.answer.called:
            self.answer.errback(reason)


async def control(reactor: Any, socket: Path, request: dict[str, Any]) -> dict[str, Any]:
    line = ControlLine(request)
    await connectProtocol(UNIXClientEndpoint(reactor, str(socket), timeout=10), line)
    answer = await line.answer
    if not isinstance(answer, dict):
        raise ValueError(f"not a JSON object: {answer!r}")
    return answer


@attrs.define(eq=False)
class HeptoMember:
    """A ``twistd -n hepto`` agent, asked through its control socket how it sees the cluster.

    Its JSON logs are read too: a log event naming a member and its new state or record
    version is taken as a report, stamped with the agent's own ``log_time``, which is
    sharper than the polling interval.
    """

    name: str
    observatory: Observatory
    reactor: Any
    data_dir: Path
    process: MemberProcess = attrs.field(init=False)
    unanswered: int = 0
    last_error: str | None = None
    _polling: bool = False
    _known: set[str] = attrs.field(factory=set)

    @property
    def socket(self) -> Path:
        return self.data_dir / CLUSTER / self.name / "control.sock"

    def line(self, raw: bytes) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            return
        if not isinstance(event, dict) or not str(event.get("log_namespace", "")).startswith(
            "hepto.gossip"
        ):
            return
        subject, t = event.get("member"), event.get("log_time")
        if not isinstance(subject, str) or not isinstance(t, float | int):
            return
        state = event.get("state", event.get("status"))
        if state in ("alive", "suspect", "dead", "left"):
            self.observatory.state(self.name, subject, state, t)
        version = event.get("version")
        if isinstance(version, int) and "record" in str(event.get("log_format", "")).lower():
            self.observatory.holds(self.name, subject, version, t)

    def poll(self) -> Deferred[None]:
        if self._polling or not self.process.running:
            return defer.succeed(None)
        return Deferred.fromCoroutine(self._poll())

    async def _poll(self) -> None:
        self._polling = True
        try:
            self._status(await control(self.reactor, self.socket, {"command": "status"}))
        except (ConnectError, ConnectionClosed, ValueError) as error:
            # Not up yet, or going: the next poll will tell.
            self.unanswered += 1
            self.last_error = str(error)
        finally:
            self._polling = False

    def _status(self, status: dict[str, Any]) -> None:
        t = time.time()
        if isinstance(status.get("health"), int):
            self.observatory.health[self.name] = status["health"]
        seen = set()
        for row in status.get("members", []):
            subject = row.get("name")
            if not isinstance(subject, str):
                continue
            seen.add(subject)
            if isinstance(row.get("state"), str):
                self.observatory.state(self.name, subject, row["state"], t)
            if isinstance(row.get("version"), int):
                self.observatory.holds(self.name, subject, row["version"], t)
        for subject in self._known - seen:
            self.observatory.state(self.name, subject, "gone", t)
        self._known = seen

    async def _update(self) -> tuple[int, float]:
        started = time.time()
        # What changes is what a real record change carries: text (a PEM bundle, a CSR).
        value = base64.b64encode(secrets.token_bytes(RECORD_SIZE * 3 // 4)).decode()
        answer = await control(
            self.reactor,
            self.socket,
            {"command": "publish", "key": PUBLISH_KEY, "value": value},
        )
        if "error" in answer:
            raise RuntimeError(f"publish refused: {answer['error']}")
        version = answer.get("version")
        if not isinstance(version, int):
            status = await control(self.reactor, self.socket, {"command": "status"})
            own = [row for row in status.get("members", []) if row.get("name") == self.name]
            version = own[0]["version"]
        return version, started

    def update(self) -> Deferred[tuple[int, float]]:
        return Deferred.fromCoroutine(self._update())

    def mesh_reached(self) -> int | None:
        try:
            return handshaken_peers(
                self.data_dir / CLUSTER / self.name / "wireguard" / "hepto0.sock"
            )
        except OSError:
            return 0  # wireguard-go not up yet

    def stop(self) -> Deferred[None]:
        self.process.signal("TERM")
        return _stop(self.reactor, self.process)


@attrs.define
class HeptoSystem:
    """Real hepto agents, without Kubernetes components, on the LAN profile."""

    key: str
    observatory: Observatory
    reactor: Any
    name: str = "hepto"
    polled: bool = True
    small_records: bool = True
    #: Another checkout of hepto to run instead of this one (``--tree``).
    tree: Path | None = None
    #: Members whose agent runs under cProfile (``--profile``): ``<name>.prof`` in the
    #: run's directory once it stops.
    profiled: frozenset[str] = frozenset()
    #: Members whose agent runs under ``benchmarks/cpusample.py`` (``--sample-cpu``):
    #: ``<name>.cpu`` in the run's directory.
    sampled: frozenset[str] = frozenset()
    #: Members profiled over each join's windows (``--profile-joins``).
    join_profiled: frozenset[str] = frozenset()
    #: How they are: "profile" (cProfile) or "turns" (``cpusample.py turns``).
    join_profiler: str = "profile"
    #: Members with a CPU of their own (``--own-core``): the others share another.
    own_core: frozenset[str] = frozenset()
    _compiled: bool = False

    def compile(self) -> None:
        """Write the tree's bytecode once, as installing hepto does (pip compiles what it
        installs): an editable checkout run where PYTHONDONTWRITEBYTECODE is set (as on
        the benchmark machines) compiles its hundred modules at every start instead,
        0.3 CPU-s that no installed agent pays (``docs/benchmarks.rst``)."""
        if self._compiled:
            return
        tree = self.tree if self.tree is not None else ROOT
        for package in ("hepto", "twisted/plugins"):
            compileall.compile_dir(str(tree / package), quiet=1)
        self._compiled = True

    def start(self, host: Host, anchor: Host, directory: Path) -> Member:
        self.compile()
        data_dir = directory / host.name
        data_dir.mkdir(parents=True, exist_ok=True)
        member = HeptoMember(host.name, self.observatory, self.reactor, data_dir)
        twistd = Path(sys.executable).with_name("twistd")
        profiler = []
        if host.name in self.profiled:
            profile = directory / f"{host.name}.prof"
            profiler = [sys.executable, "-m", "cProfile", "-o", str(profile)]
        elif host.name in self.join_profiled:
            profiler = [
                sys.executable,
                str(ROOT / "benchmarks" / "cpusample.py"),
                self.join_profiler,
                str(directory / host.name),
            ]
        elif host.name in self.sampled:
            samples = directory / f"{host.name}.cpu"
            profiler = [
                sys.executable,
                str(ROOT / "benchmarks" / "cpusample.py"),
                "run",
                str(samples),
            ]
        argv = [
            *profiler,
            str(twistd),
            "-n",
            "--pidfile=",
            "hepto",
            f"--cluster={CLUSTER}",
            f"--key={self.key}",
            f"--name={host.name}",
            "--no-contain",
            f"--ip={host.interface}",
            "--components=none",
            f"--data-dir={data_dir}",
            f"--anchor={anchor.address}",
            "--log-format=json",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEPTO_")}
        if self.tree is not None:
            env["PYTHONPATH"] = str(self.tree)
        member.process = spawn(
            self.reactor,
            host,
            argv,
            directory / f"{host.name}.log",
            member.line,
            env,
            cpus=placement(self.own_core, host.name),
        )
        return member


# Traffic: nftables counters in every namespace

METER: Final = f"""
table inet hbmeter {{
    counter udp_out {{}}
    counter udp_in {{}}
    counter tcp_out {{}}
    counter tcp_in {{}}
    counter other_udp_out {{}}
    counter other_udp_in {{}}
    chain out {{
        type filter hook output priority 0; policy accept;
        oifname "eth0" meta l4proto {{ udp, tcp }} th sport {PORT} jump gossip_out
        oifname "eth0" meta l4proto {{ udp, tcp }} th dport {PORT} jump gossip_out
        oifname "eth0" meta l4proto udp counter name other_udp_out
    }}
    chain gossip_out {{
        meta l4proto udp counter name udp_out accept
        meta l4proto tcp counter name tcp_out accept
    }}
    chain in {{
        # After netlab's loss rules (priority 0): what was dropped was never received.
        type filter hook input priority 10; policy accept;
        iifname "eth0" meta l4proto {{ udp, tcp }} th sport {PORT} jump gossip_in
        iifname "eth0" meta l4proto {{ udp, tcp }} th dport {PORT} jump gossip_in
        iifname "eth0" meta l4proto udp counter name other_udp_in
    }}
    chain gossip_in {{
        meta l4proto udp counter name udp_in accept
        meta l4proto tcp counter name tcp_in accept
    }}
}}
"""
#: The gossip counters count the gossip port only (both systems use :data:`PORT`, UDP and
#: TCP); ``other_udp`` is the rest of the UDP, which for hepto is its WireGuard mesh
#: (handshakes and keepalives of wireguard-go to every peer).


def install_meter(host: Host) -> None:
    subprocess.run(
        host.command(["nft", "-f", "-"]), input=METER, text=True, check=True, capture_output=True
    )


def read_meter(host: Host) -> dict[str, int]:
    """Bytes counted so far (IPv6 packets, headers included), by counter name, and
    packets, by counter name with ``_packets`` appended."""
    listing = host.run(["nft", "-j", "list", "counters", "table", "inet", "hbmeter"]).stdout
    counters = {}
    for item in json.loads(listing)["nftables"]:
        if "counter" in item:
            counter = item["counter"]
            counters[counter["name"]] = int(counter["bytes"])
            counters[counter["name"] + "_packets"] = int(counter["packets"])
    return counters


def on_every_host(hosts: Iterable[Host], action: Callable[[Host], Any]) -> list[Any]:
    """Run a blocking ``action`` on hosts in parallel (from a thread, never the reactor's)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(action, hosts))


# One system, one cluster size


@attrs.define
class Settings:
    sizes: list[int]
    systems: list[str]
    window: float
    settle: float
    changes: int
    loss: int
    loss_duration: float
    join_timeout: float
    spread_timeout: float
    death_timeout: float
    kills: int
    waves: int
    poll: float
    poll_fast: float
    run_dir: Path
    prefix: str
    #: Systems that run hepto from another checkout, by name.
    trees: dict[str, Path] = attrs.field(factory=dict)
    #: Members that join, one at a time, once the others are up and quiet (0: the
    #: usual scenarios instead).
    one_more: int = 0
    #: Seconds from a joiner's start over which the members' CPU for its join is
    #: counted (0: until the last of (a), (b), (c)).  A join's work goes on after (c)
    #: (the last retransmissions, a late greeting, the keepalives dropped), so a window
    #: that ends at (c) counts more of it when (c) comes later.
    cpu_window: float = 0.0
    #: hepto members run under cProfile, and under the CPU sampler.
    profiled: frozenset[str] = frozenset()
    sampled: frozenset[str] = frozenset()
    #: hepto members profiled over each join's quiet sample and as long from its start.
    join_profiled: frozenset[str] = frozenset()
    #: How: "profile" (cProfile) or "turns" (``cpusample.py turns``).
    join_profiler: str = "profile"
    #: Members that run on a CPU of their own while all others share the other one, as
    #: members on hosts of their own would not share caches (``--own-core``).
    own_core: frozenset[str] = frozenset()


@attrs.define
class Bench:
    """Runs the scenarios for one system on one lab, and collects the figures."""

    reactor: Any
    system: System
    observatory: Observatory
    lab: Lab
    settings: Settings
    directory: Path
    members: dict[str, Member] = attrs.field(factory=dict)
    figures: dict[str, Any] = attrs.field(factory=dict)
    _poller: task.LoopingCall | None = None
    _stopping: bool = False

    @property
    def hosts(self) -> list[Host]:
        """The members' hosts; the lab's last ``--one-more`` hosts are the joiners'."""
        return self.lab.hosts[: len(self.lab.hosts) - self.settings.one_more]

    @property
    def joiners(self) -> list[Host]:
        return self.lab.hosts[len(self.hosts) :]

    def observe(self, interval: float | None) -> None:
        """Poll the members every ``interval`` seconds (None: stop); reporting systems need not."""
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        self._poller = None
        if interval is not None and self.system.polled:
            self._poller = task.LoopingCall(self._poll_all)
            self._poller.clock = self.reactor
            self._poller.start(interval, now=True)

    def _poll_all(self) -> None:
        for member in self.members.values():
            member.poll()

    def everyone_sees_everyone(self) -> bool:
        names = set(self.members)
        return all(
            all(self.observatory.states.get(observer, {}).get(n) == "alive" for n in names)
            for observer in names
        )

    async def sleep(self, seconds: float) -> None:
        await task.deferLater(self.reactor, seconds, lambda: None)

    async def run(self) -> dict[str, Any]:
        # The machine is shared: the load during each phase says how far to trust it.
        loads: list[tuple[float, float]] = []
        busy: list[tuple[float, float]] = []
        cpu = CpuMeter()

        def sample() -> None:
            loads.append((time.time(), os.getloadavg()[0]))
            busy.append((time.time(), cpu.busy()))

        sampler = task.LoopingCall(sample)
        sampler.clock = self.reactor
        sampler.start(5, now=True)
        phases: dict[str, tuple[float, float]] = {}

        async def phase(name: str, step: Callable[[], Awaitable[Any]]) -> Any:
            started = time.time()
            try:
                return await step()
            finally:
                phases[name] = (started, time.time())

        try:
            await self.start_all()
            if self.settings.one_more:
                if await phase("join", lambda: self.converge("join", self.settings.join_timeout)):
                    await phase("grow", self.grow_records)
                    await phase("one_more", self.join_one_by_one)
            elif await phase("join", lambda: self.converge("join", self.settings.join_timeout)):
                await phase("grow", self.grow_records)
                await self.sleep(self.settings.settle)
                await phase("window", self.measure_quiet_window)
                await phase("spread", self.spread)
                await phase("loss", self.lossy_run)
                await phase("kill", self.kill)
            else:
                await phase("window", self.measure_quiet_window)
        finally:
            sampler.stop()
            self.observe(None)
            self._stopping = True
            await defer.DeferredList([member.stop() for member in self.members.values()])
            self.figures["load"] = {
                name: {
                    "median": median([load for t, load in loads if start <= t <= end]),
                    "max": max((load for t, load in loads if start <= t <= end), default=None),
                }
                for name, (start, end) in phases.items()
            }
            # The load average counts runnable threads, and 100 wireguard-go processes
            # wake many at once: how busy the cores were is the figure to trust.
            self.figures["cpu_busy"] = {
                name: {
                    "median": median([share for t, share in busy if start <= t <= end]),
                    "max": max((share for t, share in busy if start <= t <= end), default=None),
                }
                for name, (start, end) in phases.items()
            }
        return self.figures

    async def start_all(self) -> None:
        """Start every member; in waves of ``--waves`` when given.

        Each wave waits until the members started so far all see each other alive, so that a
        small machine never has more than one wave of agents starting at once (100 Python
        agents started together saturate two cores for minutes). The join figure then counts
        from the first start, waves included.
        """
        anchor = self.hosts[0]
        self.figures["started"] = time.time()
        size = self.settings.waves or len(self.hosts)
        self.figures["waves"] = self.settings.waves
        for first in range(0, len(self.hosts), size):
            for host in self.hosts[first : first + size]:
                member = self.members[host.name] = self.system.start(host, anchor, self.directory)
                member.process.ended.addCallback(self._ended, host.name)
            if first + size < len(self.hosts):
                self.observe(self.settings.poll)
                await wait(
                    self.observatory.when(self.everyone_sees_everyone),
                    self.settings.join_timeout,
                    self.reactor,
                )
                self.observe(None)

    def _ended(self, result: None, name: str) -> None:
        """A member's process ended; unless it was killed or stopped, it crashed."""
        if self.members.pop(name, None) is None or self._stopping:
            return
        log.warn("{system}: {name} ended on its own", system=self.system.name, name=name)
        self.figures.setdefault("crashed", []).append(name)
        # The others will declare it dead: whatever waits on them must not wait on it.
        self.observatory.forget(name)

    async def converge(self, phase: str, timeout: float) -> bool:
        # A join counts from the first member's start, waves included.
        started = self.figures["started"] if phase == "join" else time.time()
        self.observe(self.settings.poll)
        done = await wait(self.observatory.when(self.everyone_sees_everyone), timeout, self.reactor)
        self.observe(None)
        self.figures[f"{phase}_converged"] = done
        self.figures[f"{phase}_seconds"] = time.time() - started if done else None
        if not done:
            seeing = [
                sum(state == "alive" for state in self.observatory.states.get(name, {}).values())
                for name in self.members
            ]
            self.figures[f"{phase}_alive_seen_median"] = median(seeing)
            log.warn(
                "{system}: members still disagree after {timeout}s ({phase}): "
                "a median member sees {seen} of {n} alive",
                system=self.system.name,
                timeout=timeout,
                phase=phase,
                seen=median(seeing),
                n=len(self.members),
            )
        return done

    async def grow_records(self) -> None:
        """Give every member a RECORD_SIZE record, as memberlist members have from the start.

        Otherwise the quiet window would compare push/pulls of N small records with push/pulls
        of N large ones.
        """
        if not self.system.small_records:
            return
        started = time.time()
        versions = {}
        for name, member in self.members.items():
            try:
                versions[name], _ = await member.update()
            except Exception as error:
                self.figures["grow_error"] = str(error)
                return
        names = list(self.members)

        def everyone_holds_everything() -> bool:
            return all(
                self.observatory.first_held(observer, origin, version) is not None
                for observer in names
                for origin, version in versions.items()
            )

        self.observe(self.settings.poll)
        done = await wait(
            self.observatory.when(everyone_holds_everything),
            self.settings.spread_timeout,
            self.reactor,
        )
        self.observe(None)
        self.figures["grow_seconds"] = time.time() - started if done else None

    async def join_one_by_one(self) -> None:
        """Each joiner in turn joins the members, up and quiet: (a) until it sees them all
        alive and holds their newest records, (b) until they all see it alive, (c) until
        its mesh has a handshake with each; the CPU it took to (a), and what the joining
        cost each member beyond its idle CPU."""
        joins = []
        for index, host in enumerate(self.joiners):
            settle = self.settings.settle
            await self.sleep(max(settle, FIRST_SETTLE) if index == 0 else settle)
            joins.append(await self.join_one(host))
        self.figures["one_more"] = joins
        for key in ("sees_all", "seen_by_all", "mesh_all", "joiner_cpu"):
            self.figures[f"one_more_{key}"] = median(
                [join[key] for join in joins if join[key] is not None]
            )
        self.figures["one_more_member_cpu_ms"] = median(
            [join["member_cpu_ms"]["median"] for join in joins if join["member_cpu_ms"]]
        )
        self.figures["one_more_member_datagrams"] = median(
            [join["member_datagrams"]["mean"] for join in joins if join.get("member_datagrams")]
        )
        self.figures["one_more_member_idle_cpu"] = median(
            [join["member_idle"]["cpu_ms_per_s"] for join in joins if "member_idle" in join]
        )
        self.figures["one_more_member_cpu_mean_ms"] = median(
            [
                join["member_cpu_ms"]["mean"]
                for join in joins
                if join["member_cpu_ms"] and join["member_cpu_ms"].get("mean") is not None
            ]
        )

    async def join_one(self, host: Host) -> dict[str, Any]:
        name, members = host.name, dict(self.members)
        pids = {other: m.process.pid for other, m in members.items() if m.process.pid}
        # Datagrams are counted over the idle sample and over the join and its
        # measurement (nft runs outside the members' process trees, between the windows).
        metered = [other for other in self.hosts if other.name in members]
        sent_at = [time.monotonic()]
        sent = [await threads.deferToThread(on_every_host, metered, read_meter)]
        # What the members burn anyway, over a window as long as the settle pause.
        profiled = [p for n, p in pids.items() if n in self.settings.join_profiled]
        idle_from = {n: tree_schedstat(p) for n, p in pids.items()}
        idle_started = time.monotonic()
        signal_all(profiled, signal.SIGUSR1)
        await self.sleep(IDLE_SAMPLE)
        signal_all(profiled, signal.SIGUSR2)
        idle_to = {n: tree_schedstat(p) for n, p in pids.items()}
        idle_span = time.monotonic() - idle_started
        # What ended children used is no rate: a worker that ended during the sample
        # burns nothing more.
        idle_rate = {
            n: {
                k: (v - idle_from[n].get(k, (0.0, 0))[0]) / idle_span
                for k, (v, _) in idle_to[n].items()
                if k != ENDED_CHILDREN
            }
            for n in pids
        }
        idle_runs = {
            n: {
                k: (r - idle_from[n].get(k, (0.0, 0))[1]) / idle_span
                for k, (_, r) in idle_to[n].items()
            }
            for n in pids
        }
        sent_at.append(time.monotonic())
        sent.append(await threads.deferToThread(on_every_host, metered, read_meter))
        newest = {other: self.observatory.newest(other) for other in members}
        before_runs = {n: tree_schedstat(p) for n, p in pids.items()}
        before = {n: {k: cpu for k, (cpu, _) in v.items()} for n, v in before_runs.items()}
        started, clock = time.time(), time.monotonic()
        signal_all(profiled, signal.SIGUSR1)
        # As long as the quiet sample, whatever the waits below take.
        self.reactor.callLater(IDLE_SAMPLE, signal_all, profiled, signal.SIGUSR2)
        member = self.members[name] = self.system.start(host, self.hosts[0], self.directory)
        member.process.ended.addCallback(self._ended, name)
        figures: dict[str, Any] = {"name": name, "members": len(members)}

        def sees_all() -> bool:
            view = self.observatory.states.get(name, {})
            return all(
                view.get(other) == "alive"
                and (
                    newest[other] is None
                    or self.observatory.first_held(name, other, newest[other]) is not None
                )
                for other in members
            )

        def seen_by_all() -> bool:
            return all(
                self.observatory.states.get(other, {}).get(name) == "alive" for other in members
            )

        def stamp(key: str) -> None:
            figures[key] = time.time() - started
            if key == "sees_all" and member.process.pid:
                programs = tree_cpu_by_program(member.process.pid)
                figures["joiner_cpu"] = sum(programs.values())
                figures["joiner_cpu_by_program"] = programs

        async def mesh() -> None:
            if member.mesh_reached() is None:
                return
            while time.monotonic() - clock < self.settings.join_timeout:
                reached = await threads.deferToThread(member.mesh_reached)
                if reached is not None and reached >= len(members):
                    figures["mesh_all"] = time.time() - started
                    return
                await self.sleep(MESH_POLL)

        figures.update(sees_all=None, seen_by_all=None, mesh_all=None, joiner_cpu=None)
        # Members report through their logs (hepto's debug events say each change of
        # state and record); only the joiner is polled besides, so that the members' CPU
        # is not spent answering the harness.
        poller = task.LoopingCall(member.poll)
        poller.clock = self.reactor
        poller.start(self.settings.poll, now=False)
        waits = [
            wait(
                self.observatory.when(sees_all), self.settings.join_timeout, self.reactor
            ).addCallback(lambda done: done and stamp("sees_all")),
            wait(
                self.observatory.when(seen_by_all), self.settings.join_timeout, self.reactor
            ).addCallback(lambda done: done and stamp("seen_by_all")),
            Deferred.fromCoroutine(mesh()),
        ]
        await defer.gatherResults(waits)
        poller.stop()
        remaining = clock + self.settings.cpu_window - time.monotonic()
        if remaining > 0:
            await self.sleep(remaining)
        elapsed = time.monotonic() - clock
        # Each member's CPU beyond its idle rate, in ms, by program (the agent, its
        # wireguard-go, workers that ended).
        by_program: dict[str, list[float]] = {}
        extra, extra_runs = [], []
        runs_by_program: dict[str, list[float]] = {}
        # Members on a CPU of their own, each apart: what one costs on a host of its own.
        figures["own_core_cpu_ms"] = {}
        for n, p in pids.items():
            after_runs = tree_schedstat(p)
            after = {k: cpu for k, (cpu, _) in after_runs.items()}
            mine = {
                k: (v - before[n].get(k, 0.0) - idle_rate[n].get(k, 0.0) * elapsed) * 1000
                for k, v in after.items()
            }
            extra.append(sum(mine.values()))
            if n in self.settings.own_core:
                figures["own_core_cpu_ms"][n] = mine
            runs = {
                k: r - before_runs[n].get(k, (0.0, 0))[1] - idle_runs[n].get(k, 0.0) * elapsed
                for k, (_, r) in after_runs.items()
            }
            extra_runs.append(sum(runs.values()))
            for k, v in runs.items():
                runs_by_program.setdefault(k, []).append(v)
            for k, v in mine.items():
                by_program.setdefault(k, []).append(v)
        figures["window"] = elapsed
        figures["member_cpu_ms"] = {
            "median": median(extra),
            "mean": sum(extra) / len(extra) if extra else None,
            "max": max(extra, default=None),
            "mean_by_program": {k: sum(v) / len(pids) for k, v in by_program.items()},
        }
        # A quiet member's cost, and a join's in wakeups: on a crowded machine a wakeup
        # costs more than the work it does (docs/benchmarks.rst).
        figures["member_idle"] = {
            "cpu_ms_per_s": median([1000 * sum(rate.values()) for rate in idle_rate.values()]),
            "runs_per_s": median([sum(rate.values()) for rate in idle_runs.values()]),
            "runs_per_s_by_program": {
                program: median([rate.get(program, 0.0) for rate in idle_runs.values()])
                for program in sorted({k for rate in idle_runs.values() for k in rate})
            },
        }
        figures["member_runs"] = {
            "median": median(extra_runs),
            "mean": sum(extra_runs) / len(extra_runs) if extra_runs else None,
            "median_by_program": {k: median(v) for k, v in runs_by_program.items()},
        }
        sent_at.append(time.monotonic())
        sent.append(await threads.deferToThread(on_every_host, metered, read_meter))
        meter_span, join_span = sent_at[1] - sent_at[0], sent_at[2] - sent_at[1]
        datagrams = [
            (during["udp_out_packets"] - before_join["udp_out_packets"])
            - (before_join["udp_out_packets"] - idle["udp_out_packets"]) / meter_span * join_span
            for idle, before_join, during in zip(*sent, strict=True)
        ]
        figures["member_datagrams"] = {
            "median": median(datagrams),
            "mean": sum(datagrams) / len(datagrams) if datagrams else None,
        }
        log.info(
            "{system}: {name} joined {n}: {figures}",
            system=self.system.name,
            name=name,
            n=len(members),
            figures=json.dumps(figures),
        )
        return figures

    async def measure_quiet_window(self) -> None:
        """Traffic, CPU and memory over a window in which nothing happens (and nobody polls)."""
        pids = {name: m.process.pid for name, m in self.members.items()}
        before_usage = {name: Usage.of(pid) for name, pid in pids.items() if pid}
        before = await threads.deferToThread(on_every_host, self.hosts, read_meter)
        started = time.monotonic()
        await self.sleep(self.settings.window)
        after = await threads.deferToThread(on_every_host, self.hosts, read_meter)
        elapsed = time.monotonic() - started
        after_usage = {name: Usage.of(pid) for name, pid in pids.items() if pid}
        for counter in ("udp_out", "udp_in", "tcp_out", "tcp_in", "other_udp_out"):
            rates = [
                (a[counter] - b[counter]) / elapsed for a, b in zip(after, before, strict=True)
            ]
            self.figures[f"{counter}_rate"] = {"median": median(rates), "max": max(rates)}
        datagrams_in = {
            host.name: a["udp_in_packets"] - b["udp_in_packets"]
            for host, a, b in zip(self.hosts, after, before, strict=True)
        }
        self.figures["udp_in_packet_rate"] = {
            "median": median([count / elapsed for count in datagrams_in.values()])
        }
        cpu = []
        per_datagram = []
        rss = []
        peak = []
        for name, end in after_usage.items():
            begin = before_usage.get(name)
            if end is None or begin is None:
                continue
            cpu.append(100 * (end.cpu - begin.cpu) / elapsed)
            if datagrams_in.get(name):
                # All of the member's CPU, probing and gossiping included, per datagram in.
                per_datagram.append(1e6 * (end.cpu - begin.cpu) / datagrams_in[name])
            rss.append(end.rss / 2**20)
            peak.append(end.peak_rss / 2**20)
        self.figures["cpu_percent"] = {"median": median(cpu), "max": max(cpu, default=None)}
        self.figures["cpu_us_per_datagram_in"] = {"median": median(per_datagram)}
        self.figures["rss_mib"] = {"median": median(rss), "max": max(rss, default=None)}
        self.figures["rss_top_mib"] = sorted(
            ((end.rss / 2**20, name) for name, end in after_usage.items() if end is not None),
            reverse=True,
        )[:3]
        self.figures["peak_rss_mib"] = max(peak, default=None)
        self.figures["window_seconds"] = elapsed

    async def spread(self) -> None:
        """Change one record at a time; how long until every other member holds it."""
        delays: list[float] = []
        missing = 0
        names = list(self.members)
        for change in range(self.settings.changes):
            origin = names[(change + 1) % len(names)]
            try:
                version, changed = await self.members[origin].update()
            except Exception as error:
                self.figures["spread_error"] = str(error)
                log.warn(
                    "{system}: cannot change a record: {error}",
                    error=error,
                    system=self.system.name,
                )
                return
            others = [name for name in names if name != origin]

            def everyone_holds(
                origin: str = origin, version: int = version, others: list[str] = others
            ) -> bool:
                return all(
                    self.observatory.first_held(name, origin, version) is not None
                    for name in others
                )

            self.observe(self.settings.poll_fast)
            await wait(
                self.observatory.when(everyone_holds), self.settings.spread_timeout, self.reactor
            )
            self.observe(None)
            for name in others:
                held = self.observatory.first_held(name, origin, version)
                if held is None:
                    missing += 1
                else:
                    delays.append(max(0.0, held - changed))
            # Let the queues drain, so that one change does not ride on the last one's traffic.
            await self.sleep(self.settings.settle)
        self.figures["spread"] = summary(delays) | {"missing": missing}

    async def lossy_run(self) -> None:
        """Drop a share of every host's incoming packets; count deaths of living members."""
        if self.settings.loss_duration <= 0:
            return
        loss = self.settings.loss
        await threads.deferToThread(on_every_host, self.hosts, lambda host: host.set_loss(loss))
        started = time.time()
        suspicions_before = len(self.observatory.suspicions)
        self.observe(self.settings.poll)
        try:
            await self.sleep(self.settings.loss_duration)
        finally:
            self.observe(None)
            ended = time.time()
            await threads.deferToThread(on_every_host, self.hosts, lambda host: host.heal())
        deaths = self.observatory.deaths_between(started, ended)
        self.figures["false_deaths"] = {
            # Distinct pairs: a state seen twice (in a log line, then in a poll) is one death.
            "declarations": len({(report.observer, report.subject) for report in deaths}),
            "members": len({report.subject for report in deaths}),
            "suspicions": len(self.observatory.suspicions) - suspicions_before,
            "seconds": ended - started,
            "loss_percent": loss,
        }
        await self.converge("recovery", self.settings.join_timeout)

    async def kill(self) -> None:
        """SIGKILL members one after the other, from the last; time their burials."""
        delays: list[float] = []
        burials: list[float] = []
        stages: list[dict[str, float | None]] = []
        missing = 0
        for victim in [host.name for host in reversed(self.hosts)][: self.settings.kills]:
            if len(self.members) <= 2:
                break
            unhealthy = await self.unhealthy()
            outcome = await self.kill_one(victim)
            if outcome is None:
                break
            killed, declared = outcome
            delays += declared
            missing += len(self.members) - len(declared)
            if len(declared) == len(self.members):
                burials.append(max(declared))
            stages.append(self.stages_of_death(victim, killed, declared) | unhealthy)
            await self.sleep(self.settings.settle)
        self.figures["detection"] = summary(delays) | {
            "missing": missing,
            "kills": len(burials),
            "by_all_median": median(burials),
            "by_all_max": max(burials, default=None),
            "stages": stages,
            **{
                f"{stage}_median": median([s[stage] for s in stages if s[stage] is not None])
                for stage in (*STAGES_OF_DEATH, "unhealthy")
            },
        }

    async def unhealthy(self) -> dict[str, float | None]:
        """How many members probe slower than at full health (Lifeguard), right now;
        None for systems that do not tell."""
        self.observatory.health.clear()
        await defer.gatherResults([member.poll() for member in self.members.values()])
        scores = self.observatory.health.values()
        if not scores:
            return {"unhealthy": None}
        return {"unhealthy": sum(score > 0 for score in scores)}

    def stages_of_death(
        self, victim: str, killed: float, declared: list[float]
    ) -> dict[str, float | None]:
        """Where the time from a kill to its last declaration went: until the first
        suspicion (a probe of the victim failed), from there to the first declaration
        (the suspicion timeout), and from there until every survivor knew (gossip)."""
        suspected = [
            r.t for r in self.observatory.suspicions if r.subject == victim and r.t >= killed
        ]
        first_suspicion = min(suspected) - killed if suspected else None
        first, last = min(declared, default=None), max(declared, default=None)
        return {
            "killed": killed,
            "suspected": first_suspicion,
            "timed_out": None
            if first is None or first_suspicion is None
            else first - first_suspicion,
            "spread": None if first is None or last is None else last - first,
        }

    async def kill_one(self, victim: str) -> tuple[float, list[float]] | None:
        """When ``victim`` got its SIGKILL, and how long after it each survivor declared
        it dead (None: no kill)."""
        survivors = [name for name in self.members if name != victim]

        def everyone_buried() -> bool:
            return all(
                self.observatory.states.get(name, {}).get(victim) in DEAD_STATES
                for name in survivors
            )

        if everyone_buried():  # Leftovers of the lossy run would make this meaningless.
            self.figures["detection_error"] = f"{victim} declared dead before its kill"
            return None
        member = self.members.pop(victim)
        killed = time.time()
        member.process.signal("KILL")
        self.observatory.forget(victim)
        self.observe(self.settings.poll_fast)
        await wait(
            self.observatory.when(everyone_buried), self.settings.death_timeout, self.reactor
        )
        self.observe(None)
        await member.stop()
        delays = []
        for name in survivors:
            declared = [
                r.t
                for r in self.observatory.deaths
                if r.observer == name and r.subject == victim and r.t >= killed
            ]
            if declared:
                delays.append(min(declared) - killed)
        return killed, delays


class CpuMeter:
    """How busy the machine's cores were since the last call, in % of all of them."""

    def __init__(self) -> None:
        self._last = self._times()

    @staticmethod
    def _times() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(field) for field in stat.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle, iowait
        return sum(fields), idle

    def busy(self) -> float:
        total, idle = self._times()
        last_total, last_idle = self._last
        self._last = (total, idle)
        elapsed = total - last_total
        return 0.0 if elapsed <= 0 else 100 * (1 - (idle - last_idle) / elapsed)


def summary(delays: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "median": median(delays),
        "p99": percentile(delays, 0.99),
        "max": max(delays, default=None),
        "count": len(delays),
    }


# The run


def build_memberlist() -> Path:
    """Build benchmarks/memberlist with the module proxy, caches shared with tools/build-bundle."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    output = CACHE / "benchmarks" / "memberlist-bench"
    output.parent.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        GOCACHE=str(CACHE / "go" / "build"),
        GOMODCACHE=str(CACHE / "go" / "mod"),
        GOFLAGS="-mod=mod",
        GOWORK="off",
        CGO_ENABLED="0",
    )
    subprocess.run(
        [go, "build", "-trimpath", "-o", str(output), "."],
        cwd=ROOT / "benchmarks" / "memberlist",
        env=env,
        check=True,
    )
    return output


def add_hosts(lab: Lab, count: int) -> None:
    for index in range(1, count + 1):
        lab.add_host(f"n{index}")


def kill_leftovers(host: Host) -> None:
    """SIGKILL whatever still runs in the host's namespace (a member's stray child)."""
    pids = subprocess.run(
        ["ip", "netns", "pids", host.netns], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def remove_leftovers(prefix: str) -> int:
    """Delete every namespace named ``prefix...`` after killing what runs in it."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    names = [line.split()[0] for line in listing.stdout.splitlines() if line.startswith(prefix)]
    for name in names:
        pids = subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", name], check=False)
    print(f"removed {len(names)} namespace(s) named {prefix}*", file=sys.stderr)
    return 0


def signal_all(pids: Sequence[int], signum: int) -> None:
    """Send ``signum`` to each of ``pids`` that still runs."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def make_system(
    name: str,
    key: str,
    observatory: Observatory,
    reactor: Any,
    memberlist: Path | None,
    trees: Mapping[str, Path],
    profiled: frozenset[str] = frozenset(),
    sampled: frozenset[str] = frozenset(),
    join_profiled: frozenset[str] = frozenset(),
    join_profiler: str = "profile",
    own_core: frozenset[str] = frozenset(),
) -> System:
    if name == "hepto" or name in trees:
        return HeptoSystem(
            key,
            observatory,
            reactor,
            name=name,
            tree=trees.get(name),
            profiled=profiled,
            sampled=sampled,
            join_profiled=join_profiled,
            join_profiler=join_profiler,
            own_core=own_core,
        )
    assert memberlist is not None
    return MemberlistSystem(
        memberlist,
        key,
        observatory,
        reactor,
        chunks=name == "memberlist+chunks",
        own_core=own_core,
    )


async def run(
    reactor: Any,
    settings: Settings,
    labs: list[Lab],
    results: dict[str, dict[int, Any]],
    memberlist: Path | None,
) -> None:
    """Every size, every system; ``results`` fills as figures come, for an interrupted run."""
    key = secrets.token_hex(32)
    for size in settings.sizes:
        lab = Lab(settings.prefix)
        labs.append(lab)
        started = time.monotonic()
        await threads.deferToThread(add_hosts, lab, size + settings.one_more)
        await threads.deferToThread(on_every_host, lab.hosts, install_meter)
        log.info("{n} hosts ready in {s:.1f}s", n=size, s=time.monotonic() - started)
        for name in settings.systems:
            observatory = Observatory()
            system = make_system(
                name,
                key,
                observatory,
                reactor,
                memberlist,
                settings.trees,
                settings.profiled,
                settings.sampled,
                settings.join_profiled,
                settings.join_profiler,
                settings.own_core,
            )
            directory = settings.run_dir / f"{name}-{size}"
            directory.mkdir(parents=True, exist_ok=True)
            log.info(
                "{system} with {n} members: logs in {directory}",
                system=name,
                n=size,
                directory=directory,
            )
            bench = Bench(reactor, system, observatory, lab, settings, directory)
            results.setdefault(name, {})[size] = bench.figures
            await bench.run()
            bench.figures["load_average"] = os.getloadavg()
            # Saved after every system: a run cut short keeps what it measured.
            save(settings.run_dir / "results.json", results)
            log.info(
                "{system} {n}: {figures}",
                system=name,
                n=size,
                figures=json.dumps(results[name][size]),
            )
            # Whatever a member left behind (a child, a socket) goes before the next system.
            await threads.deferToThread(on_every_host, lab.hosts, kill_leftovers)
        await threads.deferToThread(lab.close)
        labs.remove(lab)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


#: The detection figures' rows in the table, and their keys in ``results.json``; the
#: indented ones split *dead by all* into its stages.
DETECTION_ROWS: Final = (
    ("kill -9 to dead, median (s)", "median"),
    ("kill -9 to dead, p99 (s)", "p99"),
    ("kill -9 to dead by all, median (s)", "by_all_median"),
    ("kill -9 to dead by all, max (s)", "by_all_max"),
    ("  kill to first suspicion, median (s)", "suspected_median"),
    ("  first suspicion to first dead, median (s)", "timed_out_median"),
    ("  first dead to dead by all, median (s)", "spread_median"),
    ("  members in poor health at a kill, median", "unhealthy_median"),
)


def table(results: dict[str, dict[int, Any]]) -> str:
    """The figures as an RST grid: one column per system and size."""
    columns = [(name, size) for name, sizes in results.items() for size in sizes]
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("join: all see all alive (s)", lambda f: _fmt(f.get("join_seconds"), 1)),
        ("members that crashed", lambda f: _fmt(len(f.get("crashed", [])))),
        ("one more: it sees all, records (s)", lambda f: _fmt(f.get("one_more_sees_all"))),
        ("one more: all see it alive (s)", lambda f: _fmt(f.get("one_more_seen_by_all"))),
        ("one more: mesh to all (s)", lambda f: _fmt(f.get("one_more_mesh_all"))),
        ("one more: its CPU to (a) (s)", lambda f: _fmt(f.get("one_more_joiner_cpu"))),
        ("one more: CPU per member (ms)", lambda f: _fmt(f.get("one_more_member_cpu_ms"), 1)),
        (
            "one more: mean CPU per member (ms)",
            lambda f: _fmt(f.get("one_more_member_cpu_mean_ms"), 1),
        ),
        (
            "one more: a quiet member's CPU (ms/s)",
            lambda f: _fmt(f.get("one_more_member_idle_cpu"), 2),
        ),
        (
            "one more: gossip datagrams sent per member",
            lambda f: _fmt(f.get("one_more_member_datagrams"), 1),
        ),
        ("record spread median (s)", lambda f: _fmt(f.get("spread", {}).get("median"))),
        ("record spread p99 (s)", lambda f: _fmt(f.get("spread", {}).get("p99"))),
        ("record spread: not reached", lambda f: _fmt(f.get("spread", {}).get("missing"))),
        *[
            (label, lambda f, key=key: _fmt(f.get("detection", {}).get(key)))
            for label, key in DETECTION_ROWS
        ],
        (
            "false deaths (declarations)",
            lambda f: _fmt(f.get("false_deaths", {}).get("declarations")),
        ),
        ("false deaths (members)", lambda f: _fmt(f.get("false_deaths", {}).get("members"))),
        ("suspicions (see README)", lambda f: _fmt(f.get("false_deaths", {}).get("suspicions"))),
        ("lossy run (s)", lambda f: _fmt(f.get("false_deaths", {}).get("seconds"), 0)),
        ("UDP out, B/s per member", lambda f: _fmt(f.get("udp_out_rate", {}).get("median"), 0)),
        (
            "other UDP out (hepto: WireGuard), B/s",
            lambda f: _fmt(f.get("other_udp_out_rate", {}).get("median"), 0),
        ),
        ("UDP in, B/s per member", lambda f: _fmt(f.get("udp_in_rate", {}).get("median"), 0)),
        (
            "UDP in, datagrams/s per member",
            lambda f: _fmt(f.get("udp_in_packet_rate", {}).get("median"), 1),
        ),
        ("TCP out, B/s per member", lambda f: _fmt(f.get("tcp_out_rate", {}).get("median"), 0)),
        ("RSS median (MiB)", lambda f: _fmt(f.get("rss_mib", {}).get("median"), 1)),
        ("RSS max (MiB)", lambda f: _fmt(f.get("rss_mib", {}).get("max"), 1)),
        ("CPU median (% of a core)", lambda f: _fmt(f.get("cpu_percent", {}).get("median"), 1)),
        ("CPU max (% of a core)", lambda f: _fmt(f.get("cpu_percent", {}).get("max"), 1)),
        (
            "CPU per datagram in (µs), median",
            lambda f: _fmt(f.get("cpu_us_per_datagram_in", {}).get("median"), 0),
        ),
        (
            "machine load in window, max",
            lambda f: _fmt(f.get("load", {}).get("window", {}).get("max"), 1),
        ),
        (
            "machine load in loss run, max",
            lambda f: _fmt(f.get("load", {}).get("loss", {}).get("max"), 1),
        ),
        *[
            (
                f"cores busy in {phase} (%), median",
                lambda f, phase=phase: _fmt(f.get("cpu_busy", {}).get(phase, {}).get("median"), 0),
            )
            for phase in ("join", "window", "spread", "loss", "kill")
        ],
    ]
    header = ["figure", *[f"{name} {size}" for name, size in columns]]
    body = [[label, *[cell(results[n][s]) for n, s in columns]] for label, cell in rows]
    # A run of one scenario leaves the others' rows empty.
    body = [row for row in body if any(value != "-" for value in row[1:])] or body
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {c:<{w}} " for c, w in zip(cells, widths, strict=True)) + "|"

    lines = [
        rule,
        line(header),
        rule.replace("-", "="),
        *[x for r in body for x in (line(r), rule)],
    ]
    return "\n".join(lines)


def save(path: Path, results: dict[str, dict[int, Any]]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=2))
    temporary.replace(path)


def merged(paths: Sequence[Path]) -> dict[str, dict[int, Any]]:
    """The results of several runs in one; a later file wins for the same system and size."""
    results: dict[str, dict[int, Any]] = {}
    for path in paths:
        for system, sizes in json.loads(path.read_text()).items():
            for size, figures in sizes.items():
                results.setdefault(system, {})[int(size)] = figures
    for system in results:
        results[system] = dict(sorted(results[system].items()))
    return results


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,50,100", help="cluster sizes (default: %(default)s)")
    parser.add_argument(
        "--systems",
        default="memberlist,memberlist+chunks,hepto",
        help="any of memberlist, memberlist+chunks, hepto (default: %(default)s)",
    )
    parser.add_argument(
        "--window", type=float, default=90, help="quiet window, s (default: %(default)s)"
    )
    parser.add_argument(
        "--settle", type=float, default=10, help="pause after join and each change, s"
    )
    parser.add_argument(
        "--changes", type=int, default=3, help="record changes to time (default: 3)"
    )
    parser.add_argument(
        "--loss", type=int, default=10, help="percent of packets dropped (default: 10)"
    )
    parser.add_argument(
        "--loss-duration", type=float, default=600, help="lossy run, s; 0 skips it (default: 600)"
    )
    parser.add_argument("--join-timeout", type=float, default=300)
    parser.add_argument("--spread-timeout", type=float, default=600)
    parser.add_argument("--death-timeout", type=float, default=300)
    parser.add_argument("--kills", type=int, default=3, help="members killed, one by one")
    parser.add_argument(
        "--waves",
        type=int,
        default=0,
        help="start members in waves of this many, each once the others see each other "
        "(default: all at once)",
    )
    parser.add_argument(
        "--one-more",
        type=int,
        default=0,
        metavar="K",
        help="instead of the usual scenarios: once the members are up and quiet, K more "
        "join one at a time, each timed (issue 18's one more member)",
    )
    parser.add_argument(
        "--cpu-window",
        type=float,
        default=0.0,
        metavar="S",
        help="count the members' CPU for each join over S seconds from the joiner's start, "
        "less their idle rate (default: until the last of (a), (b), (c))",
    )
    parser.add_argument(
        "--profile",
        default="",
        metavar="NAMES",
        help="hepto members (n1, n2, ...) to run under cProfile: NAME.prof in the run's "
        "directory of each system and size",
    )
    parser.add_argument(
        "--sample-cpu",
        default="",
        metavar="NAMES",
        help="hepto members to run under benchmarks/cpusample.py: NAME.cpu in the run's "
        "directory of each system and size (its report command reads them)",
    )
    parser.add_argument(
        "--profile-joins",
        default="",
        metavar="NAMES",
        help="hepto members to profile over each join (one more member) and over its quiet "
        "sample: NAME-<k>.prof in the run's directory of each system and size "
        "(benchmarks/cpusample.py profiles reads them)",
    )
    parser.add_argument(
        "--join-profiler",
        choices=("profile", "turns"),
        default="profile",
        help="how --profile-joins members are profiled: cProfile (profile), or the CPU of "
        "each reactor turn by what woke it (turns: NAME-<k>.turns.json, read by "
        "benchmarks/cpusample.py turns-report)",
    )
    parser.add_argument(
        "--own-core",
        default="",
        metavar="NAMES",
        help=f"members that run on CPU {OWN_CORE} alone (with their children: wireguard-go, "
        f"the PKI worker), all others of every system on CPU {SHARED_CORE}: what a member "
        "costs on a host of its own, its caches not shared with a hundred others",
    )
    parser.add_argument("--poll", type=float, default=1.0, help="hepto status polling, s")
    parser.add_argument("--poll-fast", type=float, default=0.5, help="same while timing, s")
    parser.add_argument("--run-dir", type=Path, default=None, help="logs and results.json")
    parser.add_argument("--prefix", default="hb", help="namespace prefix (default: hb)")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a system NAME for --systems: hepto agents run from the checkout at PATH "
        "(PYTHONPATH), say an earlier commit, to compare with this one in one run",
    )
    parser.add_argument(
        "--table",
        nargs="+",
        type=Path,
        metavar="RESULTS",
        help="only print the table of results.json files (later ones win), then exit",
    )
    parser.add_argument(
        "--cleanup",
        action="store_true",
        help="only remove namespaces (and their processes) left by a killed run, then exit",
    )
    args = parser.parse_args(argv)
    if args.cleanup:
        raise SystemExit(remove_leftovers(args.prefix))
    if args.table:
        print(table(merged(args.table)))
        raise SystemExit(0)
    systems = [name for name in args.systems.split(",") if name]
    trees = {}
    for tree in args.tree:
        name, _, path = tree.partition("=")
        if not name or not (Path(path) / "hepto" / "__init__.py").is_file():
            parser.error(f"--tree {tree}: not NAME=PATH of a hepto checkout")
        trees[name] = Path(path).resolve()
    unknown = set(systems) - {"memberlist", "memberlist+chunks", "hepto", *trees}
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="hepto-bench-"))
    return Settings(
        sizes=[int(size) for size in args.sizes.split(",") if size],
        systems=systems,
        window=args.window,
        settle=args.settle,
        changes=args.changes,
        loss=args.loss,
        loss_duration=args.loss_duration,
        join_timeout=args.join_timeout,
        spread_timeout=args.spread_timeout,
        death_timeout=args.death_timeout,
        kills=args.kills,
        waves=args.waves,
        poll=args.poll,
        poll_fast=args.poll_fast,
        run_dir=run_dir,
        prefix=args.prefix,
        trees=trees,
        one_more=args.one_more,
        cpu_window=args.cpu_window,
        profiled=frozenset(name for name in args.profile.split(",") if name),
        sampled=frozenset(name for name in args.sample_cpu.split(",") if name),
        join_profiled=frozenset(name for name in args.profile_joins.split(",") if name),
        join_profiler=args.join_profiler,
        own_core=frozenset(name for name in args.own_core.split(",") if name),
    )


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_args(argv)
    problem = missing_requirements("nft")
    if problem:
        raise SystemExit(f"agents.py: {problem}")
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    levels = LogLevelFilterPredicate(LogLevel.info)
    # Every control request would say "Starting factory": only the run's own story is told.
    levels.setLogLevelForNamespace("twisted.internet.endpoints", LogLevel.warn)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [levels])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    memberlist = None
    if any(name.startswith("memberlist") for name in settings.systems):
        memberlist = build_memberlist()
    labs: list[Lab] = []
    results: dict[str, dict[int, Any]] = {}

    async def bench(reactor: Any) -> None:
        # A hangup stops the run like an interrupt does: everything is cleaned up below.
        signal.signal(signal.SIGHUP, lambda number, frame: reactor.callFromThread(reactor.stop))
        await run(reactor, settings, labs, results, memberlist)

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(bench(reactor)))
    finally:
        for lab in labs:
            lab.close()
        save(settings.run_dir / "results.json", results)
        if results:
            print(table(results))
        print(f"\nlogs and results.json in {settings.run_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
