"""What the node benchmarks share: kubectl from the bundle, and a busybox pod for a node.

``nodes.py`` and ``memory.py`` run pods on real nodes; both ask the apiserver through the
bundle's kubectl, from a namespace that reaches it, with an admin kubeconfig, as
``tests/test_node_agent.py`` does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from images import BUSYBOX_IMAGE
from netlab import Host

#: A Node's Ready condition, as kubectl prints it.
_READY: Final = 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'


def pinned_pod(name: str, node: str, image: str, script: str) -> dict[str, Any]:
    """A pod on ``node`` (no scheduler involved) running ``script`` with busybox's sh."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    # Imported from the node's images folder: there is no registry to ask.
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", script],
                }
            ],
        },
    }


#: Waits, and leaves at SIGTERM.
IDLE: Final = "trap 'exit 0' TERM; while true; do sleep 1; done"


def busybox_pod(name: str, node: str) -> dict[str, Any]:
    """A pod pinned to ``node`` (no scheduler involved) that waits, and leaves at SIGTERM."""
    return pinned_pod(name, node, BUSYBOX_IMAGE, IDLE)


class KubectlError(Exception):
    """kubectl failed; the message holds its command and what it printed."""


@attrs.frozen
class Kubectl:
    """The bundle's kubectl, run in ``host`` (where the apiserver is reachable)."""

    host: Host
    kubeconfig: Path
    bin_dir: Path

    def run(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        command = [
            str(self.bin_dir / "kubectl"),
            f"--kubeconfig={self.kubeconfig}",
            "--request-timeout=10s",
            *argv,
        ]
        return subprocess.run(
            self.host.command(command), input=stdin, capture_output=True, text=True
        )

    def __call__(self, *argv: str, stdin: str | None = None) -> str:
        done = self.run(*argv, stdin=stdin)
        if done.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout.strip()

    def answers(self) -> bool:
        return self.kubeconfig.exists() and self.run("get", "--raw", "/readyz").returncode == 0

    def node_ready(self, name: str) -> str | None:
        """The Node's Ready status (``True``, ``False``, ``Unknown``, or empty before its
        kubelet reported), or None while there is no such Node (or no answer)."""
        done = self.run("get", "node", name, "-o", _READY)
        return done.stdout.strip() if done.returncode == 0 else None

    def pod_phase(self, name: str) -> str:
        return self.run("get", "pod", name, "-o", "jsonpath={.status.phase}").stdout.strip()

    def apply(self, manifest: dict[str, Any]) -> None:
        self("apply", "-f", "-", stdin=json.dumps(manifest))
