"""UNIX socket paths of any length.

``sun_path`` holds 108 bytes with its terminating NUL, and a data directory named after a
long cluster and node name (or a deep working directory) goes past it.  Binding or
connecting with such a path fails, and Twisted's UNIX client reports that failure as a
``TypeError`` in a timed call rather than as a connection error, leaving the attempt to
time out.  The same file is reachable through ``/proc/self/fd`` and an open descriptor of
its directory, which is always short.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from twisted.internet.defer import Deferred

SUN_PATH_MAX: Final = 107

T = TypeVar("T")


class ShortPath:
    """``path`` names the same socket file as the one given, in at most 107 bytes.

    The descriptor, if one was needed, stays open until ``close``: whoever binds must keep
    it while listening, since the lock file and the unlink at stop use the same path.
    """

    def __init__(self, path: Path) -> None:
        self._directory: int | None = None
        if len(os.fsencode(path)) <= SUN_PATH_MAX:
            self.path = str(path)
            return
        self._directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        self.path = f"/proc/self/fd/{self._directory}/{path.name}"

    def close(self) -> None:
        if self._directory is not None:
            os.close(self._directory)
            self._directory = None


def connecting(path: Path, connect: Callable[[str], Deferred[T]]) -> Deferred[T]:
    """``connect(short_path)``, the descriptor behind the short path closed once it fires.

    A directory that does not exist fails the Deferred with FileNotFoundError, as a
    connection to a missing socket would.
    """
    try:
        short = ShortPath(path)
    except OSError as error:
        failed: Deferred[T] = Deferred()
        failed.errback(error)
        return failed

    def closed(result: T) -> T:
        short.close()
        return result

    try:
        attempt = connect(short.path)
    except BaseException:
        short.close()
        raise
    return attempt.addBoth(closed)
