"""What the host keeps of a container once it is gone: nothing, whichever way it ends.

The kernel takes most of it away by itself: when the container's PID 1 dies (its
parent-death signal is SIGKILL) every process of the pid namespace dies, and with them
the network namespace, the container's end of the link and so the host's end and the
routes through it.  What the kernel keeps is the host's: the proxy neighbour entry of
the container's address, the cgroups, and the host end of the link while a process
lingers.  One shell script removes those:

``sweep``
    waits for the container's processes to be gone (kills what is left), then removes
    the link, the proxy entry and the cgroups: the outer process runs it when the
    container has stopped, and at start for what a killed one left;
``guard``
    waits, and sweeps on SIGTERM: the outer process starts it with SIGTERM as its
    parent-death signal, so that a SIGKILL of the outer process still ends in a sweep.

A shell script, for the reason the runtime's sweeper is one (:mod:`hepto.kube.sweeper`):
it must outlive the outer process, and a shell is a megabyte where Python is ten.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from hepto import shellguard
from hepto.container.plan import ContainerPlan

#: Tenths of a second the sweep waits for the container's processes before SIGKILL.
WAIT_TICKS: Final = 100

_SCRIPT = """\
#!/bin/sh
# Written by hepto for the container of node {name}: see hepto/container/cleanup.py.
#   sweep   remove what the container left on the host: processes, link, proxy entry, cgroups
#   guard   wait; on SIGTERM, SIGINT or SIGHUP, sweep
set -u
tracked={tracked}
{functions}
pids() {{ find "$tracked" -name cgroup.procs -exec cat {{}} + 2>/dev/null; }}

sweep() {{
    ticks={ticks}
    while [ -n "$(pids)" ] && [ "$ticks" -gt 0 ]; do
        sleep 0.1
        ticks=$((ticks - 1))
    done
    left=$(pids)
    if [ -n "$left" ]; then
        echo "hepto: killing $(echo $left | wc -w) processes left in {cgroup}" >&2
        kill -KILL $left 2>/dev/null
        sleep 0.2
    fi
    rm -f {record}
    ip link delete {host_link} 2>/dev/null
    ip -6 neighbour delete proxy {address} dev {iface} 2>/dev/null
{routes}
    remove_cgroups {cgroups}
}}

finish() {{
    sweep
    exit 0
}}

case "${{1:-}}" in
sweep)
    trap '' PIPE
    sweep
    ;;
guard)
    trap '' PIPE
    guard_forever finish
    ;;
*) echo "usage: $0 sweep|guard" >&2; exit 2 ;;
esac
"""


def script(plan: ContainerPlan, cgroup_dirs: Sequence[Path], tracked: Path) -> str:
    """The cleanup script of ``plan``'s container, whose cgroups are ``cgroup_dirs``."""
    routes = "\n".join(f"    ip -6 route delete {route}/128 2>/dev/null" for route in plan.routes)
    return _SCRIPT.format(
        name=plan.name,
        cgroup=plan.cgroup,
        tracked=shlex.quote(str(tracked)),
        ticks=WAIT_TICKS,
        host_link=shlex.quote(plan.host_link),
        record=shlex.quote(str(plan.record)),
        address=plan.address.ip,
        iface=shlex.quote(plan.iface),
        routes=routes or "    :",
        functions=shellguard.FUNCTIONS,
        cgroups=" ".join(shlex.quote(str(directory)) for directory in cgroup_dirs),
    )
