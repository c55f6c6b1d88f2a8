"""Images for tests and the demo, written with hepto's own archive writer.

``localhost/hepto/busybox:1`` is Debian's busybox-static (tools/install-deps installs it)
with one symlink per applet: a shell and the usual tools, about 1 MiB compressed, built
in a fraction of a second and never pulled.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Final

from hepto.images.layout import (
    Directory,
    Entry,
    File,
    ImageConfig,
    Recipe,
    Symlink,
    Written,
    write_archive,
)

BUSYBOX_IMAGE: Final = "localhost/hepto/busybox:1"
BUSYBOX: Final = Path("/bin/busybox")

_PASSWD: Final = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
_GROUP: Final = b"root:x:0:\nnogroup:x:65534:\n"


def busybox_recipe(busybox: Path = BUSYBOX) -> Recipe:
    """busybox and its applets in /bin, a root and a nobody, ``sh`` as the command."""
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    entries: list[Entry] = [File.copy("/bin/busybox", busybox, 0o755)]
    entries += [Symlink(f"/bin/{applet}", "busybox") for applet in applets if applet != "busybox"]
    entries += [Directory(path) for path in ("/etc", "/proc", "/sys", "/dev", "/var")]
    entries += [Directory("/tmp", 0o1777), Directory("/root", 0o700)]
    entries += [File("/etc/passwd", _PASSWD), File("/etc/group", _GROUP)]
    return Recipe(BUSYBOX_IMAGE, entries, ImageConfig(cmd=("sh",), env=("PATH=/bin",)))


def write_busybox_archive(destination: Path, busybox: Path = BUSYBOX) -> Written:
    """Write the busybox image's archive to ``destination``; what it holds, by digest."""
    return write_archive(busybox_recipe(busybox), destination)
