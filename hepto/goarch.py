"""This machine's architecture as Go spells it: what the kubelet labels a Node with and
what OCI platforms say (``amd64``, not ``x86_64``)."""

from __future__ import annotations

import os
from typing import Final

#: ``uname -m`` to GOARCH; a machine not listed keeps its own name.
GOARCH: Final = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "loongarch64": "loong64",
}


def go_architecture(machine: str | None = None) -> str:
    """GOARCH for ``machine`` (this one's by default); 32-bit ARM is ``arm``."""
    machine = (os.uname().machine if machine is None else machine).lower()
    if machine.startswith("armv"):
        return "arm"
    return GOARCH.get(machine, machine)
