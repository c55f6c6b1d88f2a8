"""The container's PID 1: its namespaces and mounts, its link, then the agent, reaped.

It runs in the child the outer process forks after ``unshare(CLONE_NEWPID)``, so it is
the first process of the new pid namespace: the kernel gives it the orphans to reap,
and ends every process of the namespace when it exits.  It dies with the outer process
(its parent-death signal is SIGKILL), relays SIGTERM, SIGINT and SIGHUP to the agent,
and exits with the agent's status.  ``docs/container.rst`` lists what it shares with
the host and why.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from hepto import linux
from hepto.container.host import inside_commands
from hepto.container.plan import ContainerPlan, resolv_conf

#: The namespaces made beside the pid namespace (made by the outer process: a
#: process cannot enter a pid namespace itself, only its children are born there).
NAMESPACES: Final = (
    linux.CLONE_NEWNS
    | linux.CLONE_NEWNET
    | linux.CLONE_NEWUTS
    | linux.CLONE_NEWIPC
    | linux.CLONE_NEWCGROUP
)
_SAFE: Final = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
#: What the container makes its own, for it alone.
PRIVATE_DIRS: Final = (Path("/tmp"), Path("/run"))
RELAYED: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class InsideError(Exception):
    """The container cannot be set up; the message says which step failed."""


def enter(plan: ContainerPlan, cgroup_procs: Sequence[Path]) -> None:
    """Join the container's cgroups, then make and enter its namespaces and mounts."""
    step = "joining the container's cgroups"
    try:
        for procs in cgroup_procs:
            procs.write_text("0\n")
        step = "making the container's namespaces"
        linux.unshare(NAMESPACES)
        step = "mounting the container's file systems"
        mount_filesystems(plan)
        socket.sethostname(plan.name)
    except OSError as error:
        raise InsideError(f"{step}: {error}") from None


def _under(path: Path, directories: Sequence[Path]) -> bool:
    return any(path == directory or directory in path.parents for directory in directories)


def mount_filesystems(plan: ContainerPlan) -> None:
    """Private ``/proc``, ``/sys``, ``/tmp`` and ``/run``, the rest the host's, read-only
    ``/lib/modules``, and the container's resolv.conf.

    The host's root stays, as a slave: the host's later mounts still show here while
    this namespace's never leave it.  What the agent needs from ``/tmp`` or ``/run``
    (its data, its programs, the runtime's sockets that ``hepto images import`` uses
    from the host) is held open before they are covered, then bound back in place.
    """
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_SLAVE)
    resolv = Path(os.path.realpath("/etc/resolv.conf"))
    kept = [
        (path, os.open(path, os.O_PATH | os.O_DIRECTORY))
        for path in sorted({*plan.kept, plan.node_dir})
        if _under(path, PRIVATE_DIRS) and path.is_dir()
    ]
    # This pid namespace's processes, and this network namespace's links.
    linux.umount("/proc", linux.MNT_DETACH)
    linux.mount("proc", "/proc", "proc", _SAFE)
    linux.umount("/sys", linux.MNT_DETACH)
    linux.mount("sysfs", "/sys", "sysfs", _SAFE)
    linux.mount("tmpfs", "/tmp", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=1777")
    linux.mount("tmpfs", "/run", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=755")
    for path, descriptor in kept:
        path.mkdir(parents=True, exist_ok=True)
        linux.mount(f"/proc/self/fd/{descriptor}", path, None, linux.MS_BIND | linux.MS_REC)
        os.close(descriptor)
    ours = plan.files / "resolv.conf"
    ours.write_text(resolv_conf(plan.dns))
    if not resolv.exists():  # a link into the host's /run, now covered
        resolv.parent.mkdir(parents=True, exist_ok=True)
        resolv.touch()
    linux.mount(ours, resolv, None, linux.MS_BIND)
    modules = Path("/lib/modules")
    if modules.is_dir():
        linux.mount(modules, modules, None, linux.MS_BIND | linux.MS_REC)
        linux.mount(None, modules, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY)


def bring_up_link(plan: ContainerPlan, mode: str) -> None:
    for argv in inside_commands(plan, mode):
        done = subprocess.run(["ip", *argv], capture_output=True, text=True)
        if done.returncode != 0:
            raise InsideError(f"ip {' '.join(argv)}: {done.stderr.strip()}")


def exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def run_agent(argv: Sequence[str]) -> int:
    """Start the agent, relay signals to it, reap every orphan; the agent's exit code."""
    agents: list[int] = []

    def relay(number: int, _frame: object) -> None:
        for agent in agents:
            try:
                os.kill(agent, number)
            except ProcessLookupError:
                pass

    for number in RELAYED:
        signal.signal(number, relay)
    # Held until the agent's pid is known, then delivered: none is lost in between.
    signal.pthread_sigmask(signal.SIG_BLOCK, RELAYED)
    agent = os.fork()
    if agent == 0:
        for number in RELAYED:
            signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, RELAYED)
        try:
            os.execv(argv[0], list(argv))
        except OSError as error:
            print(f"hepto: container: cannot run {argv[0]}: {error}", file=sys.stderr, flush=True)
        os._exit(127)
    agents.append(agent)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, RELAYED)
    while True:
        pid, status = os.wait()
        if pid == agent:
            # Whatever is left ends with this process: the kernel kills the namespace.
            return exit_code(status)


def main(plan: ContainerPlan, mode: str, cgroup_procs: Sequence[Path], ready: int, go: int) -> int:
    """PID 1, in the child the outer process forked; returns its exit code."""
    linux.set_parent_death_signal(signal.SIGKILL)
    # Signals from the terminal go to the outer process alone, which relays them once.
    os.setpgid(0, 0)
    try:
        enter(plan, cgroup_procs)
        os.write(ready, b"r")
        os.close(ready)
        if os.read(go, 1) != b"g":
            return 1  # the outer process gave up; it says why
        os.close(go)
        bring_up_link(plan, mode)
    except (InsideError, OSError) as error:
        print(f"hepto: container: {error}", file=sys.stderr, flush=True)
        return 1
    return run_agent(plan.agent_argv)
