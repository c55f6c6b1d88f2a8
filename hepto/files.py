"""Writing a file so that no reader and no crash ever sees half of it.

Every file hepto writes whole (keys, certificates, its saved state, the configuration
of the programs it runs) goes through :func:`write_atomically`.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: a reader sees the old file or the new, never half.

    The new file has ``mode`` from its creation (a secret is never readable by others,
    even for an instant), is written beside ``path`` without following a link there, and
    is on disk, renamed, before this returns: a crash leaves the old file or the new.
    The directory must exist.
    """
    content = data.encode("utf-8") if isinstance(data, str) else data
    aside = path.with_name(f".{path.name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    descriptor = os.open(aside, flags, mode)
    try:
        os.fchmod(descriptor, mode)
        view = memoryview(content)
        while view:
            view = view[os.write(descriptor, view) :]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(aside, path)
    directory = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(directory)  # the rename itself
    finally:
        os.close(directory)
