"""The node's directory: made with exact modes, and refused if a local user could swap it.

A node keeps its private keys and what it trusts (the identities and the CA it pinned)
in ``<data-dir>/<cluster>/<name>/``.  Mode 0700 keeps other users out of that directory,
but not out of the ones above it: whoever may write one of them may rename the node's
directory away and put their own in its place, with their own keys and pins, which the
node would then load as its own.  So, before anything starts:

- every existing directory above the node's, up to ``/``, must belong to root or to the
  agent's user, and must not be writable by group or others unless it is sticky (as
  ``/tmp``: there, only an entry's owner may rename it);
- the missing ones are made 0755 and the node's directory 0700, whatever the umask;
- the node's directory, and every file in it that holds a secret or a pin, must belong
  to the agent's user, must not be writable by group or others, and must not be a
  symbolic link (one made by somebody else points wherever they like).

``docs/threat-model.rst`` says what this leaves a local user.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

PARENT_MODE: Final = 0o755
NODE_DIR_MODE: Final = 0o700
_WRITABLE_BY_OTHERS: Final = stat.S_IWGRP | stat.S_IWOTH

#: The node's files that hold a secret or a pin, as their loaders name them: the identity
#: (hepto.gossip.identity, also the WireGuard key), the WireGuard key that versions before
#: it kept (no longer read, but still a secret while it lies there), the pinned identities
#: (hepto.gossip.persistence), the manhole's host key and its default authorized keys
#: (hepto.manhole).  Spelt out rather than imported: the manhole's module loads Conch,
#: which an agent without a manhole must not.
TRUSTED_FILES: Final = (
    "identity.key",
    "wireguard.key",
    "gossip-state.json",
    "manhole_host_key",
    "authorized_keys",
)
#: The PKI's tree, where every file counts: keys, certificates, the pinned CA, the CAs.
TRUSTED_TREE: Final = "pki"


class UnsafePath(Exception):
    """A path a local user could have tampered with; ``str()`` says which, why, and the fix."""


def prepare_node_dir(node_dir: Path) -> None:
    """Check what exists of ``node_dir``'s path, make the rest, check what it holds.

    Raises :class:`UnsafePath`, or :class:`OSError` when a directory cannot be made.
    """
    parent = node_dir.parent
    existing = deepest_existing(parent)
    check_ancestors(existing)
    # Made top-down, each in a directory just checked or made: nobody else can get in.
    for path in _top_down(parent):
        if not os.path.lexists(path):
            make_directory(path, PARENT_MODE)
    make_or_check_node_dir(node_dir)
    check_trusted_files(node_dir)


def deepest_existing(path: Path) -> Path:
    """``path`` or its deepest ancestor that exists (as a link, even a dangling one)."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_ancestors(directory: Path) -> None:
    """``directory`` and those above it, as written and once links are resolved."""
    written = _top_down(directory)
    resolved = _top_down(Path(os.path.realpath(directory)))
    for path in dict.fromkeys([*written, *resolved]):
        check_ancestor(path)


def _top_down(path: Path) -> Iterator[Path]:
    yield from reversed(path.parents)
    yield path


def check_ancestor(path: Path) -> None:
    """Refuse a directory (or a link) above the node's that somebody else controls."""
    # lstat: in a sticky directory, a link's owner may point it elsewhere at any time;
    # where it leads is checked too, as part of the resolved path.
    status = os.lstat(path)
    me = os.geteuid()
    if status.st_uid not in (0, me):
        raise UnsafePath(
            f"{path} belongs to uid {status.st_uid}, who could swap the node's directory "
            f"below it: make it root's (chown root {path}) or choose another data directory"
        )
    if stat.S_ISLNK(status.st_mode):
        return  # A link's own mode means nothing.
    if status.st_mode & _WRITABLE_BY_OTHERS and not status.st_mode & stat.S_ISVTX:
        raise UnsafePath(
            f"{path} is writable by group or others without the sticky bit, so any local "
            f"user could swap the node's directory below it: chmod go-w {path}"
        )


def make_directory(path: Path, mode: int) -> None:
    """Make ``path`` with exactly ``mode``: the umask only ever takes bits away."""
    os.mkdir(path, mode)
    os.chmod(path, mode)


def make_or_check_node_dir(node_dir: Path) -> None:
    """Make the node's directory 0700; an existing one must be this agent's own."""
    try:
        make_directory(node_dir, NODE_DIR_MODE)
    except FileExistsError:
        check_own(node_dir)
        # Readable by others is no swap, but the directory holds private keys.
        os.chmod(node_dir, NODE_DIR_MODE)


def check_own(path: Path) -> None:
    """Refuse a file or directory of the node's that another user made or may replace."""
    status = os.lstat(path)
    if stat.S_ISLNK(status.st_mode):
        raise UnsafePath(
            f"{path} is a symbolic link, which leads wherever its maker chooses: put the "
            "real file or directory there instead"
        )
    me = os.geteuid()
    if status.st_uid != me:
        raise UnsafePath(
            f"{path} belongs to uid {status.st_uid}, not to this agent's user (uid {me}), "
            "so another user may have put it there: move it away, or if you know it is "
            f"this node's, chown -R {me} {path}"
        )
    if status.st_mode & _WRITABLE_BY_OTHERS:
        raise UnsafePath(
            f"{path} is writable by group or others, so any of them could have replaced "
            f"what the node trusts: check it, then chmod go-w {path}"
        )


def check_trusted_files(node_dir: Path) -> None:
    """Every file of the node's directory that holds a secret or a pin is its own."""
    for name in TRUSTED_FILES:
        path = node_dir / name
        if os.path.lexists(path):
            check_own(path)
    tree = node_dir / TRUSTED_TREE
    if os.path.lexists(tree):
        check_own(tree)
        for path in _tree(tree):
            check_own(path)


def _tree(root: Path) -> Iterator[Path]:
    """Everything below ``root``; links are listed, never followed."""
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        for name in [*subdirectories, *sorted(files)]:
            yield Path(directory) / name
