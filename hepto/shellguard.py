"""Shell pieces shared by the scripts that clean up after hepto when it cannot.

Two scripts must outlive the process that wrote them, and so are shell (a megabyte
resident where Python is ten): the runtime's sweeper (:mod:`hepto.kube.sweeper`) and
the container's cleanup (:mod:`hepto.container.cleanup`).  Both remove cgroups the same
way and guard the same way; the pieces are here once, as shell functions each script
includes.

``remove_cgroups DIR...``
    each cgroup directory and everything below it, deepest first, then the two levels
    above it (the cluster's, hepto's), once nothing else uses them.
``guard_forever FINISH``
    waits until SIGTERM, SIGINT or SIGHUP, then runs the function ``FINISH`` (which
    ends the script).  The signal comes as a parent-death signal, which the kernel may
    send once per thread of the dying parent: the repeats are ignored, or the second
    would cut ``FINISH`` short (seen in the tests).  The wait is a ``sleep`` that dies
    with the guard, should the guard be killed outright.
"""

from __future__ import annotations

from typing import Final

FUNCTIONS: Final = """\
remove_cgroups() {
    for directory in "$@"; do
        [ -d "$directory" ] || continue
        find "$directory" -depth -type d -exec rmdir {} + 2>/dev/null
        parent=$(dirname "$directory")
        rmdir "$parent" "$(dirname "$parent")" 2>/dev/null
    done
    return 0
}

guard_ends() {
    trap "" TERM INT HUP
    [ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null
    "$guard_finish"
}

guard_forever() {
    guard_finish=$1
    sleeper=
    trap guard_ends TERM INT HUP
    while :; do
        if command -v setpriv > /dev/null; then
            setpriv --pdeathsig KILL sleep 3600 &
        else
            sleep 3600 &
        fi
        sleeper=$!
        wait "$sleeper"
    done
}
"""
