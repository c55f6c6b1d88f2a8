"""The supervisor's logic, on a fake process reactor and task.Clock: no real time passes."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from hepto.backoff import BackoffPolicy
from hepto.machine import IllegalTransition
from hepto.supervisor import (
    DirectLauncher,
    ProcessSpec,
    PythonLauncher,
    State,
    SupervisedProcess,
    Supervisor,
    UtilLinuxLauncher,
    default_launcher,
    describe_exit,
)
from hepto.supervisor.lines import LineBuffer, decode_line, line_level
from hepto.supervisor.process import LIFECYCLE, Gate, Input
from test_supervisor_fakes import FakeProcessReactor, LogCapture, ScriptedProbe


class LineBufferTests(SynchronousTestCase):
    def test_lines_across_chunks(self) -> None:
        buffer = LineBuffer()
        self.assertEqual(buffer.feed(b"one\ntw"), [b"one"])
        self.assertEqual(buffer.feed(b"o\n\nthree"), [b"two", b""])
        self.assertEqual(buffer.flush(), [b"three"])
        self.assertEqual(buffer.flush(), [])

    def test_long_lines_are_cut_not_hoarded(self) -> None:
        buffer = LineBuffer(limit=4)
        self.assertEqual(buffer.feed(b"abcdefghij"), [b"abcd", b"efgh"])
        self.assertEqual(buffer.feed(b"\n"), [b"ij"])
        self.assertEqual(buffer.cut, 2)
        self.assertEqual(buffer.feed(b"abcd\n"), [b"abcd"])
        self.assertEqual(buffer.cut, 2)

    def test_decoding_never_fails(self) -> None:
        self.assertEqual(decode_line(b"caf\xc3\xa9\r"), "café")
        self.assertEqual(decode_line(b"\xff\xfe"), "\ufffd\ufffd")

    def test_levels_from_klog_and_json(self) -> None:
        self.assertEqual(line_level("E0616 09:13:18.990884   31796 run.go:74] x"), LogLevel.error)
        self.assertEqual(line_level("W0616 09:13:18.990884 1 a.go:1] x"), LogLevel.warn)
        self.assertEqual(line_level("F0616 09:13:18.990884 1 a.go:1] x"), LogLevel.critical)
        self.assertEqual(line_level('{"level":"warn","msg":"slow fdatasync"}'), LogLevel.warn)
        self.assertEqual(line_level('{"level":"PANIC"}'), LogLevel.critical)
        self.assertEqual(line_level("Error: unknown flag"), LogLevel.info)
        self.assertEqual(line_level('{"msg":"no level"}'), LogLevel.info)


class LauncherTests(SynchronousTestCase):
    def test_util_linux(self) -> None:
        launcher = UtilLinuxLauncher("/usr/bin/setsid", "/usr/bin/setpriv")
        self.assertEqual(
            launcher.command(["/bin/prog", "-x"]),
            ("/usr/bin/setsid", "/usr/bin/setpriv", "--pdeathsig", "KILL", "--", "/bin/prog", "-x"),
        )
        self.assertEqual(
            launcher.command(["/bin/prog"], "TERM"),
            ("/usr/bin/setsid", "/usr/bin/setpriv", "--pdeathsig", "TERM", "--", "/bin/prog"),
        )

    def test_python_names_the_current_pid(self) -> None:
        command = PythonLauncher("/usr/bin/python3").command(["/bin/prog", "-x"])
        self.assertEqual(command[:4], ("/usr/bin/python3", "-I", "-S", "-c"))
        self.assertEqual(command[5:], (str(os.getpid()), "KILL", "/bin/prog", "-x"))
        command = PythonLauncher("/usr/bin/python3").command(["/bin/prog"], "TERM")
        self.assertEqual(command[5:], (str(os.getpid()), "TERM", "/bin/prog"))

    def test_default_falls_back_to_python(self) -> None:
        self.assertEqual(default_launcher(path="/nonexistent"), PythonLauncher(sys.executable))

    def test_direct(self) -> None:
        self.assertEqual(DirectLauncher().command(["/bin/prog"]), ("/bin/prog",))


class DescribeExitTests(SynchronousTestCase):
    def test_descriptions(self) -> None:
        from twisted.internet.error import ProcessDone, ProcessTerminated

        self.assertEqual(describe_exit(Failure(ProcessDone(0))), "exited with status 0")
        self.assertEqual(
            describe_exit(Failure(ProcessTerminated(exitCode=3))), "exited with status 3"
        )
        self.assertEqual(
            describe_exit(Failure(ProcessTerminated(signal=9))), "was killed by SIGKILL"
        )
        self.assertEqual(
            describe_exit(Failure(ProcessTerminated(signal=99))), "was killed by signal 99"
        )


def spec(name: str = "prog", **kwargs: Any) -> ProcessSpec:
    return ProcessSpec(name=name, argv=(f"/bin/{name}", "--flag"), **kwargs)


class SupervisedProcessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.clock = Clock()
        self.log = LogCapture.install(self)

    def make(self, gate: Gate | None = None, **kwargs: Any) -> SupervisedProcess:
        return SupervisedProcess(
            spec(**kwargs),
            self.reactor,  # type: ignore[arg-type]
            self.clock,
            UtilLinuxLauncher("/w/setsid", "/w/setpriv"),
            gate or (lambda: succeed(None)),
        )

    def test_spawns_through_the_launcher_with_exactly_its_environment(self) -> None:
        process = self.make(env={"GOGC": "50"})
        process.startService()
        child = self.reactor.last
        self.assertEqual(
            child.argv,
            ("/w/setsid", "/w/setpriv", "--pdeathsig", "KILL", "--", "/bin/prog", "--flag"),
        )
        self.assertEqual(child.env, {"GOGC": "50"})
        self.assertTrue(child.stdin_closed)
        self.assertEqual(process.pid, child.pid)
        self.assertEqual(process.state, State.RUNNING)

    def test_crash_loop_backs_off_and_says_why(self) -> None:
        process = self.make(restart=BackoffPolicy(initial=1, maximum=8, stable_after=60))
        process.startService()
        delays = []
        for code in range(1, 7):
            self.reactor.last.exit(code)
            self.assertEqual(process.state, State.BACKOFF)
            delays.append(self._last_delay())
            spawned = len(self.reactor.processes)
            self.clock.advance(delays[-1] - 0.01)
            self.assertEqual(len(self.reactor.processes), spawned, "restarted too early")
            self.clock.advance(0.01)
            self.assertEqual(len(self.reactor.processes), spawned + 1)
        self.assertEqual(delays, [1, 2, 4, 8, 8, 8])
        self.assertEqual(process.status().restarts, 6)
        warning = self.log.matching(component="prog", exit_code=3)[0]
        self.assertEqual(warning["log_level"], LogLevel.warn)
        self.assertEqual(
            "prog exited with status 3 after 0.0 s; restarting in 4 s (3 short runs in a row)",
            _text(warning),
        )

    def _last_delay(self) -> float:
        delays = [event["delay"] for event in self.log.events if "delay" in event]
        return float(delays[-1])

    def test_a_stable_run_restarts_quickly_again(self) -> None:
        process = self.make(restart=BackoffPolicy(initial=1, maximum=30, stable_after=60))
        process.startService()
        for _ in range(4):
            self.reactor.last.exit(1)
            self.clock.advance(self._last_delay())
        self.assertEqual(self._last_delay(), 8)
        self.clock.advance(61)
        self.reactor.last.end(signal=9)
        self.assertEqual(self._last_delay(), 1)
        self.assertEqual(
            "prog was killed by SIGKILL after 61.0 s; restarting in 1 s", _text(self.log.events[-1])
        )

    def test_spawn_failure_is_a_short_run(self) -> None:
        self.reactor.fail_with = FileNotFoundError(2, "No such file or directory")
        process = self.make()
        process.startService()
        self.assertEqual(process.state, State.BACKOFF)
        self.assertIn("could not be started", process.status().last_exit or "")
        self.reactor.fail_with = None
        self.clock.advance(1)
        self.assertEqual(process.state, State.RUNNING)

    def test_readiness_follows_the_probe(self) -> None:
        probe = ScriptedProbe()
        process = self.make(probe=probe, probe_interval=0.5, ready_probe_interval=10)
        ready = process.when_ready()
        process.startService()
        self.clock.advance(0)
        probe.answer(False)
        self.assertNoResult(ready)
        self.assertEqual(process.status().last_probe_error, "scripted: not ready")
        self.clock.advance(0.5)
        probe.answer(True)
        self.successResultOf(ready)
        self.assertTrue(process.ready)
        self.successResultOf(process.when_ready())
        # Once ready, probed less often; a failure is reported and readiness withdrawn.
        self.clock.advance(9.9)
        self.assertEqual(probe.pending, [])
        self.clock.advance(0.1)
        probe.answer(False)
        self.assertFalse(process.ready)
        self.assertIn("prog is no longer ready", _text(self.log.events[-1]))
        again = process.when_ready()
        self.clock.advance(0.5)
        probe.answer(True)
        self.successResultOf(again)

    def test_probes_never_overlap_and_time_out(self) -> None:
        probe = ScriptedProbe()
        process = self.make(probe=probe, probe_interval=0.5, probe_timeout=3)
        process.startService()
        self.clock.advance(0)
        self.assertEqual(probe.checks, 1)
        self.clock.advance(2.9)
        self.assertEqual(probe.checks, 1)
        self.clock.advance(0.1)
        self.assertEqual(process.status().last_probe_error, "no answer within 3 s")
        self.clock.advance(0.5)
        self.assertEqual(probe.checks, 2)

    def test_exit_withdraws_readiness_and_stops_probing(self) -> None:
        probe = ScriptedProbe(always=True)
        process = self.make(probe=probe)
        process.startService()
        self.clock.advance(0)
        self.assertTrue(process.ready)
        self.reactor.last.exit(2)
        self.assertFalse(process.ready)
        checks = probe.checks
        self.clock.advance(0.9)
        self.assertEqual(probe.checks, checks)

    def test_stop_sends_term_and_waits_for_the_end(self) -> None:
        self.reactor.dies_on = ()
        process = self.make(stop_timeout=15)
        process.startService()
        child = self.reactor.last
        stopped = process.stopService()
        self.assertEqual(child.signals, ["TERM"])
        self.assertNoResult(stopped)
        child.exit(0)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(process.state, State.STOPPED)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_child_ending_inside_the_signal_leaves_no_timer(self) -> None:
        process = self.make(probe=ScriptedProbe(always=True))
        process.startService()
        self.clock.advance(0)
        self.successResultOf(process.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_kill_after_the_stop_timeout(self) -> None:
        self.reactor.dies_on = ("KILL",)
        process = self.make(stop_timeout=15)
        process.startService()
        stopped = process.stopService()
        self.clock.advance(14.9)
        self.assertEqual(self.reactor.last.signals, ["TERM"])
        self.assertNoResult(stopped)
        self.clock.advance(0.1)
        self.assertEqual(self.reactor.last.signals, ["TERM", "KILL"])
        self.successResultOf(stopped)
        self.assertIn("prog stopped: it was killed by SIGKILL", _text(self.log.events[-1]))

    def test_a_grandchild_holding_the_pipes_does_not_hang_the_stop(self) -> None:
        self.reactor.dies_on = ()
        process = self.make(drain_timeout=2)
        process.startService()
        child = self.reactor.last
        stopped = process.stopService()
        child.end(signal=15, ended=False)  # reaped, but a pipe stays open
        self.assertNoResult(stopped)
        self.clock.advance(2)
        self.assertTrue(child.lost)
        self.successResultOf(stopped)

    def test_stop_while_waiting_cancels_the_gate(self) -> None:
        cancelled: list[Deferred[None]] = []
        gate: Deferred[None] = Deferred(canceller=cancelled.append)
        process = self.make(gate=lambda: gate)
        process.startService()
        self.assertEqual(process.state, State.WAITING)
        self.successResultOf(process.stopService())
        self.assertEqual(cancelled, [gate])
        self.assertEqual(self.reactor.processes, [])
        self.assertEqual(process.state, State.STOPPED)

    def test_stop_during_backoff_cancels_the_restart(self) -> None:
        process = self.make()
        process.startService()
        self.reactor.last.exit(1)
        self.successResultOf(process.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.reactor.processes), 1)

    def test_a_failed_gate_blocks_with_a_reason(self) -> None:
        process = self.make(gate=lambda: fail(ValueError("no certificate for etcd")))
        process.startService()
        self.assertEqual(process.state, State.BLOCKED)
        self.assertEqual(self.reactor.processes, [])
        self.assertIn("prog will not start: no certificate for etcd", _text(self.log.events[-1]))
        self.flushLoggedErrors(ValueError)

    def test_restart(self) -> None:
        process = self.make()
        process.startService()
        first = self.reactor.last
        self.successResultOf(process.restart())
        self.assertEqual(first.signals, ["TERM"])
        self.assertEqual(len(self.reactor.running()), 1)
        self.assertIsNot(self.reactor.last, first)

    def test_output_is_forwarded_line_by_line(self) -> None:
        process = self.make()
        process.startService()
        child = self.reactor.last
        child.output(1, b"hello {world}\npart")
        child.output(2, b"E0101 00:00:00.000000 1 x.go:1] broken\n\n  \n")
        child.output(1, b"ial\r\n")
        child.output(3, b"ignored\n")
        child.output(1, b"no newline at the end")
        child.exit(0)
        lines = [
            (event["stream"], event["line"], event["log_level"])
            for event in self.log.matching(component="prog")
            if "stream" in event
        ]
        self.assertEqual(
            lines,
            [
                ("stdout", "hello {world}", LogLevel.info),
                ("stderr", "E0101 00:00:00.000000 1 x.go:1] broken", LogLevel.error),
                ("stdout", "partial", LogLevel.info),
            ],
        )
        self.assertEqual(self.log.matching(log_namespace="prog")[0]["line"], "hello {world}")

    def test_output_flushed_when_the_pipe_closes(self) -> None:
        process = self.make()
        process.startService()
        self.reactor.last.output(1, b"no newline at the end")
        self.reactor.last.protocol.childConnectionLost(1)
        self.assertEqual(self.log.matching(stream="stdout")[0]["line"], "no newline at the end")


def _text(event: dict[str, object]) -> str:
    from twisted.logger import formatEvent

    return formatEvent(event)


class SupervisorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.clock = Clock()
        self.log = LogCapture.install(self)
        self.supervisor = Supervisor(
            self.reactor,  # type: ignore[arg-type]
            self.clock,
            DirectLauncher(),
        )
        self.probes = {name: ScriptedProbe() for name in ("db", "api", "ctl", "sched")}
        self.supervisor.add(spec("db", probe=self.probes["db"]))
        self.supervisor.add(spec("api", probe=self.probes["api"], dependencies=["db"]))
        self.supervisor.add(spec("ctl", probe=self.probes["ctl"], dependencies=["api"]))
        self.supervisor.add(spec("sched", probe=self.probes["sched"], dependencies=["api"]))

    def started(self) -> list[str]:
        return [process.argv[0].rsplit("/", 1)[1] for process in self.reactor.processes]

    def test_unknown_or_duplicate_names(self) -> None:
        error = self.assertRaises(ValueError, self.supervisor.add, spec("x", dependencies=["y"]))
        self.assertIn("x depends on y, which is not supervised", str(error))
        self.assertRaises(ValueError, self.supervisor.add, spec("db"))

    def test_start_in_dependency_order_on_readiness(self) -> None:
        self.supervisor.startService()
        self.assertEqual(self.started(), ["db"])
        self.assertIn("api waits for db", self.log.texts())
        self.clock.advance(0)
        self.probes["db"].answer(False)
        self.assertEqual(self.started(), ["db"])
        self.clock.advance(0.5)
        self.probes["db"].answer(True)
        self.assertEqual(self.started(), ["db", "api"])
        self.clock.advance(0)
        self.probes["api"].answer(True)
        self.assertEqual(self.started(), ["db", "api", "ctl", "sched"])
        everything = self.supervisor.when_ready()
        self.clock.advance(0)
        self.probes["ctl"].answer(True)
        self.assertNoResult(everything)
        self.probes["sched"].answer(True)
        self.successResultOf(everything)

    def test_precondition_gates_the_start(self) -> None:
        installed: Deferred[None] = Deferred()
        self.supervisor.add(spec("cert-user", precondition=lambda: installed))
        self.supervisor.startService()
        self.assertNotIn("cert-user", self.started())
        installed.callback(None)
        self.assertIn("cert-user", self.started())

    def test_a_restart_waits_for_dependencies_again(self) -> None:
        for probe in self.probes.values():
            probe.always = True
        self.supervisor.startService()
        self.clock.advance(0)
        self.assertEqual(len(self.started()), 4)
        db = self.reactor.processes[0]
        api = self.reactor.processes[1]
        self.probes["db"].always = None
        db.exit(1)
        api.exit(1)
        self.clock.advance(1)  # both back-offs end; api must wait until db is ready
        self.assertEqual(self.started()[4:], ["db"])
        self.assertEqual(self.supervisor["api"].state, State.WAITING)
        self.probes["db"].answer(True)
        self.assertEqual(self.started()[4:], ["db", "api"])

    def test_stop_in_reverse_dependency_order(self) -> None:
        for probe in self.probes.values():
            probe.always = True
        self.reactor.dies_on = ()
        self.supervisor.startService()
        self.clock.advance(0)
        db, api, ctl, sched = self.reactor.processes
        stopped = self.supervisor.stopService()
        self.assertEqual([ctl.signals, sched.signals], [["TERM"], ["TERM"]])
        self.assertEqual([db.signals, api.signals], [[], []])
        ctl.exit(0)
        self.assertEqual(api.signals, [])
        sched.exit(0)
        self.assertEqual(api.signals, ["TERM"])
        self.assertEqual(db.signals, [])
        api.exit(0)
        self.assertEqual(db.signals, ["TERM"])
        self.assertNoResult(stopped)
        db.exit(0)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(self.reactor.running(), [])

    def test_stop_before_anything_ran(self) -> None:
        self.supervisor.startService()
        self.successResultOf(self.supervisor.stopService())
        self.assertEqual(self.reactor.running(), [])
        self.assertEqual(
            {name: status.state for name, status in self.supervisor.status().items()},
            {name: State.STOPPED for name in ("db", "api", "ctl", "sched")},
        )

    def test_a_failing_stop_still_stops_the_others(self) -> None:
        for probe in self.probes.values():
            probe.always = True
        self.supervisor.startService()
        self.clock.advance(0)
        self.supervisor["ctl"].stopService = lambda: fail(RuntimeError("bug"))  # type: ignore[method-assign]
        stopped = self.supervisor.stopService()
        self.failureResultOf(stopped, RuntimeError)
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(self.reactor.running(), [self.reactor.processes[2]])


class LifecycleTests(SynchronousTestCase):
    """The table of SupervisedProcess: every state is reached, and any may be stopped."""

    def test_every_state_can_be_stopped(self) -> None:
        for state in State:
            self.assertIn((state, Input.STOP), LIFECYCLE.table, state)

    def test_every_state_is_reached_from_idle_and_every_input_is_used(self) -> None:
        reached, frontier = {State.IDLE}, [State.IDLE]
        while frontier:
            state = frontier.pop()
            for (source, _), (after, _) in LIFECYCLE.table.items():
                if source is state and after not in reached:
                    reached.add(after)
                    frontier.append(after)
        self.assertEqual(reached, set(State))
        self.assertEqual({input for _, input in LIFECYCLE.table}, set(Input))

    def test_starting_a_running_or_stopping_process_raises(self) -> None:
        reactor = FakeProcessReactor()
        reactor.dies_on = ()
        process = SupervisedProcess(
            spec(),
            reactor,  # type: ignore[arg-type]
            Clock(),
            DirectLauncher(),
            lambda: succeed(None),
        )
        process.startService()
        self.assertRaises(IllegalTransition, process.startService)
        process.stopService()
        self.assertEqual(process.state, State.STOPPING)
        self.assertRaises(IllegalTransition, process.startService)
        self.assertEqual(process.state, State.STOPPING)
