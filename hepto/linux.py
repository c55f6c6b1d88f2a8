"""The few Linux system calls hepto makes itself: unshare and mount.

Python 3.11 has neither ``os.unshare`` nor ``os.mount``; libc has both.  Each wrapper
raises :class:`OSError` with the errno and the path concerned, so that a caller can say
in one sentence what could not be done.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Final

CLONE_NEWNS: Final = 0x00020000

MS_NOSUID: Final = 0x2
MS_NODEV: Final = 0x4
MS_NOEXEC: Final = 0x8
MS_BIND: Final = 0x1000
MS_REC: Final = 0x4000
MS_SLAVE: Final = 1 << 19
MS_SHARED: Final = 1 << 20

_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result: int, what: str, path: str | os.PathLike[str] | None = None) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}", None if path is None else str(path))


def unshare(flags: int) -> None:
    """Move the calling thread into new namespaces (``unshare(2)``)."""
    _check(_c().unshare(flags), "unshare")


def mount(
    source: str | Path | None,
    target: str | Path,
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """``mount(2)``; ``source`` and ``fstype`` may be None where the kernel ignores them."""

    def encoded(value: str | Path | None) -> bytes | None:
        return None if value is None else os.fsencode(value)

    result = _c().mount(
        encoded(source), encoded(target), encoded(fstype), ctypes.c_ulong(flags), encoded(data)
    )
    _check(result, f"mount {source or fstype or ''} on {target}", target)
