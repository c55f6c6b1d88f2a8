"""The Go runtime's memory settings of the components, as hepto sets them.

GOGC=50 for each: the heap may grow by half its live size between collections instead
of doubling.  Measured with ``benchmarks/memory.py`` on an idle master and under a fixed
load (``docs/memory.rst``): 41 to 48 MiB less PSS idle and about 80 MiB less after the
load, for no measurable CPU.  GOGC=25 saved 30 MiB more but cost a third more CPU under
the load.  No GOMEMLIMIT: a fixed limit saves little while the live heap stays well
below it, and once the heap nears it the collector runs almost without pause (seen at
idle with the apiserver under 120 MiB, and under the load with the controller manager
under 48 MiB); GOGC scales with the cluster instead.

The node's components take the same: on an idle full node, 524.3 MiB of PSS for all its
processes with Go's default for containerd, the kubelet and kube-proxy, 507.5 with
GOGC=50 (``benchmarks/memory.py --parts full --no-pod``, one run each).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from hepto import config
from hepto.kube.component import GoMemory

#: Heap growth between collections, in percent of the live heap (Go's default is 100).
GC_PERCENT: Final = 50

#: What KubeService gives each component unless told otherwise.
DEFAULTS: Mapping[str, GoMemory] = {
    name: GoMemory(gc_percent=GC_PERCENT) for name in config.COMPONENTS
}
