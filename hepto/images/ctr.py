"""``ctr images import``: its command lines, what it answers, and a blocking run.

One import is two ctr commands.  The first imports the archive through containerd's
transfer service (the default: containerd reads the stream, decompresses gzip, keeps
this machine's platform and unpacks it), labelling every image it names with a token
of this import.  ctr's own output cannot say which images those were: it is a progress
display for a terminal, which cuts names to 40 characters and turns ``-`` into spaces.
So the second command asks containerd which images carry the token, with their
digests.  ``docs/images.rst`` gives the flags and the reasons.

Nothing here runs at import time; :func:`import_archive_blocking` is for the ``hepto``
command (the agent's flavour, on the reactor, is :mod:`hepto.images.importer`).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import attrs

#: containerd's namespace for what the kubelet runs (the CRI plugin's).
KUBERNETES_NAMESPACE: Final = "k8s.io"
#: The label whose value ties images to the import that named them (a fresh token).
IMPORT_LABEL: Final = "hepto.images.import"
#: Seconds a blocking import may take: archives may be gigabytes on a slow disk.
IMPORT_TIMEOUT: Final = 3600.0
#: Seconds asking containerd for a list may take.
LIST_TIMEOUT: Final = 60.0


class CtrError(Exception):
    """ctr failed; ``str()`` says what it was doing and why, with ctr's own words."""


@attrs.frozen
class Image:
    """An image containerd holds: its name, the digest its name points at, and the
    platforms it offers (``linux/amd64``; empty when unknown)."""

    name: str
    digest: str
    platforms: tuple[str, ...] = ()


def new_token() -> str:
    return os.urandom(8).hex()


def _global(ctr: Path, socket: Path, namespace: str) -> list[str]:
    return [str(ctr), "--address", str(socket), "--namespace", namespace]


def import_command(
    ctr: Path, socket: Path, archive: Path, token: str, namespace: str = KUBERNETES_NAMESPACE
) -> list[str]:
    """Import ``archive``, every image it names labelled with ``token``.

    No ``--all-platforms``: this machine's platform only, the one its pods run, and the
    only one a single-platform ``docker save`` of a multi-platform image has content
    for.  No ``--local``: the transfer service reads gzip, the client-side import does
    not.  No ``--digests``/``--base-name``: the archive's own names, no made-up ones.
    """
    return [
        *_global(ctr, socket, namespace),
        "images",
        "import",
        "--label",
        f"{IMPORT_LABEL}={token}",
        str(archive),
    ]


def list_command(
    ctr: Path, socket: Path, token: str, namespace: str = KUBERNETES_NAMESPACE
) -> list[str]:
    """List the images the import labelled with ``token``."""
    return [*_global(ctr, socket, namespace), "images", "ls", f'labels."{IMPORT_LABEL}"=={token}']


def parse_listing(text: str) -> list[Image]:
    """The images of a ``ctr images ls`` table.

    Cells are cut at the offsets of the header's words (Go's tabwriter pads each column
    to its widest cell) since a size holds a space (``625.8 KiB``).  Raises ValueError
    when the text is not such a table.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("no output at all")
    words = list(re.finditer(r"\S+", lines[0]))
    columns = [word.group() for word in words]
    if columns[:3] != ["REF", "TYPE", "DIGEST"] or "PLATFORMS" not in columns:
        raise ValueError(f"not the table of ctr images ls: {lines[0].strip()!r}")
    ends = [word.start() for word in words[1:]] + [None]
    images = []
    for line in lines[1:]:
        cells = {
            column: line[word.start() : end].strip()
            for column, word, end in zip(columns, words, ends, strict=True)
        }
        name, digest = cells["REF"], cells["DIGEST"]
        if not name or " " in name or not digest.startswith("sha256:"):
            raise ValueError(f"not a line of ctr images ls: {line.strip()!r}")
        platforms = tuple(p for p in cells["PLATFORMS"].split(",") if p and p != "-")
        images.append(Image(name, digest, platforms))
    return images


def failure(stderr: bytes | str) -> str:
    """ctr's own reason for failing: its ``ctr: ...`` line, else the rest of its errors.

    Every ctr call on a cgroup v1 host also logs a deprecation warning: not a reason.
    """
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reasons = [line.removeprefix("ctr: ") for line in lines if line.startswith("ctr: ")]
    if not reasons:
        reasons = [
            line for line in lines if "level=warning" not in line and "DEPRECATION" not in line
        ]
    return "; ".join(reasons) or "no reason given"


def _status(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def import_failed(code: int, stderr: bytes | str) -> CtrError:
    return CtrError(f"ctr images import failed ({_status(code)}): {failure(stderr)}")


def list_failed(code: int, stderr: bytes | str) -> CtrError:
    return CtrError(f"ctr images ls failed after the import ({_status(code)}): {failure(stderr)}")


def named_nothing() -> CtrError:
    return CtrError("ctr imported it but named no image: the archive gives none a full name")


def _run(command: Sequence[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    # An empty environment, as in the agent's (hepto.images.importer.run says why).
    try:
        return subprocess.run(
            command, capture_output=True, env={}, stdin=subprocess.DEVNULL, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise CtrError(f"ctr did not finish within {timeout:g} s: {' '.join(command)}") from None
    except OSError as error:
        raise CtrError(f"cannot run {command[0]}: {error.strerror or error}") from None


def import_archive_blocking(
    ctr: Path, socket: Path, archive: Path, namespace: str = KUBERNETES_NAMESPACE
) -> list[Image]:
    """Import ``archive`` and wait: the images it named, with their digests.

    Raises :class:`CtrError` when ctr fails or names nothing.
    """
    token = new_token()
    done = _run(import_command(ctr, socket, archive, token, namespace), IMPORT_TIMEOUT)
    if done.returncode != 0:
        raise import_failed(done.returncode, done.stderr)
    listing = _run(list_command(ctr, socket, token, namespace), LIST_TIMEOUT)
    if listing.returncode != 0:
        raise list_failed(listing.returncode, listing.stderr)
    try:
        images = parse_listing(listing.stdout.decode("utf-8", "replace"))
    except ValueError as error:
        raise CtrError(f"cannot read ctr's list of images: {error}") from None
    if not images:
        raise named_nothing()
    return images
