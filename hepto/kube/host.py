"""The host as a node's runtime needs it, without changing the host itself.

containerd, the kubelet and the shims must share one mount namespace in which the
cgroup hierarchies are mounted; the kubelet rewrites three machine-wide sysctls unless
they already hold its values; it and the CNI plugins write to a few host paths whatever
their settings say.  A node's agent therefore moves into a mount namespace of its own
(a slave of the host's: the host's new mounts still appear in it, its own never leave
it) and there mounts what is missing, shadows the sysctls and the host paths.  Nothing
of this is seen outside the agent and its children, and it all vanishes with them.

Planning (:mod:`hepto.cgroups` for the hierarchies) is pure; the few
system calls are in :func:`enter_private_mount_namespace` and :class:`HostSetup`.
``docs/nodes.rst`` gives the rationale of each step.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Final

import attrs

from hepto import linux
from hepto.cgroups import (
    CGROUP_MOUNT,
    Hierarchy,
    cgroup_hierarchies,
    make_cgroup,
    mount_hierarchies,
)
from hepto.mesh.rtnetlink import Netlink, RtNetlink

#: The values the kubelet wants (``pkg/kubelet/cm/container_manager_linux.go``), which it
#: writes machine-wide unless they are already so; ``protectKernelDefaults`` makes it
#: refuse to start instead.  hepto shows it these values in its own mount namespace only.
KUBELET_SYSCTLS: Final[Mapping[str, str]] = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}

#: Paths the kubelet (device plugins' socket, container log links) and libcni (its
#: cache) write to whatever their root directories are: each node gets its own.
PRIVATE_HOST_PATHS: Final = (
    Path("/var/lib/kubelet"),
    Path("/var/log/containers"),
    Path("/var/lib/cni"),
)


class HostError(Exception):
    """The host cannot be prepared for the runtime; the message says what and why."""


def cgroup_directories(hierarchies: Iterable[Hierarchy], cgroup: PurePosixPath) -> list[Path]:
    """Where ``cgroup`` lives in each hierarchy."""
    relative = cgroup.relative_to("/")
    return [hierarchy.path / relative for hierarchy in hierarchies]


def tracking_hierarchy(hierarchies: Sequence[Hierarchy]) -> Hierarchy:
    """The hierarchy that lists a node's processes: every process is in each one.

    The freezer's when there is one, since it can also stop them from forking while
    they are killed; else cgroup2, else the first.
    """
    for wanted in (lambda h: h.is_freezer, lambda h: h.version == 2):
        for hierarchy in hierarchies:
            if wanted(hierarchy):
                return hierarchy
    if not hierarchies:
        raise HostError("no cgroup hierarchy is mounted")
    return hierarchies[0]


def has_capability(status: str, capability: int) -> bool:
    """Whether ``CapBnd`` in a ``/proc/<pid>/status`` text holds ``capability``."""
    for line in status.splitlines():
        if line.startswith("CapBnd:"):
            return bool(int(line.split()[1], 16) >> capability & 1)
    return False


#: Lowering an oom_score_adj needs it; some hosts drop it from every bounding set.
CAP_SYS_RESOURCE: Final = 24


def may_lower_oom_score() -> bool:
    with open("/proc/self/status") as status:
        return has_capability(status.read(), CAP_SYS_RESOURCE)


# -- system calls ---------------------------------------------------------------------------


def keep_router_advertisements(interface: str, proc: Path = Path("/proc")) -> bool:
    """Let ``interface`` take router advertisements once pods make the node forward.

    With forwarding on (the pods' bridge turns it on), Linux ignores router
    advertisements on an interface whose ``accept_ra`` is 1, and the node would lose its
    address or default route at their next expiry; 2 keeps them.  0, an operator's
    choice, is left alone.  Returns whether it changed the setting.
    """
    setting = proc / "sys/net/ipv6/conf" / interface / "accept_ra"
    if setting.read_text().strip() != "1":
        return False
    setting.write_text("2\n")
    return True


def prepare_pod_bridge(
    name: str, mtu: int, proc: Path = Path("/proc"), netlink: Netlink | None = None
) -> bool:
    """Create the pods' bridge before the CNI plugin does, without duplicate address
    detection; returns whether it was created (an existing one keeps its MTU).

    The bridge plugin would create it at the first pod's start and give it the gateway
    address at once, with detection on: that address and the bridge's link-local one then
    stay tentative for one to two seconds, in which the kernel answers no neighbour
    solicitation for them, and the first pod, already Running, can reach nothing beyond
    its node.  Nothing on this segment can hold a duplicate: host-local never hands the
    gateway to a pod, and the pods' own interfaces run without detection (the plugin's
    default).  The plugin takes an existing bridge as it finds it.
    """
    rt = RtNetlink() if netlink is None else netlink
    try:
        try:
            rt.add_link(name, "bridge")
            created = True
        except OSError as error:
            if error.errno != errno.EEXIST:
                raise HostError(f"cannot create the pods' bridge {name}: {error}") from None
            created = False
        link = rt.link(name)
        if link is None or link.kind != "bridge":
            raise HostError(f"{name} is not a bridge: the pods need it for theirs")
        if created:
            rt.set_link(link.index, mtu=mtu)
    finally:
        if netlink is None:
            rt.close()
    # Per interface and per network namespace: nothing of the host's changes.
    (proc / "sys/net/ipv6/conf" / name / "accept_dad").write_text("0\n")
    return created


def enter_private_mount_namespace() -> None:
    """Move the agent into a mount namespace of its own, a slave of the host's.

    Slave, so that the host's later mounts (a new disk) still reach the kubelet while
    nothing mounted here propagates out; then shared again inside, so that pods may ask
    for bidirectional mount propagation among themselves and the kubelet.
    """
    try:
        linux.unshare(linux.CLONE_NEWNS)
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_SLAVE)
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_SHARED)
    except OSError as error:
        raise HostError(f"cannot make a mount namespace for the runtime: {error}") from None


@attrs.frozen
class HostSetup:
    """Prepares the agent's own mount namespace and the node's cgroups, idempotently."""

    sysctl_dir: Path
    cgroups: tuple[PurePosixPath, ...]
    binds: tuple[tuple[Path, Path], ...] = ()
    proc: Path = Path("/proc")
    cgroup_root: Path = CGROUP_MOUNT

    def hierarchies(self) -> list[Hierarchy]:
        return cgroup_hierarchies((self.proc / "self" / "mountinfo").read_text())

    def mount_cgroups(self) -> list[Hierarchy]:
        """The cgroup hierarchies, mounted first if this namespace shows none."""
        return mount_hierarchies(self.proc, self.cgroup_root)

    def shadow_sysctls(self) -> None:
        """Show the kubelet its sysctl values in this mount namespace, never the host's."""
        self.sysctl_dir.mkdir(parents=True, exist_ok=True)
        for name, value in KUBELET_SYSCTLS.items():
            target = self.proc / "sys" / name
            shadow = self.sysctl_dir / name.replace("/", ".")
            shadow.write_text(f"{value}\n")
            if target.read_text().strip() != value:
                linux.mount(shadow, target, None, linux.MS_BIND)

    def bind(self) -> None:
        """Each of ``binds`` (source, target): the target shows the source, here only."""
        for source, target in self.binds:
            source.mkdir(mode=0o700, parents=True, exist_ok=True)
            # The mount point must exist outside too; it stays there, empty.
            target.mkdir(parents=True, exist_ok=True)
            if not _bound_to(target, source):
                linux.mount(source, target, None, linux.MS_BIND)

    def make_cgroups(self, hierarchies: Sequence[Hierarchy]) -> None:
        """Create the node's cgroups in every v1 hierarchy (runc makes the cgroup2 ones)."""
        for hierarchy in hierarchies:
            if hierarchy.version != 1:
                continue
            for cgroup in self.cgroups:
                make_cgroup(hierarchy, cgroup)

    def prepare(self) -> list[Hierarchy]:
        """The mounts above, in order; raises HostError saying which step failed."""
        step = "mounting the cgroup hierarchies"
        try:
            hierarchies = self.mount_cgroups()
            step = "shadowing the kubelet's sysctls"
            self.shadow_sysctls()
            step = "bind-mounting the runtime's directories"
            self.bind()
        except OSError as error:
            raise HostError(f"{step}: {error}") from None
        return hierarchies

    def create_cgroups(self, hierarchies: Sequence[Hierarchy]) -> None:
        try:
            self.make_cgroups(hierarchies)
        except OSError as error:
            raise HostError(f"creating the node's cgroups: {error}") from None


def _bound_to(path: Path, source: Path) -> bool:
    """Whether ``path`` is already a bind mount of ``source`` (a second start)."""
    try:
        mounted, wanted = path.stat(), source.stat()
    except OSError:
        return False
    return os.path.ismount(path) and (mounted.st_dev, mounted.st_ino) == (
        wanted.st_dev,
        wanted.st_ino,
    )
