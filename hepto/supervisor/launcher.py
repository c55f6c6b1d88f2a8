"""How a child is started so that it cannot outlive the agent, even after ``kill -9``.

``spawnProcess`` has no pre-exec hook, so the child execs a tiny wrapper first that
asks the kernel for ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` and puts the child in a
session of its own, then execs the program itself: nothing stays resident.  The
rationale and the measurements are in ``docs/supervisor.rst``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from typing import Protocol

import attrs


class Launcher(Protocol):
    """Turns a program's argv into the argv to spawn.

    ``death_signal`` names what the child receives when the agent dies: ``KILL`` for
    programs, ``TERM`` for one whose last duty is to clean up after the others.
    """

    def command(self, argv: Sequence[str], death_signal: str = "KILL") -> tuple[str, ...]: ...


@attrs.frozen
class UtilLinuxLauncher:
    """``setsid setpriv --pdeathsig KILL -- argv``: two execs of small C programs.

    setsid(1) only forks when its caller leads a process group, which a freshly
    spawned child never does, so the pid the agent knows stays the program's pid.
    """

    setsid: str
    setpriv: str

    def command(self, argv: Sequence[str], death_signal: str = "KILL") -> tuple[str, ...]:
        return (self.setsid, self.setpriv, "--pdeathsig", death_signal, "--", *argv)


# Unlike setpriv, this closes the window where the agent dies between fork and prctl:
# the child would then already have been adopted, and getppid() tells.
_PYTHON_WRAPPER = """\
import ctypes, os, signal, sys
PR_SET_PDEATHSIG = 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_PDEATHSIG, signal.Signals["SIG" + sys.argv[2]], 0, 0, 0):
    sys.exit("prctl(PR_SET_PDEATHSIG): " + os.strerror(ctypes.get_errno()))
if os.getppid() != int(sys.argv[1]):
    sys.exit("the hepto agent died before this child started")
os.setsid()
os.execv(sys.argv[3], sys.argv[3:])
"""


@attrs.frozen
class PythonLauncher:
    """The same with the agent's own interpreter, where util-linux is missing (~25 ms more)."""

    python: str = sys.executable

    def command(self, argv: Sequence[str], death_signal: str = "KILL") -> tuple[str, ...]:
        # The pid is read at each spawn: twistd forks to daemonize after makeService.
        return (
            self.python,
            "-I",
            "-S",
            "-c",
            _PYTHON_WRAPPER,
            str(os.getpid()),
            death_signal,
            *argv,
        )


@attrs.frozen
class DirectLauncher:
    """No wrapper: children survive the agent's death.  Only for tests that prove it."""

    def command(self, argv: Sequence[str], death_signal: str = "KILL") -> tuple[str, ...]:
        return tuple(argv)


def default_launcher(path: str | None = None) -> Launcher:
    """util-linux's setsid and setpriv when both are on ``path``, else the Python wrapper."""
    setsid = shutil.which("setsid", path=path)
    setpriv = shutil.which("setpriv", path=path)
    if setsid and setpriv:
        return UtilLinuxLauncher(setsid, setpriv)
    return PythonLauncher()
