"""The outer process: the host's side of a node's container, from start to cleanup.

``twistd hepto`` without ``--no-contain`` checks the host and plans the container
(:mod:`hepto.container.plan`), then replaces itself with ``python -m hepto.container
PLAN``: this module, which imports neither Twisted nor pyroute2 and so stays a few
megabytes resident while the node runs.  In order, it

1. sweeps what a killed predecessor of the same node left (its cleanup script);
2. picks the link's mode, checks that the container's address is free on the link;
3. starts the guard that cleans up should this process be killed;
4. makes the container's cgroup, forks PID 1 of a new pid namespace
   (:mod:`hepto.container.inside`), gives it its link once it has its namespaces;
5. relays SIGTERM, SIGINT and SIGHUP, waits, sweeps, and exits with the agent's status.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import PurePosixPath
from typing import Final

from hepto import cgroups, linux, notify
from hepto.container import cleanup, host, inside
from hepto.container.plan import ContainerError, ContainerPlan, choose_mode
from hepto.files import write_atomically

RELAYED: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def say(message: str) -> None:
    """One line on the output the agent's log shares (the outer process has no logger)."""
    print(f"hepto: container: {message}", file=sys.stderr, flush=True)


class Outer:
    def __init__(self, plan: ContainerPlan) -> None:
        self.plan = plan
        self.script = plan.files / "cleanup.sh"
        self.guard: subprocess.Popen[bytes] | None = None
        self.relay: notify.Relay | None = None
        self.lock: int | None = None

    def take_lock(self) -> None:
        """One container per node on a host: a second would sweep the first away.

        The lock is held by this process and the container's PID 1 (a fork, which
        shares it), so it is free again once both are gone, whichever way they go.
        """
        plan = self.plan
        plan.files.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.lock = os.open(plan.files / "lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.lock)
            self.lock = None
            raise ContainerError(
                "name", f"{plan.name} of cluster {plan.cluster} already runs on this host"
            ) from None

    def sweep(self) -> None:
        if self.script.exists():
            subprocess.run(["sh", str(self.script), "sweep"], check=False)

    def prepare(self) -> tuple[str, list[cgroups.Hierarchy]]:
        """Everything before the fork: mode, address check, guard, cgroups."""
        plan = self.plan
        # Our own view of the mounts, where cgroups can be mounted if the host shows none.
        linux.unshare(linux.CLONE_NEWNS)
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_SLAVE)
        hierarchies = cgroups.mount_hierarchies()
        self.take_lock()
        self.sweep()  # what a killed predecessor left
        trial = "hq" + plan.host_link[2:]
        mode = choose_mode(plan, host.has_ipvlan(plan.iface, trial))
        host.check_unique(plan)
        if not hierarchies:
            raise ContainerError("", "no cgroup hierarchy can be mounted on this host")
        tracked = next((h for h in hierarchies if h.is_freezer), hierarchies[0])
        directories = [h.path / plan.cgroup.lstrip("/") for h in hierarchies]
        self.script.write_text(
            cleanup.script(plan, directories, tracked.path / plan.cgroup.lstrip("/"))
        )
        self.guard = subprocess.Popen(
            ["setpriv", "--pdeathsig", "TERM", "sh", str(self.script), "guard"],
            start_new_session=True,
        )
        for hierarchy in hierarchies:
            if hierarchy.version == 1:
                cgroups.make_cgroup(hierarchy, PurePosixPath(plan.cgroup))
            else:
                (hierarchy.path / plan.cgroup.lstrip("/")).mkdir(parents=True, exist_ok=True)
        for path in plan.kept:
            if path.parts[:2] == ("/", "run"):
                path.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.relay_notifications()
        return mode, hierarchies

    def relay_notifications(self) -> None:
        """Under systemd (``Type=notify``), the agent's notifications go through us: this
        process is the unit's main one, and the agent cannot reach systemd's socket."""
        target = os.environ.get(notify.VARIABLE)
        if not target:
            return
        relay = self.plan.notify_relay
        relay.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.relay = notify.Relay(relay, target)
        self.relay.start()
        os.environ[notify.VARIABLE] = str(relay)  # what the container inherits

    def run(self) -> int:
        plan = self.plan
        mode, hierarchies = self.prepare()
        procs = [h.path / plan.cgroup.lstrip("/") / "cgroup.procs" for h in hierarchies]
        ready_read, ready_write = os.pipe()
        go_read, go_write = os.pipe()
        pid = _fork_into_new_pid_namespace()
        if pid == 0:
            os.close(ready_read)
            os.close(go_write)
            code = 1
            try:
                code = inside.main(plan, mode, procs, ready_write, go_read)
            finally:
                os._exit(code)
        os.close(ready_write)
        os.close(go_read)
        for number in RELAYED:
            signal.signal(number, lambda number, _frame: _relay(pid, number))
        try:
            if os.read(ready_read, 1) == b"r":
                host.connect(plan, mode, pid)
                self.record(mode, pid)
                say(
                    f"{plan.name} runs contained: {mode} link for {plan.address.ip} on "
                    f"{plan.iface}, cgroup {plan.cgroup}, pid {pid}"
                )
                os.write(go_write, b"g")
        except (host.LinkError, OSError) as error:
            say(f"cannot give the container its link: {error}")
            _relay(pid, signal.SIGKILL)
        finally:
            os.close(go_write)
            os.close(ready_read)
        code = _wait(pid)
        self.finish()
        return code

    def record(self, mode: str, pid: int) -> None:
        """What ``hepto status`` shows of the container, beside the node's socket."""
        plan = self.plan
        record = {
            "mode": mode,
            "address": str(plan.address.ip),
            "interface": plan.iface,
            "host_link": plan.host_link if mode == "veth" else None,
            "routes": [str(route) for route in plan.routes],
            "cgroup": plan.cgroup,
            "pid": pid,
            "outer_pid": os.getpid(),
        }
        write_atomically(plan.record, json.dumps(record) + "\n", mode=0o644)

    def finish(self) -> None:
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        if self.lock is None:
            return  # another's container, or none made
        self.sweep()
        self.plan.record.unlink(missing_ok=True)
        if self.guard is not None:
            # Swept already: the guard must not sweep a successor's container later.
            self.guard.kill()
            self.guard.wait()


def _fork_into_new_pid_namespace() -> int:
    """``fork``, the child the first process of a new pid namespace; this process's later
    children (``ip``, the sweep) are born in its own namespace again."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY)
    try:
        linux.unshare(linux.CLONE_NEWPID)
        pid = os.fork()
        if pid != 0:
            linux.setns(own, linux.CLONE_NEWPID)
        return pid
    finally:
        os.close(own)


def _relay(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return inside.exit_code(status)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        say("usage: python -m hepto.container PLAN (twistd hepto starts it)")
        return 2
    outer = Outer(ContainerPlan.from_json(argv[1]))
    try:
        return outer.run()
    except ContainerError as error:
        say(str(error))
        outer.finish()
        return 2
    except (OSError, host.LinkError) as error:
        say(f"cannot make the container: {error}")
        outer.finish()
        return 1
