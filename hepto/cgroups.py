"""cgroup hierarchies: which are mounted, how to mount them where none are, making a cgroup.

The agent's runtime (:mod:`hepto.kube.host`) and the container (:mod:`hepto.container`)
both need them, and both may run where ``ip netns exec`` left a fresh sysfs without
any hierarchy.  Planning is pure; :func:`mount_hierarchies` and :func:`make_cgroup` do
the system calls.
"""

from __future__ import annotations

import contextlib
from pathlib import Path, PurePosixPath
from typing import Final

import attrs

from hepto import linux

CGROUP_MOUNT: Final = Path("/sys/fs/cgroup")

#: cpuset cgroups accept no process until these are set; new ones start empty.
CPUSET_FILES: Final = ("cpuset.cpus", "cpuset.mems")


@attrs.frozen
class Hierarchy:
    """A cgroup hierarchy mounted (or to be mounted) at ``path``."""

    path: Path
    version: int
    #: v1 mount options naming its controllers: ``("cpu",)``, ``("name=systemd",)``.
    controllers: tuple[str, ...] = ()

    @property
    def is_freezer(self) -> bool:
        return "freezer" in self.controllers

    @property
    def is_cpuset(self) -> bool:
        return "cpuset" in self.controllers


@attrs.frozen
class Mount:
    source: str
    target: Path
    fstype: str
    data: str | None = None
    flags: int = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal ``\\NNN``."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def cgroup_hierarchies(mountinfo: str) -> list[Hierarchy]:
    """The cgroup hierarchies mounted in a mount namespace, from its ``mountinfo``."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        if len(fields) < separator + 4 or len(fields) < 5:
            continue
        fstype, super_options = fields[separator + 1], fields[separator + 3]
        path = Path(_unescape(fields[4]))
        if fstype == "cgroup2":
            found.append(Hierarchy(path, 2))
        elif fstype == "cgroup":
            controllers = tuple(
                option for option in super_options.split(",") if option not in ("rw", "ro")
            )
            found.append(Hierarchy(path, 1, controllers))
    return found


def plan_cgroup_mounts(proc_cgroup: str, root: Path = CGROUP_MOUNT) -> list[Mount]:
    """How to mount this process's cgroup hierarchies, from its ``/proc/self/cgroup``.

    For a namespace that has none (``ip netns exec`` mounts a fresh sysfs, which hides
    the host's ``/sys/fs/cgroup``): a tmpfs, then each v1 hierarchy in a directory named
    after its controllers, and the unified hierarchy in ``unified`` beside them (the
    hybrid layout of systemd); on a host of cgroup v2 alone, cgroup2 at the root.
    """
    version1: list[tuple[str, ...]] = []
    unified = False
    for line in proc_cgroup.splitlines():
        number, _, rest = line.partition(":")
        names, _, _ = rest.partition(":")
        if not number:
            continue
        if number == "0" and names == "":
            unified = True
        elif names:
            version1.append(tuple(names.split(",")))
    if not version1:
        return [Mount("cgroup2", root, "cgroup2")] if unified else []
    mounts = [Mount("tmpfs", root, "tmpfs", "mode=755")]
    for hierarchy in version1:
        name = ",".join(controller.removeprefix("name=") for controller in hierarchy)
        options = ",".join(hierarchy)
        if all(controller.startswith("name=") for controller in hierarchy):
            options = "none," + options
        mounts.append(Mount("cgroup", root / name, "cgroup", options))
    if unified:
        mounts.append(Mount("cgroup2", root / "unified", "cgroup2"))
    return mounts


def mount_hierarchies(proc: Path = Path("/proc"), root: Path = CGROUP_MOUNT) -> list[Hierarchy]:
    """The cgroup hierarchies of this mount namespace, mounted first if it shows none."""
    present = cgroup_hierarchies((proc / "self" / "mountinfo").read_text())
    if present:
        return present
    for step in plan_cgroup_mounts((proc / "self" / "cgroup").read_text(), root):
        step.target.mkdir(parents=True, exist_ok=True)
        linux.mount(step.source, step.target, step.fstype, step.flags, step.data)
    return cgroup_hierarchies((proc / "self" / "mountinfo").read_text())


def make_cgroup(hierarchy: Hierarchy, cgroup: PurePosixPath) -> Path:
    """Create ``cgroup`` (and its parents) in a v1 ``hierarchy``; return its directory.

    In the cpuset hierarchy each new level gets its parent's CPUs and memory nodes:
    an empty cpuset accepts no process.
    """
    directory = hierarchy.path
    for part in cgroup.relative_to("/").parts:
        parent, directory = directory, directory / part
        # Other nodes' agents on this host make the same parents at the same moment.
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
        if hierarchy.is_cpuset:
            for name in CPUSET_FILES:
                if not (directory / name).read_text().strip():
                    (directory / name).write_text((parent / name).read_text())
    return directory
