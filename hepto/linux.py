"""The few Linux system calls hepto makes itself: unshare, mount and their kin.

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
CLONE_NEWCGROUP: Final = 0x02000000
CLONE_NEWUTS: Final = 0x04000000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWNET: Final = 0x40000000

MS_RDONLY: Final = 0x1

MS_NOSUID: Final = 0x2
MS_NODEV: Final = 0x4
MS_NOEXEC: Final = 0x8
MS_BIND: Final = 0x1000
MS_REMOUNT: Final = 0x20
MS_REC: Final = 0x4000
MS_PRIVATE: Final = 1 << 18
MS_SLAVE: Final = 1 << 19
MS_SHARED: Final = 1 << 20

MNT_DETACH: Final = 2
PR_SET_PDEATHSIG: Final = 1

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


def setns(descriptor: int, kind: int) -> None:
    """Move into the namespace open at ``descriptor`` (``setns(2)``); for a pid namespace,
    the one the calling process's next children are born in."""
    _check(_c().setns(descriptor, kind), "setns")


def umount(target: str | Path, flags: int = 0) -> None:
    """``umount2(2)``: ``MNT_DETACH`` lets go of a busy mount."""
    _check(_c().umount2(os.fsencode(target), flags), f"umount {target}", target)


def set_parent_death_signal(signal: int) -> None:
    """Receive ``signal`` when the parent dies (``prctl(PR_SET_PDEATHSIG)``)."""
    _check(_c().prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal), 0, 0, 0), "prctl")
