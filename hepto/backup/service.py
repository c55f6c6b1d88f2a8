"""Periodic backups on every master: one every 12 hours, the last 5 kept.

The agent stays lean: it only keeps the timer and the list of files.  Each backup is
taken by a child, ``python -m hepto.backup.take`` (the code of ``hepto backup``), which
holds the snapshot in memory for a few seconds and exits; the agent reads one JSON line
from it.  Backups go to ``<node dir>/backups/<UTC time>.hepto-backup`` (0600, in a 0700
directory); after each one, the oldest beyond ``keep`` are deleted.  The next backup is
due ``interval`` after the newest one on disk, so a restarted master neither takes one
at every start nor postpones it forever; a failure (etcd not up yet, a full disk) is
logged and retried after 1, 2, 4 … up to 60 minutes.  ``hepto status`` shows the last
backup, the next, and the last failure.  ``hepto backup`` asks for one now through the
control socket (``backup_command``): the agent holds the cluster key and runs etcd in
its own network namespace, contained or not, so the command needs neither.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger
from twisted.python.failure import Failure

from hepto.backoff import Backoff, BackoffPolicy
from hepto.backup.sealing import BackupError
from hepto.backup.store import backup_name, backups, taken_at, utc_iso
from hepto.config import DEFAULT_BACKUP_INTERVAL_HOURS, DEFAULT_BACKUP_KEEP, env_name
from hepto.control import RequestError

DEFAULT_INTERVAL: Final = DEFAULT_BACKUP_INTERVAL_HOURS * 3600
DEFAULT_KEEP: Final = DEFAULT_BACKUP_KEEP
#: After a start with no recent backup: time for etcd to come up first.
FIRST_DELAY: Final = 300.0
RETRY: Final = BackoffPolicy(initial=60.0, factor=2.0, maximum=3600.0, stable_after=0.0)
#: Takes a backup into the path given; fires with what ``hepto.backup.take`` printed.
Take = Callable[[Path], "Deferred[dict[str, Any]]"]


def take_in_child(
    reactor: IReactorProcess, node_dir: Path, cluster: str, name: str, keyring: Sequence[bytes]
) -> Take:
    """Backups taken by ``python -m hepto.backup.take``, the key in its environment."""

    def take(out: Path) -> Deferred[dict[str, Any]]:
        done = getProcessOutputAndValue(
            sys.executable,
            ["-m", "hepto.backup.take", str(node_dir), cluster, name, str(out)],
            env={
                env_name("key"): ",".join(key.hex() for key in keyring),
                "PATH": os.environ.get("PATH", os.defpath),
            },
            reactor=reactor,
        )

        def read(result: tuple[bytes, bytes, int]) -> dict[str, Any]:
            stdout, stderr, code = result
            if code != 0:
                lines = stderr.decode(errors="replace").strip().splitlines()
                raise BackupError(lines[-1] if lines else f"exited with status {code}")
            answer: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
            return answer

        return done.addCallback(read)

    return take


class BackupService(Service):
    """Takes a backup every ``interval`` seconds into ``directory``, keeps ``keep``."""

    name = "backup"
    log = Logger()

    def __init__(
        self,
        directory: Path,
        take: Take,
        clock: IReactorTime,
        interval: float = DEFAULT_INTERVAL,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        self.directory = directory
        self._take = take
        self._clock = clock
        self.interval = interval
        self.keep = keep
        self._backoff = Backoff(RETRY)
        self._call: IDelayedCall | None = None
        self._running: Deferred[dict[str, Any]] | None = None
        self.last: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.failures = 0

    def startService(self) -> None:
        super().startService()
        self.directory.mkdir(mode=0o700, exist_ok=True)
        existing = backups(self.directory)
        newest_at = taken_at(existing[-1]) if existing else None
        if existing and newest_at is not None:
            self.last = {
                "path": str(existing[-1]),
                "size": existing[-1].stat().st_size,
                "created": utc_iso(newest_at),
            }
            self._schedule(max(newest_at + self.interval - self._clock.seconds(), FIRST_DELAY))
        else:
            self._schedule(self.interval)

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self, delay: float) -> None:
        """The next backup in ``delay`` seconds; never with an interval of 0 (none)."""
        if self.interval > 0 and self.running:
            self._call = self._clock.callLater(delay, self._due)

    def _due(self) -> None:
        self._call = None
        taking = self.take_now()
        if taking is not None:
            taking.addErrback(lambda failure: None)  # logged and counted by _failed

    def take_now(self) -> Deferred[dict[str, Any]] | None:
        """Take a backup now, unless one is under way; the timer then starts afresh.

        The Deferred fires with what the child printed, or fails with its error.
        """
        if self._running is not None:
            return None
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        out = self.directory / backup_name(self._clock.seconds())
        self.log.info("Taking a backup of the master into {path}", path=str(out))
        running = self._running = self._take(out)
        running.addBoth(self._done)
        running.addCallbacks(self._taken, self._failed)
        return running

    def backup_command(self, request: Mapping[str, Any]) -> Deferred[Mapping[str, Any]]:
        """``{"command": "backup"}``, for ``hepto backup``: one now, answered once written."""

        def refused(failure: Failure) -> NoReturn:
            failure.trap(BackupError)
            raise RequestError(str(failure.value))

        return self._next_backup().addErrback(refused)

    def _next_backup(self) -> Deferred[dict[str, Any]]:
        """A backup started now, or once the one under way is done: the operator asked
        for the cluster as it is, which the one under way may have been taken before."""
        taking = self.take_now()
        if taking is not None:
            return taking
        assert self._running is not None
        waited: Deferred[None] = Deferred()

        def after(result: object) -> object:
            waited.callback(None)
            return result  # untouched, for whoever else waits on it

        self._running.addBoth(after)
        return waited.addCallback(lambda _: self._next_backup())

    def _taken(self, taken: dict[str, Any]) -> dict[str, Any]:
        self.last = taken
        self.last_error = None
        self._backoff.reset()
        self.log.info(
            "Backup {path}: {size} bytes in {seconds} s", path=taken.get("path"),
            size=taken.get("size"), seconds=taken.get("seconds"),
        )  # fmt: skip
        self._prune()
        self._schedule(self.interval)
        return taken

    def _failed(self, failure: Failure) -> Failure:
        self.failures += 1
        self.last_error = str(failure.value)
        delay = self._backoff.failed()
        self.log.error(
            "Backup failed ({failures} in a row): {error}; trying again in {delay:.0f} s",
            failures=self._backoff.failures, error=self.last_error, delay=delay,
        )  # fmt: skip
        self._schedule(delay)
        return failure

    def _done(self, result: object) -> object:
        self._running = None
        return result

    def _prune(self) -> None:
        for old in backups(self.directory)[: -self.keep]:
            try:
                old.unlink()
            except OSError as error:
                self.log.warn("Cannot delete the old backup {path}: {error}", path=str(old),
                              error=error.strerror)  # fmt: skip
            else:
                self.log.info("Deleted the old backup {path}", path=str(old))

    def status(self) -> dict[str, Any]:
        # The reactor's clock is the wall clock: the timer's time is a date.
        next_at = None
        if self._call is not None and self._call.active():
            next_at = utc_iso(self._call.getTime())
        return {
            "directory": str(self.directory),
            "interval": self.interval,
            "keep": self.keep,
            "last": self.last,
            "next": next_at,
            "running": self._running is not None,
            "kept": len(backups(self.directory)),
            "failures": self.failures,
            "last_error": self.last_error,
        }
