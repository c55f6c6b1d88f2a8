"""Time from a node agent's start to all its certificates installed, among N real agents.

A master and N - 1 nodes, each a real ``twistd hepto`` in a network namespace on one
bridge (tests/netlab.py). Nodes start one after the other once the master holds its
own certificates; for each, the time from its process start until both kubelet
certificates are on its disk. Prints figures, asserts nothing.

    sudo .venv/bin/python benchmarks/pki_join.py --nodes 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from agent import KEY, Agent
from hepto.pki.paths import Paths
from hepto.pki.specs import KUBELET_CLIENT, KUBELET_SERVING
from netlab import Lab, wait_until

CLUSTER = "pkibench"


def all_exist(paths: list[Path]) -> bool:
    return all(path.exists() for path in paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=10, help="members, the master included")
    args = parser.parse_args()
    lab = Lab("bp")
    agents: list[Agent] = []
    try:
        hosts = [lab.add_host(f"m{i}") for i in range(args.nodes)]

        def start(index: int, role: str) -> Agent:
            host = hosts[index]
            argv = [
                "--cluster",
                CLUSTER,
                "--name",
                host.name,
                "--key",
                KEY,
                "--role",
                role,
                "--no-contain",
                "--ip",
                str(host.interface),
                "--components",
                "none",
            ]
            if index:
                argv += ["--anchor", str(hosts[0].address)]
            agent = Agent.start(argv, prefix=host.command([]))
            agents.append(agent)
            return agent

        master = start(0, "master")
        master_paths = Paths(master.data_dir / CLUSTER / hosts[0].name)
        wait_until(lambda: master_paths.certificate("apiserver").exists(), 120, what="master")
        delays = []
        for index in range(1, args.nodes):
            began = time.monotonic()
            agent = start(index, "node")
            paths = Paths(agent.data_dir / CLUSTER / hosts[index].name)
            wanted = [paths.certificate(name) for name in (KUBELET_CLIENT, KUBELET_SERVING)]
            wait_until(partial(all_exist, wanted), 120, 0.02, f"{hosts[index].name}'s certificates")
            delays.append(time.monotonic() - began)
        print(f"members: {args.nodes} (1 master); node start to both kubelet certificates:")
        print(
            f"  median {statistics.median(delays):.2f} s, max {max(delays):.2f} s, "
            f"all: {', '.join(f'{d:.2f}' for d in delays)}"
        )
    finally:
        for agent in agents:
            agent.kill()
        lab.close()


if __name__ == "__main__":
    main()
