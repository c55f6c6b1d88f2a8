"""Telling when a file appears in a directory: a socket, a configuration file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import inotify, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from hepto.waiters import Waiters


class FileWatch:
    """Tells when a file appears in a directory: through inotify, without polling.

    Where no inotify instance can be had (``fs.inotify.max_user_instances`` is spent,
    as when a test runs a hundred agents on one machine), it looks every
    ``fallback_interval`` seconds instead, and says so once.
    """

    log = Logger()

    def __init__(self, reactor: Any, directory: Path, fallback_interval: float = 1.0) -> None:
        self.directory = directory
        self._waiting: dict[str, Waiters[None]] = {}
        self._notifier: inotify.INotify | None = None
        self._looking: task.LoopingCall | None = None
        try:
            self._notifier = inotify.INotify(reactor)
        except inotify.INotifyError as error:
            self.log.warn(
                "No inotify for {directory} ({error}): looking every {interval} s",
                directory=str(directory),
                error=str(error),
                interval=fallback_interval,
            )
            self._looking = task.LoopingCall(self._look)
            self._looking.clock = reactor
            self._looking.start(fallback_interval, now=False)
            return
        self._notifier.startReading()
        self._notifier.watch(
            FilePath(str(directory)),
            mask=inotify.IN_CREATE | inotify.IN_MOVED_TO,
            callbacks=[self._notified],
        )

    def appeared(self, name: str) -> Deferred[None]:
        waiter = self._waiting.setdefault(name, Waiters()).wait()
        # Checked after the watch exists, so a creation in between cannot be missed.
        if (self.directory / name).exists():
            self._fire(name)
        return waiter

    def _notified(self, _: object, path: FilePath[Any], mask: int) -> None:
        # INotify hands over bytes paths, whatever mode the watch was made in.
        self._fire(path.asTextMode().basename())

    def _look(self) -> None:
        for name in [name for name in self._waiting if (self.directory / name).exists()]:
            self._fire(name)

    def _fire(self, name: str) -> None:
        waiters = self._waiting.pop(name, None)
        if waiters is not None:
            waiters.fire(None)

    def close(self) -> None:
        if self._notifier is not None:
            self._notifier.loseConnection()
        if self._looking is not None and self._looking.running:
            self._looking.stop()
