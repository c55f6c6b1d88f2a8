"""The periodic backups' directory: how a backup is named, and which files are backups.

``<node dir>/backups/<UTC time, 20260102T030405Z>.hepto-backup``: names sort as times,
so the directory's listing is its history, and no index file can disagree with it.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Final

SUFFIX: Final = ".hepto-backup"
DIRECTORY: Final = "backups"
_STAMP: Final = "%Y%m%dT%H%M%SZ"


def utc_iso(seconds: float) -> str:
    """``2026-01-02T03:04:05Z``: how backups say when they were taken."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def backup_name(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime(_STAMP) + SUFFIX


def taken_at(path: Path) -> float | None:
    """When the backup at ``path`` was taken, from its name; None if it is not one."""
    if not path.name.endswith(SUFFIX):
        return None
    try:
        moment = datetime.datetime.strptime(path.name.removesuffix(SUFFIX), _STAMP)
    except ValueError:
        return None
    return moment.replace(tzinfo=datetime.UTC).timestamp()


def backups(directory: Path) -> list[Path]:
    """The backups in ``directory``, oldest first."""
    try:
        paths = sorted(directory.iterdir())
    except FileNotFoundError:
        return []
    return [path for path in paths if taken_at(path) is not None and path.is_file()]
