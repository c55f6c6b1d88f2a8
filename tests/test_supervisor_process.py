"""The supervisor with real children (small Python and sh scripts) and real pipes.

Back-off delays run on a task.Clock, so a crash loop takes no wall time; stopping and
probing use the reactor's own clock, with short timeouts.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from hepto.backoff import BackoffPolicy
from hepto.supervisor import (
    DirectLauncher,
    ProcessSpec,
    PythonLauncher,
    State,
    SupervisedProcess,
    Supervisor,
    UnixSocketProbe,
    UtilLinuxLauncher,
    default_launcher,
)
from test_supervisor_fakes import LogCapture

PYTHON = sys.executable


def python(code: str) -> tuple[str, ...]:
    return (PYTHON, "-c", textwrap.dedent(code))


# Installs its TERM handler (or ignores TERM), then listens on the socket named in argv[1]:
# once the socket answers, the handler is in place and a stop test means something.
_SERVE = """
import os, signal, socket, sys, time
mode = sys.argv[2]
if mode == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif mode == "graceful":
    def bye(*_):
        print("graceful exit on SIGTERM", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, bye)
time.sleep(float(sys.argv[3]))
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen()
print("listening", flush=True)
while True:
    server.accept()[0].close()
"""


class RealProcessTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.log = LogCapture.install(self)
        self.dir = Path(tempfile.mkdtemp(prefix="hk-supervisor-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.clock = Clock()

    def supervised(
        self, spec: ProcessSpec, clock: Any = None, launcher: Any = None
    ) -> SupervisedProcess:
        process = SupervisedProcess(
            spec,
            reactor,
            clock if clock is not None else self.clock,
            launcher or default_launcher(),
        )
        self.addCleanup(self._stop, process)
        return process

    def _stop(self, process: SupervisedProcess) -> Deferred[None] | None:
        if process.running:
            return process.stopService()
        return None

    def serving(self, name: str, mode: str, delay: float = 0.0) -> ProcessSpec:
        socket_path = self.dir / f"{name}.sock"
        return ProcessSpec(
            name,
            (*python(_SERVE), str(socket_path), mode, str(delay)),
            probe=UnixSocketProbe(reactor, socket_path),  # type: ignore[arg-type]
            probe_interval=0.05,
            stop_timeout=1.0,
        )

    @inlineCallbacks
    def test_crash_loop_backs_off_and_logs_the_exit_status(self) -> Any:
        spec = ProcessSpec(
            "crasher",
            ("/bin/sh", "-c", "echo 'starting up'; exit 3"),
            restart=BackoffPolicy(initial=1, factor=2, maximum=60),
        )
        process = self.supervised(spec)
        exited = self.log.wait_for(component="crasher", exit_code=3)
        process.startService()
        delays = []
        for _ in range(4):
            event = yield exited
            delays.append(event["delay"])
            self.assertEqual(process.state, State.BACKOFF)
            exited = self.log.wait_for(component="crasher", exit_code=3)
            self.clock.advance(event["delay"])
        yield exited
        self.assertEqual(delays, [1, 2, 4, 8])
        self.assertEqual(len(self.log.matching(component="crasher", line="starting up")), 5)
        self.assertEqual(process.status().restarts, 5)

    @inlineCallbacks
    def test_lines_are_forwarded_whole(self) -> Any:
        code = r"""
        import os, sys, time
        out = sys.stdout.buffer
        out.write(b"first half "); out.flush(); time.sleep(0.05)
        out.write(b"second half\nline {two}\r\n"); out.flush()
        os.write(2, b"W0101 00:00:00.000000 1 x.go:1] a warning\n")
        os.write(2, b"bad \xff utf-8\n\n\n")
        out.write(b"no newline at the end"); out.flush()
        """
        process = self.supervised(ProcessSpec("talker", python(code)))
        ended = self.log.wait_for(component="talker", exit_code=0)
        process.startService()
        yield ended
        lines = [
            (event["stream"], event["line"], event["log_level"].name)
            for event in self.log.matching(log_namespace="talker")
        ]
        self.assertEqual(
            sorted(lines),
            sorted(
                [
                    ("stdout", "first half second half", "info"),
                    ("stdout", "line {two}", "info"),
                    ("stderr", "W0101 00:00:00.000000 1 x.go:1] a warning", "warn"),
                    ("stderr", "bad \ufffd utf-8", "info"),
                    ("stdout", "no newline at the end", "info"),
                ]
            ),
        )

    @inlineCallbacks
    def test_the_environment_is_exactly_the_given_one(self) -> Any:
        code = "import os; print(sorted(os.environ.items()))"
        process = self.supervised(ProcessSpec("env", python(code), env={"GOGC": "42"}))
        ended = self.log.wait_for(component="env", exit_code=0)
        process.startService()
        yield ended
        lines = [event["line"] for event in self.log.matching(log_namespace="env")]
        # The launcher's own programs add nothing; the LC_CTYPE Python may add is its own.
        self.assertIn("('GOGC', '42')", lines[0])
        self.assertNotIn("PATH", lines[0])

    @inlineCallbacks
    def test_readiness_gates_dependents(self) -> Any:
        supervisor = Supervisor(reactor, launcher=default_launcher())
        db = supervisor.add(self.serving("db", "default", delay=0.3))
        app = supervisor.add(
            ProcessSpec("app", python("import time; time.sleep(60)"), dependencies=["db"])
        )
        supervisor.startService()
        self.addCleanup(supervisor.stopService)
        self.assertIsNotNone(db.pid)
        self.assertIsNone(app.pid)
        yield db.when_ready()
        self.assertIsNotNone(app.pid)
        texts = self.log.texts()
        ready = next(i for i, text in enumerate(texts) if text.startswith("db is ready"))
        started = next(i for i, text in enumerate(texts) if text.startswith("app started"))
        self.assertLess(ready, started)

    @inlineCallbacks
    def test_stop_asks_with_sigterm_first(self) -> Any:
        process = self.supervised(self.serving("polite", "graceful"), clock=reactor)
        process.startService()
        yield process.when_ready()
        yield process.stopService()
        self.assertEqual(process.status().last_exit, "exited with status 0")
        self.assertTrue(self.log.matching(component="polite", line="graceful exit on SIGTERM"))

    @inlineCallbacks
    def test_sigkill_after_the_stop_timeout(self) -> Any:
        process = self.supervised(self.serving("stubborn", "ignore"), clock=reactor)
        process.startService()
        yield process.when_ready()
        started = time.monotonic()
        yield process.stopService()
        elapsed = time.monotonic() - started
        self.assertEqual(process.status().last_exit, "was killed by SIGKILL")
        self.assertGreaterEqual(elapsed, 1.0)
        self.assertTrue(self.log.matching(component="stubborn", timeout=1.0))

    @inlineCallbacks
    def test_util_linux_launcher_keeps_the_pid_and_gives_a_session(self) -> Any:
        launcher = default_launcher()
        if not isinstance(launcher, UtilLinuxLauncher):
            self.skipTest("needs util-linux's setsid and setpriv")
        yield self._check_wrapped(launcher)

    @inlineCallbacks
    def test_python_launcher_keeps_the_pid_and_gives_a_session(self) -> Any:
        yield self._check_wrapped(PythonLauncher())

    @inlineCallbacks
    def _check_wrapped(self, launcher: Any) -> Any:
        process = self.supervised(
            self.serving("wrapped", "default"), clock=reactor, launcher=launcher
        )
        process.startService()
        yield process.when_ready()
        pid = process.pid
        assert pid is not None
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        self.assertEqual(cmdline[0], PYTHON.encode())
        self.assertEqual(os.getsid(pid), pid)

    def test_a_missing_program_is_a_logged_failure_and_retried(self) -> None:
        process = self.supervised(
            ProcessSpec("ghost", ("/nonexistent/ghost",)), launcher=DirectLauncher()
        )
        process.startService()
        self.assertEqual(process.state, State.BACKOFF)
        self.assertIn("could not be started", process.status().last_exit or "")
        self.assertTrue(self.log.matching(component="ghost", delay=1.0))
