"""hepto's pause image: the bundle's ``pause`` program alone, as the pod sandbox image.

A node never pulls it: the agent writes its archive at start, from the ``pause`` program
next to the other upstream programs, and imports it into containerd, whose configuration
pins :data:`PAUSE_IMAGE` as the sandbox image.  ``docs/images.rst`` says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from hepto.images.layout import File, ImageConfig, Recipe, Written, ensure_archive

#: The sandbox image containerd's CRI is configured with; never pulled, always imported.
PAUSE_IMAGE: Final = "localhost/hepto/pause:1"
#: Nobody: the sandbox's one process needs no privilege (as in upstream's pause image).
PAUSE_USER: Final = "65535:65535"


def pause_recipe(program: bytes) -> Recipe:
    return Recipe(
        PAUSE_IMAGE,
        [File("/pause", program, 0o755)],
        ImageConfig(entrypoint=("/pause",), user=PAUSE_USER),
    )


def ensure_pause_archive(program: Path, destination: Path) -> Written | None:
    """Write the pause image's archive from ``program`` unless ``destination`` has it.

    Returns what was written, or None when the archive was already up to date: a
    missing or damaged file, or one made from another program, is replaced atomically.
    Raises OSError when ``program`` cannot be read or ``destination`` written.
    """
    return ensure_archive(pause_recipe(program.read_bytes()), destination)
