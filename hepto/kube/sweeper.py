"""The sweeper: no process of a node's runtime outlives the node.

containerd's shims leave containerd's process group (and the agent's) on purpose, so
that containers survive a restart of containerd; the agent cannot reach them through
its children.  Every process of the runtime is instead in the node's cgroups: containerd
and the kubelet are put in ``runtime`` (the shims inherit it), the pods in ``pods``.

One small shell script, written by the agent once the cgroups are mounted, does three
things with them:

``sweep``
    sends SIGTERM to every process of the node's pods, waits up to a grace period, then
    freezes and kills what is left; then the same for the rest (the shims, which reap
    their pods' processes meanwhile); and removes the cgroups: at start (what a dead
    agent left) and at stop;
``guard``
    waits, and sweeps when it receives SIGTERM: from the supervisor at the node's stop,
    after containerd; or from the kernel when the agent dies, even by SIGKILL, because it
    runs with SIGTERM as its parent-death signal;
``enter``
    moves itself into the runtime's cgroups and runs a program there (containerd, the
    kubelet), so that the program is in them from its first instruction.

A shell script, because the guard must outlive the agent by the time it takes to sweep,
and a shell stays a megabyte resident where a Python interpreter takes ten.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from hepto import shellguard
from hepto.kube.component import Component, Context, StartedReadiness
from hepto.kube.layout import Layout

NAME: Final = "sweeper"
#: Seconds a pod's processes have between SIGTERM and SIGKILL when the node stops.
GRACE: Final = 10
#: How long the KILL phase may take (processes in uninterruptible sleep) before giving up.
KILL_TRIES: Final = 100

_SCRIPT = """\
#!/bin/sh
# Written by the hepto agent for node {name}: see hepto/kube/sweeper.py and docs/nodes.rst.
#   sweep                    TERM the node's processes, KILL what is left, remove its cgroups
#   guard                    wait; on SIGTERM, SIGINT or SIGHUP sweep, then remove the node's
#                            runtime directory {run_dir}
#   enter PROGRAM ARGS...    join the runtime's cgroups, then run PROGRAM
set -u
tracked={tracked}
{functions}
grace={grace}

pids() {{ find "$1" -name cgroup.procs -exec cat {{}} + 2>/dev/null; }}

freeze() {{
    if [ -e "$1/freezer.state" ]; then
        echo "$2" > "$1/freezer.state" 2>/dev/null
    elif [ -e "$1/cgroup.freeze" ]; then
        case $2 in FROZEN) echo 1;; *) echo 0;; esac > "$1/cgroup.freeze" 2>/dev/null
    fi
}}

# stop CGROUP GRACE: SIGTERM to its processes, SIGKILL to those left after GRACE seconds.
stop() {{
    left=$(pids "$1")
    [ -n "$left" ] || return 0
    echo "stopping $(echo $left | wc -w) processes of {cgroup}${{1#$tracked}}" \
        "(SIGTERM, then SIGKILL after $2 s)"
    kill -TERM $left 2>/dev/null
    ticks=$(($2 * 10))
    while [ "$ticks" -gt 0 ] && [ -n "$(pids "$1")" ]; do
        sleep 0.1
        ticks=$((ticks - 1))
    done
    tries={kill_tries}
    while left=$(pids "$1") && [ -n "$left" ] && [ "$tries" -gt 0 ]; do
        # Frozen, they cannot fork while they are killed.
        freeze "$1" FROZEN
        kill -KILL $left 2>/dev/null
        freeze "$1" THAWED
        sleep 0.1
        tries=$((tries - 1))
    done
    left=$(pids "$1")
    [ -z "$left" ] || echo "cannot kill processes of {cgroup}: $left" >&2
}}

sweep() {{
    # The pods first, while their shims live to reap them; then the shims, the rest.
    stop "$tracked/{pods}" "$grace"
    stop "$tracked" 1
    {cleanup}
    remove_cgroups {directories}
}}

# The node's sockets and runtime state, once nothing of the node runs: first what is
# mounted there (the kubelet's root, pods' volumes, containers' root filesystems), and
# nothing at all while one mount stays, since removing would go through it.
forget_run_dir() {{
    [ -d {run_dir} ] || return 0
    for mount in $(mounts | sort -r); do
        umount "$mount" 2>/dev/null || umount -l "$mount" 2>/dev/null
    done
    if [ -n "$(mounts)" ]; then
        echo "keeping {run_dir}: something is still mounted there" >&2
        return 0
    fi
    rm -rf {run_dir}
    rmdir "$(dirname {run_dir})" 2>/dev/null
    return 0
}}

# The guard's end.
finish() {{
    sweep
    forget_run_dir
    exit 0
}}

mounts() {{
    awk -v d={run_dir} '$5 == d || index($5, d "/") == 1 {{ print $5 }}' /proc/self/mountinfo
}}

case ${{1:-}} in
sweep)
    trap '' PIPE
    sweep
    ;;
guard)
    # The agent reads our output; once it is dead, writing must not kill us mid-sweep.
    trap '' PIPE
    guard_forever finish
    ;;
enter)
    shift
    for procs in {runtime_procs}; do
        echo $$ > "$procs" || exit 126
    done
    exec "$@"
    ;;
*)
    echo "usage: $0 sweep | guard | enter PROGRAM [ARGS...]" >&2
    exit 2
    ;;
esac
"""


def script(
    name: str,
    cgroup: str,
    pods: str,
    tracked: Path,
    directories: Sequence[Path],
    runtime_procs: Sequence[Path],
    grace: int = GRACE,
    cleanup: Sequence[str] = (),
    run_dir: Path | None = None,
) -> str:
    """The sweeper for a node whose cgroups are ``directories`` (one per hierarchy).

    ``tracked`` is the node's cgroup in the hierarchy that lists its processes, and
    ``pods`` the pods' cgroup below it; ``cleanup`` are shell commands run once the
    processes are gone (the node's pod bridge, its nftables table);
    ``runtime_procs`` are the ``cgroup.procs`` files of the runtime's cgroups;
    ``run_dir`` is the node's runtime directory (sockets, state), which the guard removes
    after its sweep, never the sweep at a start (the agent has mounted the kubelet's root
    there by then).
    """

    def words(paths: Sequence[Path]) -> str:
        return " ".join(shlex.quote(str(path)) for path in paths)

    return _SCRIPT.format(
        name=name,
        cgroup=cgroup,
        pods=shlex.quote(pods),
        tracked=shlex.quote(str(tracked)),
        grace=int(grace),
        kill_tries=KILL_TRIES,
        directories=words(directories),
        runtime_procs=words(runtime_procs),
        cleanup="\n    ".join([*cleanup, "true"]),
        run_dir=shlex.quote(str(run_dir)) if run_dir is not None else "/nonexistent",
        functions=shellguard.FUNCTIONS,
    )


def sweeper(context: Context) -> Component:
    layout = Layout(context.node_dir, context.cluster, context.name)
    return Component(
        name=NAME,
        program="sh",
        args=(str(layout.sweeper_script), "guard"),
        readiness=StartedReadiness(),
        # SIGTERM, not SIGKILL, when the agent dies: the guard's last duty is to sweep.
        death_signal="TERM",
        # It sweeps when told to stop: give it the grace period and the kills.
        stop_timeout=GRACE + KILL_TRIES / 10 + 5,
    )
