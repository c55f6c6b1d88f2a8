"""The agent's exit status when it stops on an error once the reactor runs.

An error found before the reactor runs stops ``twistd`` with ``SystemExit``: one line on
standard error, status 1.  Once the reactor runs, ``twistd`` has no such way: whatever
stopped the reactor, it removes its pid file, stops its log and returns, and the process
exits with status 0, which ``Restart=on-failure`` (docs/systemd.rst) and whoever started
the agent would read as a requested stop.  :func:`exit_after_twistd` keeps that error's
line and status until ``twistd`` is done, then says the line and exits with the status.
"""

from __future__ import annotations

import atexit
import os
import sys


def exit_after_twistd(status: int, message: str) -> None:
    """Once ``twistd`` has returned, print ``message`` on standard error and exit with
    ``status``.

    Registered last, the exit handler runs first among the interpreter's: twistd's pid
    file and log are closed by then, and the other handlers (the standard library's
    ``logging``, unused by hepto) are skipped, as ``os._exit`` skips them.
    """

    def leave() -> None:
        # twistd's log took sys.stdout and sys.stderr, and is closed by now: the line
        # goes to the standard error the process was given.
        for stream in (sys.stdout, sys.__stdout__):
            if stream is not None:
                stream.flush()
        os.write(2, message.encode("utf-8", "replace") + b"\n")
        os._exit(status)

    atexit.register(leave)
