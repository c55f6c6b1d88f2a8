"""No child outlives a ``kill -9`` of its agent: real processes, a real SIGKILL.

A small agent (this repository's supervisor on the real reactor) starts one child and
says so; the test kills the agent with SIGKILL and waits on a pidfd of the child, which
becomes readable when the child dies.  The control case, without a launcher, shows the
test can fail: that child survives and is killed by the cleanup.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from hepto.supervisor import UtilLinuxLauncher, default_launcher

_AGENT = textwrap.dedent(
    """
    import sys
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from hepto import supervisor

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    launcher = {
        "util-linux": supervisor.default_launcher(),
        "python": supervisor.PythonLauncher(),
        "direct": supervisor.DirectLauncher(),
    }[sys.argv[1]]
    group = supervisor.Supervisor(reactor, launcher=launcher)
    code = "import os, time; print('child', os.getpid(), 'runs', flush=True); time.sleep(600)"
    group.add(supervisor.ProcessSpec("sleeper", [sys.executable, "-c", code]))
    reactor.callWhenRunning(group.startService)
    reactor.run()
    """
)

#: Generous: two contended cores, and a Python agent importing Twisted.
DEADLINE = 60.0


class OrphanTests(SynchronousTestCase):
    def start_agent(self, launcher: str) -> tuple[subprocess.Popen[bytes], int]:
        agent = subprocess.Popen(
            [sys.executable, "-c", _AGENT, launcher],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(self._reap, agent)
        child = self._child_pid(agent)
        self.addCleanup(self._kill, child)
        return agent, child

    def _child_pid(self, agent: subprocess.Popen[bytes]) -> int:
        """The pid the child prints once it runs the program itself (after the wrapper)."""
        assert agent.stdout is not None
        seen: list[str] = []
        while True:
            readable, _, _ = select.select([agent.stdout], [], [], DEADLINE)
            if not readable:
                self.fail(f"the agent said nothing for {DEADLINE} s: {seen}")
            line = agent.stdout.readline().decode()
            if not line:
                self.fail(f"the agent ended early: {seen}")
            seen.append(line)
            words = line.split()
            if "child" in words and words[-1] == "runs":
                return int(words[words.index("child") + 1])

    def _reap(self, agent: subprocess.Popen[bytes]) -> None:
        if agent.poll() is None:
            agent.kill()
        agent.wait()
        if agent.stdout is not None:
            agent.stdout.close()

    def _kill(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def dies_with_the_agent(self, launcher: str, wait: float = DEADLINE) -> bool:
        agent, child = self.start_agent(launcher)
        watch = os.pidfd_open(child)
        self.addCleanup(os.close, watch)
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait()
        readable, _, _ = select.select([watch], [], [], wait)
        return bool(readable)

    def test_util_linux_launcher(self) -> None:
        if not isinstance(default_launcher(), UtilLinuxLauncher):
            self.skipTest("needs util-linux's setsid and setpriv")
        self.assertTrue(self.dies_with_the_agent("util-linux"))

    def test_python_launcher(self) -> None:
        self.assertTrue(self.dies_with_the_agent("python"))

    def test_without_a_launcher_the_child_survives(self) -> None:
        # The control: what the launchers prevent.  Two seconds is plenty for a SIGKILL
        # that is coming; the launcher tests above see theirs within milliseconds.
        self.assertFalse(self.dies_with_the_agent("direct", wait=2.0))
