"""Where a Python agent's CPU goes: a sampler of its own CPU time, and a report of it.

``run OUT SCRIPT ARGS...`` runs the Python script ``SCRIPT`` (``twistd``) with ``ARGS``
in this process, under ``setitimer(ITIMER_PROF)``: every interval of this process's CPU
(user and system), the stack of whatever Python frame runs is appended to ``OUT`` as
``<unix time> <frame>;<frame>;...``. ``benchmarks/agents.py --sample-cpu NAMES`` starts
those members so (``<run dir>/<system>-<N>/<name>.cpu``).

Why not py-spy or cProfile: py-spy samples wall time, and on a machine that a join
saturates, a process waiting for a core or inside a system call counts as busy (a
``sendto`` whose delivery to another namespace the kernel does in the sender's time looked
like a tenth of a joiner's CPU, and is a hundredth); cProfile times every call, slows the
agent several times over and keeps no timestamps, so a join cannot be told from the boot.

The kernel charges CPU time at its tick, so a process that runs in bursts shorter than a
tick gets at most one signal per tick in which it ran, whatever the interval asked: each
sample stands for a tick's CPU, at random. Read the report's shares, not absolute times.

``profile OUT SCRIPT ARGS...`` runs ``SCRIPT`` likewise, but under cProfile only between a
SIGUSR1 and the next SIGUSR2, which writes that window's profile to ``OUT-<k>.prof`` (k =
1, 2, ...): ``benchmarks/agents.py --profile-joins NAMES`` profiles those members over
each join's quiet sample (odd k) and over as long a window from the joiner's start (even
k). Deterministic counts, where the sampler sees a few dozen ticks: its ``profiles``
command prints, per function, the calls and the own time of the join windows beyond the
quiet ones (cProfile slows what it times, about twice: read shares and calls).

``turns OUT SCRIPT ARGS...`` is ``profile`` without cProfile's cost: between the signals it
times (``time.thread_time_ns``) each of the reactor's descriptor events by its selectable and
protocol and each timed call by its function, and writes ``OUT-<k>.turns.json``;
``agents.py --profile-joins NAMES --join-profiler turns`` runs members so, and the
``turns-report`` command prints each waker's CPU and count in join windows beyond quiet ones.
Wakers named in ``CPUSAMPLE_PROFILED_WAKERS`` (comma-separated, as the report names them)
also run under cProfile, into ``OUT-<k>.prof`` (``profiles`` reads them).

``report --run-dir DIR --members a,b --joiners x,y`` adds up the members' samples in the
``--window`` seconds after each joiner's start (its log's first line) and, for what they
burn anyway, in as long a window ending ``--quiet-gap`` seconds before it; it prints each
function's share (inclusive) of the join windows' samples, and how many samples per
window it had in each, idle beside join.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import gc
import json
import os
import pstats
import runpy
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

#: Seconds of this process's CPU between samples (at most one per kernel tick lands).
INTERVAL = 0.0005
#: Samples kept in memory before they are written out.
FLUSH_EVERY = 256


def run(out: Path, script: str, arguments: list[str]) -> None:
    # Samples are written with os.write, never from inside a file object's write: a
    # SIGPROF that interrupts the write system call runs this handler again right there,
    # and a buffered file written into from its own write wrote memory garbage.
    descriptor = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pending: list[str] = []
    writing = False

    def flush() -> None:
        nonlocal writing
        if writing:
            return  # a sample taken while writing: it waits in pending
        writing = True
        try:
            while pending:
                lines = pending[:]
                del pending[: len(lines)]
                data = "".join(lines).encode()
                while data:
                    data = data[os.write(descriptor, data) :]
        finally:
            writing = False

    def sample(signum: int, frame: FrameType | None) -> None:
        stack = []
        while frame is not None:
            code = frame.f_code
            stack.append(f"{code.co_name} ({os.path.basename(code.co_filename)})")
            frame = frame.f_back
        pending.append(f"{time.time():.4f} {';'.join(reversed(stack))}\n")
        if len(pending) >= FLUSH_EVERY:
            flush()

    signal.signal(signal.SIGPROF, sample)
    signal.setitimer(signal.ITIMER_PROF, INTERVAL, INTERVAL)
    sys.argv = [script, *arguments]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        flush()
        os.close(descriptor)


def profile(out: Path, script: str, arguments: list[str]) -> None:
    windows = 0
    profiler: cProfile.Profile | None = None

    def start(signum: int, frame: FrameType | None) -> None:
        nonlocal profiler
        if profiler is None:
            # CPU time, not the wall clock's: on a machine that a join saturates, a
            # function preempted midway would be charged the other processes' time.
            profiler = cProfile.Profile(time.thread_time)
            profiler.enable()

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal profiler, windows
        if profiler is not None:
            profiler.disable()
            windows += 1
            profiler.dump_stats(f"{out}-{windows}.prof")
            profiler = None

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = [script, *arguments]
    runpy.run_path(script, run_name="__main__")


class TurnTimer:
    """CPU time of the reactor's turns by what woke it: each descriptor event by its
    selectable (and protocol), each timed call by its function, while installed."""

    def __init__(self, reactor: Any, profiled: frozenset[str] = frozenset()) -> None:
        self.reactor = reactor
        self.spent: dict[str, list[int]] = {}
        self.started = time.thread_time_ns()
        #: Wakers whose work also runs under cProfile, to see what they do.
        self.profiled = profiled
        self.profiler = cProfile.Profile(time.thread_time)
        self._collecting_since = 0

    def _add(self, key: str, took: int) -> None:
        entry = self.spent.setdefault(key, [0, 0])
        entry[0] += took
        entry[1] += 1

    def install(self) -> None:
        reactor, add = self.reactor, self._add
        react, call_later, run_due = (
            reactor._doReadOrWrite,
            reactor.callLater,
            reactor.runUntilCurrent,
        )

        def do_read_or_write(selectable: Any, fd: int, event: int) -> None:
            key = f"event {_describe(selectable)}"
            profiled = key in self.profiled
            began = time.thread_time_ns()
            try:
                if profiled:
                    self.profiler.runcall(react, selectable, fd, event)
                else:
                    react(selectable, fd, event)
            finally:
                add(key, time.thread_time_ns() - began)

        def timed_call_later(delay: float, function: Any, *args: Any, **kw: Any) -> Any:
            key = f"timer {_describe(function)}"

            def timed(*args: Any, **kw: Any) -> Any:
                began = time.thread_time_ns()
                try:
                    return function(*args, **kw)
                finally:
                    add(key, time.thread_time_ns() - began)

            return call_later(delay, timed, *args, **kw)

        def timed_run_due() -> None:
            began = time.thread_time_ns()
            try:
                run_due()
            finally:
                add("all due calls (the timers above among them)", time.thread_time_ns() - began)

        # Instance attributes shadow the methods: the epoll reactor's doPoll and its
        # mainLoop look them up on each turn.
        reactor._doReadOrWrite = do_read_or_write
        reactor.callLater = timed_call_later
        reactor.runUntilCurrent = timed_run_due
        gc.callbacks.append(self._collected)

    def _collected(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._collecting_since = time.thread_time_ns()
        elif self._collecting_since:
            took = time.thread_time_ns() - self._collecting_since
            self._collecting_since = 0
            generation = info["generation"]
            self._add(f"garbage collection, generation {generation} (within the above)", took)

    def uninstall(self) -> dict[str, list[int]]:
        gc.callbacks.remove(self._collected)
        for name in ("_doReadOrWrite", "callLater", "runUntilCurrent"):
            self.reactor.__dict__.pop(name, None)
        self.spent["the whole window (this thread)"] = [time.thread_time_ns() - self.started, 1]
        return self.spent


def _describe(thing: Any) -> str:
    looping = getattr(thing, "f", None)  # a LoopingCall: what it calls
    function = looping if looping is not None else thing
    name = getattr(function, "__qualname__", None)
    if name is not None:
        return f"{getattr(function, '__module__', '?')}.{name}"
    described = type(thing).__name__
    process = getattr(thing, "proc", None)  # a process's pipe: whom it serves
    protocol = getattr(thing, "protocol", None) or getattr(process, "proto", None)
    # An endpoint's connection: the protocol it wraps says whose it is.
    protocol = getattr(protocol, "_wrappedProtocol", protocol)
    if protocol is not None:
        described += f"/{type(protocol).__module__}.{type(protocol).__name__}"
    return described


def turns(out: Path, script: str, arguments: list[str]) -> None:
    windows = 0
    timer: TurnTimer | None = None

    def start(signum: int, frame: FrameType | None) -> None:
        nonlocal timer
        if timer is None:
            from twisted.internet import reactor

            wakers = os.environ.get("CPUSAMPLE_PROFILED_WAKERS", "")
            timer = TurnTimer(reactor, frozenset(w for w in wakers.split(",") if w))
            timer.install()

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal timer, windows
        if timer is not None:
            spent = timer.uninstall()
            windows += 1
            Path(f"{out}-{windows}.turns.json").write_text(json.dumps(spent))
            if timer.profiled:
                timer.profiler.dump_stats(f"{out}-{windows}.prof")
            timer = None

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = [script, *arguments]
    runpy.run_path(script, run_name="__main__")


def _windows(run_dir: Path, members: list[str], suffix: str) -> Iterator[tuple[bool, Path]]:
    """Each member's ``<member>-<k>.<suffix>``, and whether it is a join's window: the
    harness's signals alternate, a quiet window (odd k) then its join's (even k)."""
    for member in members:
        for path in sorted(run_dir.glob(f"{member}-*.{suffix}")):
            yield int(path.name.split(".")[0].rsplit("-", 1)[1]) % 2 == 0, path


def turns_report(run_dir: Path, members: list[str]) -> None:
    """CPU and count per waker in join windows (even k) beyond quiet ones (odd k)."""
    totals: dict[bool, dict[str, list[int]]] = {False: {}, True: {}}
    windows = {False: 0, True: 0}
    for joining, path in _windows(run_dir, members, "turns.json"):
        windows[joining] += 1
        for key, (spent, count) in json.loads(path.read_text()).items():
            entry = totals[joining].setdefault(key, [0, 0])
            entry[0] += spent
            entry[1] += count
    if not windows[True] or not windows[False]:
        print("no join or no quiet window timed")
        return

    def per_window(joining: bool, key: str, field: int) -> float:
        return totals[joining].get(key, [0, 0])[field] / windows[joining]

    print(f"{windows[True]} join and {windows[False]} quiet windows; per window, join beyond quiet")
    print("    ms  count  ms (join)  ms (quiet)  count (join)  count (quiet)  woken by")
    keys = set(totals[True]) | set(totals[False])
    extra = {key: per_window(True, key, 0) - per_window(False, key, 0) for key in keys}
    for key in sorted(keys, key=lambda k: -extra[k]):
        counts = per_window(True, key, 1), per_window(False, key, 1)
        in_join, in_quiet = per_window(True, key, 0) / 1e6, per_window(False, key, 0) / 1e6
        print(
            f"{extra[key] / 1e6:6.2f} {counts[0] - counts[1]:6.1f}  {in_join:9.2f}"
            f"  {in_quiet:10.2f}  {counts[0]:12.1f}  {counts[1]:13.1f}  {key}"
        )


def profiles(run_dir: Path, members: list[str], top: int) -> None:
    """Own time and calls per function in join windows (even k) beyond quiet ones (odd k)."""
    totals: dict[bool, dict[tuple[str, int, str], list[float]]] = {False: {}, True: {}}
    windows = {False: 0, True: 0}
    for joining, path in _windows(run_dir, members, "prof"):
        windows[joining] += 1
        stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
        for function, (_, calls, own, cumulative, _) in stats.items():
            entry = totals[joining].setdefault(function, [0, 0.0, 0.0])
            entry[0] += calls
            entry[1] += own
            entry[2] += cumulative
    if not windows[True] or not windows[False]:
        print("no join or no quiet window profiled")
        return

    def per_window(joining: bool, function: tuple[str, int, str], field: int) -> float:
        return totals[joining].get(function, [0, 0.0, 0.0])[field] / windows[joining]

    extra = {
        function: [per_window(True, function, f) - per_window(False, function, f) for f in range(3)]
        for function in totals[True]
    }
    join_own = sum(entry[1] for entry in totals[True].values()) / windows[True]
    quiet_own = sum(entry[1] for entry in totals[False].values()) / windows[False]
    print(
        f"{windows[True]} join and {windows[False]} quiet windows: {1000 * join_own:.1f} and "
        f"{1000 * quiet_own:.1f} ms of profiled CPU per window, "
        f"{1000 * (join_own - quiet_own):.1f} ms for the join"
    )
    print("   calls  own ms  cum ms  function (join window beyond quiet, per window)")
    for function, (calls, own, cumulative) in sorted(extra.items(), key=lambda i: -i[1][1])[:top]:
        filename, line, name = function
        print(
            f"{calls:8.1f} {1000 * own:7.2f} {1000 * cumulative:7.2f}  "
            f"{name} ({os.path.basename(filename)}:{line})"
        )


def _samples(path: Path) -> list[tuple[float, list[str]]]:
    found = []
    # Files of the sampler before 2026-12-03 (evening) may hold garbage: skipped.
    for line in path.read_text(errors="replace").splitlines():
        when, _, stack = line.partition(" ")
        try:
            found.append((float(when), stack.split(";")))
        except ValueError:
            continue  # a line cut by the agent's end
    return found


def report(
    run_dir: Path, members: list[str], joiners: list[str], window: float, quiet_gap: float, top: int
) -> None:
    starts = {}
    for joiner in joiners:
        with (run_dir / f"{joiner}.log").open() as log:
            starts[joiner] = json.loads(log.readline())["log_time"]
    joined: collections.Counter[str] = collections.Counter()
    quiet: collections.Counter[str] = collections.Counter()
    in_join = in_quiet = 0
    windows = 0
    for member in members:
        samples = _samples(run_dir / f"{member}.cpu")
        for joiner, start in starts.items():
            if joiner == member:
                continue
            windows += 1
            for when, stack in samples:
                if start <= when < start + window:
                    in_join += 1
                    joined.update(set(stack))
                elif start - quiet_gap - window <= when < start - quiet_gap:
                    in_quiet += 1
                    quiet.update(set(stack))
    if not windows or not in_join:
        print("no samples in any join window")
        return
    print(
        f"{windows} windows of {window} s: {in_join / windows:.1f} samples per join window, "
        f"{in_quiet / windows:.1f} per quiet one"
    )
    print("share   join  quiet  (samples per window)  function")
    for function, count in joined.most_common(top):
        print(
            f"{100 * count / in_join:5.1f}%  {count / windows:5.2f}  "
            f"{quiet[function] / windows:5.2f}  {function}"
        )


def main() -> None:
    if len(sys.argv) > 3 and sys.argv[1] in ("run", "profile", "turns"):
        runner = {"run": run, "profile": profile, "turns": turns}[sys.argv[1]]
        runner(Path(sys.argv[2]), sys.argv[3], sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run OUT SCRIPT ARGS... (see the module's docstring)")
    commands.add_parser("profile", help="profile OUT SCRIPT ARGS... (the module's docstring)")
    commands.add_parser("turns", help="turns OUT SCRIPT ARGS... (the module's docstring)")
    timed = commands.add_parser("turns-report", help="the timed join windows beyond quiet")
    timed.add_argument("--run-dir", type=Path, required=True, help="<run dir>/<system>-<N>")
    timed.add_argument("--members", required=True, help="timed members, comma-separated")
    profiled = commands.add_parser("profiles", help="the profiled join windows beyond quiet")
    profiled.add_argument("--run-dir", type=Path, required=True, help="<run dir>/<system>-<N>")
    profiled.add_argument("--members", required=True, help="profiled members, comma-separated")
    profiled.add_argument("--top", type=int, default=40)
    shown = commands.add_parser("report", help="the members' CPU around each joiner's start")
    shown.add_argument("--run-dir", type=Path, required=True, help="<run dir>/<system>-<N>")
    shown.add_argument("--members", required=True, help="sampled members, comma-separated")
    shown.add_argument("--joiners", required=True, help="joiners, comma-separated")
    shown.add_argument("--window", type=float, default=3.0)
    shown.add_argument("--quiet-gap", type=float, default=6.0)
    shown.add_argument("--top", type=int, default=60)
    args = parser.parse_args()
    if args.command in ("run", "profile", "turns"):
        parser.error(f"{args.command} OUT SCRIPT ARGS...")
    if args.command == "turns-report":
        turns_report(args.run_dir, args.members.split(","))
        return
    if args.command == "profiles":
        profiles(args.run_dir, args.members.split(","), args.top)
        return
    report(
        args.run_dir,
        args.members.split(","),
        args.joiners.split(","),
        args.window,
        args.quiet_gap,
        args.top,
    )


if __name__ == "__main__":
    main()
