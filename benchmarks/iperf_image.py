"""An image with iperf3 and busybox, for the pod network benchmark, never pulled.

Debian's ``/usr/bin/iperf3`` is linked dynamically: the image holds it, every shared
object ``ldd`` lists for it (``libiperf``, ``libcrypto``, ``libsctp``, ``libm``, ``libc``)
at the path ``ldd`` resolved it to, and the dynamic loader named in its ``PT_INTERP``
(``/lib64/ld-linux-x86-64.so.2`` here). With no ``/etc/ld.so.cache`` in the image, the
loader finds the libraries in its built-in directories (``/lib/x86_64-linux-gnu`` on
Debian); ``LD_LIBRARY_PATH`` names their directories as well, whatever the loader's
defaults. Beside it, the busybox of ``tests/images.py`` (``sh``, ``ping``, ``sleep``).
Written with hepto's own archive writer (``hepto.images.layout``).
"""

from __future__ import annotations

import posixpath
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from hepto.images.layout import Entry, File, ImageConfig, Recipe, Written, write_archive

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from images import busybox_recipe

IPERF_IMAGE: Final = "localhost/hepto/iperf3:1"
IPERF: Final = Path("/usr/bin/iperf3")

#: ``libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`` or, for the loader,
#: ``/lib64/ld-linux-x86-64.so.2 (0x...)``; the vDSO has no path and is skipped.
_LDD_LINE: Final = re.compile(r"^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)\s*$")


def shared_objects(binary: Path) -> list[Path]:
    """What the dynamic loader maps for ``binary``, itself included, as ``ldd`` says."""
    listed = subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    found: list[Path] = []
    for line in listed.splitlines():
        if "not found" in line:
            raise RuntimeError(f"{binary}: ldd finds no {line.split()[0]}")
        matched = _LDD_LINE.match(line)
        if matched:
            found.append(Path(matched[1]))
    return found


def program_entries(binary: Path, path: str) -> list[Entry]:
    """``binary`` at ``path`` in the image, and every shared object it needs, each at
    the path ``ldd`` gives (the file's content, symlinks followed)."""
    entries: list[Entry] = [File.copy(path, binary, 0o755)]
    entries += [File.copy(str(library), library, 0o755) for library in shared_objects(binary)]
    return entries


def library_path(entries: Sequence[Entry]) -> str:
    """The directories of the shared objects among ``entries``, for ``LD_LIBRARY_PATH``."""
    directories = sorted({posixpath.dirname(e.path) for e in entries if ".so" in e.path})
    return ":".join(directories)


def iperf_recipe(iperf: Path = IPERF) -> Recipe:
    """busybox and its applets in /bin, and iperf3 with its libraries."""
    program = program_entries(iperf, "/bin/iperf3")
    taken = {entry.path for entry in program}
    busybox = busybox_recipe()
    entries = [entry for entry in busybox.entries if entry.path not in taken] + program
    config = ImageConfig(cmd=("sh",), env=("PATH=/bin", f"LD_LIBRARY_PATH={library_path(program)}"))
    return Recipe(IPERF_IMAGE, entries, config)


def write_iperf_archive(destination: Path, iperf: Path = IPERF) -> Written:
    """Write the image's archive to ``destination``; what it holds, by digest."""
    return write_archive(iperf_recipe(iperf), destination)
