"""The process's own figures, read from ``/proc/self``, named as every client library names them.

``process_*`` without the ``hepto_`` prefix: the names of the Go, Python and Java
clients, which dashboards and alerts already use for any job; and the Python client's
``python_gc_*`` for the garbage collector.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Final

from hepto.metrics.exposition import Family, Metric

RESIDENT: Final = Metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
VIRTUAL: Final = Metric("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.")
CPU: Final = Metric(
    "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds."
)
OPEN_FDS: Final = Metric("process_open_fds", "gauge", "Number of open file descriptors.")
MAX_FDS: Final = Metric(
    "process_max_fds", "gauge", "Maximum number of open file descriptors (the soft limit)."
)
START_TIME: Final = Metric(
    "process_start_time_seconds",
    "gauge",
    "Start time of the process since the Unix epoch in seconds.",
)
GC_COLLECTIONS: Final = Metric(
    "python_gc_collections_total",
    "counter",
    "Number of times this generation was collected.",
)
GC_FROZEN: Final = Metric(
    "python_gc_frozen_objects",
    "gauge",
    "Objects in the permanent generation (gc.freeze), which collections do not walk.",
)
METRICS: Final = (
    RESIDENT,
    VIRTUAL,
    CPU,
    OPEN_FDS,
    MAX_FDS,
    START_TIME,
    GC_COLLECTIONS,
    GC_FROZEN,
)

_PAGE: Final = os.sysconf("SC_PAGE_SIZE")
_TICKS: Final = os.sysconf("SC_CLK_TCK")


def _boot_time(proc: Path) -> float:
    for line in (proc / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")


def process_families(proc: Path = Path("/proc")) -> list[Family]:
    """This process's figures now; ``proc`` is where ``/proc`` is (tests give another)."""
    own = proc / "self"
    # The command name, field 2, may hold spaces and parentheses: fields after the last ')'.
    stat = (own / "stat").read_text().rpartition(")")[2].split()
    # stat[0] is field 3 (state): field n is stat[n - 3].
    user, system, start = int(stat[11]), int(stat[12]), int(stat[19])
    size, resident = (int(field) for field in (own / "statm").read_text().split()[:2])
    soft = None
    for line in (own / "limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft = line.split()[3]
    return [
        RESIDENT(resident * _PAGE),
        VIRTUAL(size * _PAGE),
        CPU((user + system) / _TICKS),
        OPEN_FDS(len(os.listdir(own / "fd"))),
        *([MAX_FDS(int(soft))] if soft is not None and soft.isdigit() else []),
        START_TIME(_boot_time(proc) + start / _TICKS),
        GC_COLLECTIONS(
            ({"generation": str(generation)}, stats["collections"])
            for generation, stats in enumerate(gc.get_stats())
        ),
        GC_FROZEN(gc.get_freeze_count()),
    ]
