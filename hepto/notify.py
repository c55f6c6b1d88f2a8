"""systemd's notification protocol: one datagram of ``KEY=value`` lines to ``$NOTIFY_SOCKET``.

https://www.freedesktop.org/software/systemd/man/sd_notify.html : the variable names a
unix datagram socket, a path or, starting with ``@``, an abstract name.  No dependency:
the protocol is one ``sendto``.  Without the variable (not run by systemd, or by a unit
not of ``Type=notify``) nothing is sent.

A contained node's agent cannot reach systemd's socket (a private ``/run``, and an
abstract name belongs to a network namespace), and systemd would not believe it anyway
(only the unit's main process may speak, by default): :class:`Relay` runs in the outer
process, the unit's main process, and forwards what the agent sends to a socket of its
own.  No Twisted here: the outer process imports none.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Final

VARIABLE: Final = "NOTIFY_SOCKET"
#: A notification is a few lines; systemd itself reads at most a page or so per datagram.
MAX_DATAGRAM: Final = 4096


def socket_address(value: str) -> str:
    """The ``sockaddr_un`` path of ``$NOTIFY_SOCKET``: ``@name`` is the abstract ``\\0name``."""
    return "\0" + value[1:] if value.startswith("@") else value


def send(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (``READY=1``, ``STOPPING=1``, ``STATUS=...``, newline-separated).

    False if there is nowhere to send it; OSError if the socket refuses it.
    """
    value = (os.environ if environ is None else environ).get(VARIABLE)
    if not value:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sender:
        sender.sendto(message.encode("utf-8"), socket_address(value))
    return True


class Relay:
    """A datagram socket at ``path`` whose every datagram goes on to ``target``, from
    this process: a daemon thread, since the outer process blocks in ``waitpid``."""

    def __init__(self, path: Path, target: str) -> None:
        self.path = path
        self.target = socket_address(target)
        path.unlink(missing_ok=True)  # left by a killed predecessor
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.bind(str(path))
        os.chmod(path, 0o600)  # only root (the agent) may speak for the unit
        self._thread = threading.Thread(target=self._forward, name="notify relay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _forward(self) -> None:
        while True:
            try:
                datagram = self._socket.recv(MAX_DATAGRAM)
            except OSError:
                return  # closed
            try:
                self._socket.sendto(datagram, self.target)
            except OSError:
                pass  # systemd gone, or not listening: nothing more to tell it

    def close(self) -> None:
        self._socket.close()
        self.path.unlink(missing_ok=True)
